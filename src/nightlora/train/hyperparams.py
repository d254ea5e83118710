"""Hyperparameters that follow the data.

The original job ran ``--batch-size 1 --iters 50 --learning-rate 2e-5`` whatever the
night's data: 50 steps are a fraction of an epoch on 400 examples and ten epochs
on 5. Here every number is derived from the dataset size and the model, and any
number set in the config (a TrainConfig field that is not None) wins. Each value
carries a one-line reason that the CLI prints.
"""

from __future__ import annotations

import math

from nightlora.config import TrainConfig
from nightlora.errors import TrainError
from nightlora.train.base import HyperParams

# Measured on the demo persona (bench/learning.py): 4 epochs at the rates below taught its facts
# (held-out loss -37 %) while the general loss rose +2.4 % with KL-on-replay.
DEFAULT_EPOCHS = 4.0
# Batches are at least this many steps per epoch, so that warm-up, evaluation and
# early stopping have steps to work with on a small night.
MIN_STEPS_PER_EPOCH = 16
# mlx_lm's default; more does not fit comfortably beside a running assistant on a laptop.
MAX_AUTO_BATCH = 4
# Learning rate at batch size 1 for LoRA with scale alpha/rank = 2 (rank 16, alpha 32);
# grows with sqrt(batch) as usual for Adam.  Measured with bench/learning.py on the second
# persona (nadia, 60 conversations): at 3.5e-4 (then DPO) the probe was 6/10, general +2.8 %; at
# 7e-4 (SFT only, KL replay of the cut answers too) 8/10, general +4.7 % -- a fact must be bound
# to its own question, not only learned ("Your spouse is Luka" is the son's name).
BASE_LEARNING_RATE = 7e-4
# Adapted blocks: all of them (facts live throughout the network; with the last 16 of 30 and
# rank 8 a night barely moved SmolLM2-135M). KL-on-replay, not fewer layers, guards the rest.
DEFAULT_NUM_LAYERS = 1_000
EVALS_PER_RUN = 10
# Self-replay examples per user conversation (evaluate/general.py).
# Up to 3 per conversation, capped at what there is: the anchor that keeps the general loss down.
DEFAULT_REPLAY_SHARE = 3.0
# DPO/KTO move an SFT adapter with a smaller step than SFT itself.
PREFERENCE_LR_FACTOR = 0.1


def _auto_batch_size(n_train: int) -> int:
    by_steps = max(1, n_train // MIN_STEPS_PER_EPOCH)
    power_of_two = 1 << (by_steps.bit_length() - 1)
    return min(power_of_two, MAX_AUTO_BATCH)


def choose_hyperparams(cfg: TrainConfig, n_train: int, n_valid: int, model_layers: int,
                       replay_available: int = 0) -> HyperParams:
    """Pick iterations, batch size, learning rate, warm-up, layers, replay and evaluation from the data.

    ``n_train``: training sequences -- conversations, since each one's examples train as one
    sequence (train/sequences.py); ``replay_available``: self-replay examples there are to mix in.
    """
    if n_train < 1:
        raise TrainError("the train split is empty: nothing to learn from (export more feedback first)")
    if model_layers < 1:
        raise TrainError("the model reports no transformer layers (num_hidden_layers missing in config.json)")
    why: dict[str, str] = {}

    share = cfg.replay_share if cfg.replay_share is not None else DEFAULT_REPLAY_SHARE
    replay_examples = min(replay_available, math.ceil(share * n_train))
    why["replay_examples"] = (
        f"{share:g} ({'config' if cfg.replay_share is not None else 'default'}) x {n_train} conversations"
        + (f", capped at the {replay_available} available" if replay_examples < math.ceil(share * n_train) else "")
        + ": the base model's own answers to general prompts, so it keeps answering everything else")
    # Replay examples are trained like conversations: an epoch reads both once, so the user's
    # conversations get their epochs whatever the replay share.
    n_seq = n_train + replay_examples
    seqs = f"{n_train} conversations" + (f" + {replay_examples} replay" if replay_examples else "")

    if cfg.batch_size is not None:
        batch_size = cfg.batch_size
        why["batch_size"] = "set in config"
    else:
        batch_size = _auto_batch_size(n_seq)
        why["batch_size"] = (
            f"{seqs}: largest power of two giving >= {MIN_STEPS_PER_EPOCH} steps per epoch, "
            f"at most {MAX_AUTO_BATCH}"
        )

    epochs = cfg.epochs if cfg.epochs is not None else DEFAULT_EPOCHS
    if cfg.iters is not None:
        iters = cfg.iters
        why["iters"] = "set in config"
    else:
        wanted = math.ceil(epochs * n_seq / batch_size)
        iters = min(max(wanted, cfg.min_iters), cfg.max_iters)
        source = "config" if cfg.epochs is not None else "default"
        why["iters"] = f"{epochs:g} epochs ({source}) x ({seqs}) / batch {batch_size} = {wanted}"
        if iters != wanted:
            bound = "min_iters" if iters == cfg.min_iters and wanted < iters else "max_iters"
            why["iters"] += f", clamped to {bound} {iters}"

    if cfg.learning_rate is not None:
        learning_rate = cfg.learning_rate
        why["learning_rate"] = "set in config"
    else:
        learning_rate = BASE_LEARNING_RATE * math.sqrt(batch_size)
        why["learning_rate"] = f"{BASE_LEARNING_RATE:g} x sqrt(batch {batch_size}) for LoRA"

    warmup_steps = round(cfg.warmup_fraction * iters)
    why["warmup_steps"] = f"warmup_fraction {cfg.warmup_fraction:g} of {iters} steps, then cosine decay to 0"

    if cfg.num_layers is not None:
        if cfg.num_layers > model_layers:
            raise TrainError(f"num_layers {cfg.num_layers} is more than the model's {model_layers} layers")
        num_layers = cfg.num_layers
        why["num_layers"] = "set in config"
    else:
        num_layers = min(model_layers, DEFAULT_NUM_LAYERS)
        why["num_layers"] = (
            f"all {model_layers} layers" if num_layers == model_layers
            else f"last {num_layers} of {model_layers} layers (mlx_lm's default): cheaper backward, less to overfit"
        )

    if n_valid == 0:
        eval_every = iters
        patience = 0
        why["eval_every"] = "no validation examples: no evaluation during training"
        why["early_stopping_patience"] = "no validation examples: early stopping off"
    else:
        if cfg.eval_every is not None:
            eval_every = cfg.eval_every
            why["eval_every"] = "set in config"
        else:
            eval_every = max(1, math.ceil(iters / EVALS_PER_RUN))
            why["eval_every"] = f"about {EVALS_PER_RUN} validations per run of {iters} steps"
        patience = cfg.early_stopping_patience
        why["early_stopping_patience"] = (
            f"stop after {patience} validations without a better loss; keep the best weights" if patience
            else "early stopping off (config)"
        )

    for name in ("lora_rank", "lora_alpha", "lora_dropout", "max_seq_length", "grad_checkpoint", "seed",
                 "merge_turns", "replay_loss", "preference", "preference_beta", "preference_epochs"):
        why[name] = "config"

    if cfg.preference_learning_rate is not None:
        preference_lr = cfg.preference_learning_rate
        why["preference_learning_rate"] = "set in config"
    else:
        preference_lr = learning_rate * PREFERENCE_LR_FACTOR
        why["preference_learning_rate"] = f"{PREFERENCE_LR_FACTOR:g} x the SFT learning rate"

    return HyperParams(
        iters=iters,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        num_layers=num_layers,
        max_seq_length=cfg.max_seq_length,
        # "auto" is decided by the train stage from the memory available (targets/downtime.py).
        grad_checkpoint=cfg.grad_checkpoint if isinstance(cfg.grad_checkpoint, bool) else True,
        eval_every=eval_every,
        early_stopping_patience=patience,
        seed=cfg.seed,
        reasons=why,
        merge_turns=cfg.merge_turns,
        replay_examples=replay_examples,
        replay_loss=cfg.replay_loss,
        preference=cfg.preference,
        preference_beta=cfg.preference_beta,
        preference_learning_rate=preference_lr,
        preference_epochs=cfg.preference_epochs,
    )


def format_hyperparams(hp: HyperParams) -> str:
    """One line per value with its reason, for people."""
    values = hp.to_dict()
    values.pop("reasons")
    width = max(len(k) for k in values)
    shown = {k: f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in values.items()}
    return "\n".join(f"  {k:<{width}}  {shown[k]:<8}  {hp.reasons.get(k, '')}".rstrip() for k in values)
