"""Learning from thumbs-down in the mlx backend: mlx-lm-lora's DPO on pairs, after SFT, on the same adapter.

The pairs are the torch backend's (``preference_data``): ``preferences.jsonl`` records of the
train split with a ``chosen`` reply.  Each side is tokenized as the SFT stage tokenizes a chat
(mlx_lm's ``ChatDataset(mask_prompt=True)``, tools included), so the prompt mask is the same rule.
Training uses mlx-lm-lora's DPO pieces (its sequence scores, sigmoid DPO loss and pair batches)
in a short loop of ours (see ``train_dpo_stage`` for why not its ``train_dpo``).

The reference is tonight's SFT adapter, as in the torch backend: a second model whose arrays are
the policy's own arrays at the end of SFT (mlx arrays are immutable, so the optimizer's updates
make new arrays for the policy and leave the reference's alone; no weights are copied).  Its base
model is loaded lazily and those arrays are replaced before anything reads them.  The base model
alone would be the wrong reference: DPO would then also pull the policy back towards it, undoing
part of what SFT just learned, and the two backends would differ.

Unpaired thumbs-down (no chosen reply): mlx-lm-lora has DPO, ORPO and CPO, all on pairs, and no KTO,
so nothing here learns from them; the notification says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx_lm.tuner.datasets import ChatDataset
from mlx_lm.tuner.trainer import grad_checkpoint
from mlx_lm.tuner.utils import build_schedule

from nightlora.errors import TrainError
from nightlora.train.base import HyperParams
from nightlora.train.torch.preference import MIN_PAIRS, PreferenceData, PreferenceReport, choose_method

NO_KTO = "the mlx backend has no KTO (mlx-lm-lora offers DPO, ORPO and CPO, all on pairs)"


def choose_mlx_method(wanted: str, data: PreferenceData) -> tuple[str | None, str]:
    """The torch backend's choice, where KTO is not possible: (``"dpo"`` or None, why)."""
    method, why = choose_method(wanted, data)
    if method == "kto":
        return None, f"{why} wanted, but {NO_KTO}: no preference training"
    return method, why


@dataclass(frozen=True)
class EncodedPair:
    chosen: list[int]
    rejected: list[int]
    chosen_offset: int    # where the reply starts (the prompt's tokens are not scored)
    rejected_offset: int  # the same prompt, but a template may render it differently before another reply

    def as_item(self) -> dict:
        """The item mlx-lm-lora's ``iterate_dpo_batches`` reads."""
        return {"chosen": self.chosen, "rejected": self.rejected,
                "chosen_prompt_length": self.chosen_offset, "rejected_prompt_length": self.rejected_offset}


def encode_pairs(tokenizer, pairs: list[dict], max_seq_length: int) -> tuple[list[EncodedPair], int]:
    """(pairs as tokens, how many were dropped: a side whose reply starts beyond ``max_seq_length``)."""
    dataset = ChatDataset([], tokenizer, mask_prompt=True)
    out, dropped = [], 0
    for i, p in enumerate(pairs, 1):
        try:
            chosen, c_off = dataset.process({"messages": p["prompt"] + p["chosen"], "tools": p.get("tools")})
            rejected, r_off = dataset.process({"messages": p["prompt"] + p["rejected"], "tools": p.get("tools")})
        except Exception as e:  # a template that cannot render this pair: name it, not the traceback
            raise TrainError(f"preferences.jsonl pair {i}: the chat template cannot render it "
                             f"({type(e).__name__}: {e})") from None
        if max(c_off, r_off) >= max_seq_length - 1:
            dropped += 1
            continue
        out.append(EncodedPair(list(chosen), list(rejected), c_off, r_off))
    return out, dropped


def reference_model(policy: nn.Module, load_skeleton: Callable[[], nn.Module]) -> nn.Module:
    """A frozen model that computes what ``policy`` computes now, sharing its arrays.

    ``load_skeleton`` returns a model of the same structure (base loaded lazily, LoRA layers added).
    """
    ref = load_skeleton()
    ref.update(policy.parameters())
    ref.freeze()
    ref.eval()  # no LoRA dropout in the reference
    return ref


def mean_margin(model: nn.Module, pairs: list[EncodedPair], max_seq_length: int) -> float:
    """Mean over pairs of the per-token log-likelihood of the chosen reply minus that of the rejected one."""
    from mlx_lm_lora.trainer.dpo_trainer import get_token_scores, iterate_dpo_batches

    was_training = model.training
    model.eval()
    total = 0.0
    for chosen, rejected, c_mask, r_mask in iterate_dpo_batches([p.as_item() for p in pairs], 1, max_seq_length):
        c = get_token_scores(model, chosen, c_mask).sum() / c_mask[:, 1:].sum()
        r = get_token_scores(model, rejected, r_mask).sum() / r_mask[:, 1:].sum()
        total += (c - r).item()
    model.train(was_training)
    return total / len(pairs)


@dataclass
class MlxPreferenceReport(PreferenceReport):
    # Mean per-token log-likelihood of the chosen minus the rejected reply on the train pairs,
    # before (the SFT adapter, also the reference) and after DPO: what DPO is meant to raise.
    margin_before: float
    margin_after: float


def dpo_steps(pairs: int, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(epochs * pairs / batch_size))


def _dpo_step(model: nn.Module, ref: nn.Module, optimizer: optim.Optimizer, beta: float):
    """One optimizer step on a batch: mlx-lm-lora's scores and sigmoid DPO loss, mlx's value_and_grad."""
    from mlx_lm_lora.trainer.dpo_trainer import compute_score, dpo_loss, get_token_scores

    def loss(chosen, rejected, c_mask, r_mask):
        policy = [compute_score(get_token_scores(model, x, m), m, "sigmoid") for x, m in ((chosen, c_mask), (rejected, r_mask))]
        refs = [compute_score(mx.stop_gradient(get_token_scores(ref, x, m)), m, "sigmoid")
                for x, m in ((chosen, c_mask), (rejected, r_mask))]
        value, _, _, metrics = dpo_loss(policy[0], policy[1], refs[0], refs[1], c_mask, r_mask,
                                        beta=beta, delta=0.0, loss_type="sigmoid")
        return value, metrics["accuracies"]

    value_and_grad = nn.value_and_grad(model, loss)

    def step(batch) -> tuple[float, float]:
        (value, accuracy), grad = value_and_grad(*batch)
        optimizer.update(model, grad)
        mx.eval(model.state, optimizer.state, value, accuracy)
        return value.item(), accuracy.item()

    return step


def train_dpo_stage(model: nn.Module, ref: nn.Module, tokenizer, data: PreferenceData, reason: str, hp: HyperParams,
                    notify: Callable[[str], None] = lambda msg: None) -> MlxPreferenceReport | None:
    """DPO on ``model`` (the SFT-trained LoRA model) in place; the report, or None when no pair fits.

    The loop is ours, the pieces mlx-lm-lora's: its ``train_dpo`` sets a Metal wired-memory limit
    first and fails where there is no Metal device (KeyError on Linux), so it cannot run in tests
    or on a CPU-only machine.
    """
    from mlx_lm_lora.trainer.dpo_trainer import iterate_dpo_batches

    t0 = time.perf_counter()
    pairs, dropped = encode_pairs(tokenizer, data.pairs, hp.max_seq_length)
    if dropped:
        notify(f"DPO: {dropped} pairs skipped: the reply starts beyond max_seq_length {hp.max_seq_length}")
    if len(pairs) < MIN_PAIRS:
        notify(f"DPO: {len(pairs)} pairs fit in max_seq_length {hp.max_seq_length}: no preference training")
        return None
    batch_size = min(hp.batch_size, len(pairs))  # its batch iterator needs at least batch_size items
    iters = dpo_steps(len(pairs), batch_size, hp.preference_epochs)
    warmup = iters // 10  # as the torch side: 10 % warm-up, then cosine decay to 0
    schedule: dict = {"name": "cosine_decay", "arguments": [hp.preference_learning_rate, max(1, iters - warmup), 0.0]}
    if warmup:
        schedule |= {"warmup": warmup, "warmup_init": 0.0}
    optimizer = optim.Adam(learning_rate=build_schedule(schedule))
    items = [p.as_item() for p in pairs]
    margin_before = mean_margin(model, pairs, hp.max_seq_length)
    if hp.grad_checkpoint:
        grad_checkpoint(model.layers[0])
    model.train()
    step = _dpo_step(model, ref, optimizer, hp.preference_beta)
    losses, accuracies = [], []
    for it in range(1, iters + 1):
        # Its training iterator: one random length-sorted batch of the pairs (numpy's seed, set by the backend).
        loss, accuracy = step(next(iterate_dpo_batches(items, batch_size, hp.max_seq_length, train=True)))
        if not math.isfinite(loss):
            raise TrainError(f"DPO loss is {loss} at step {it}: lower the preference learning rate "
                             f"(now {hp.preference_learning_rate:g})")
        losses.append(loss)
        accuracies.append(accuracy)
    margin_after = mean_margin(model, pairs, hp.max_seq_length)
    notify(f"DPO: {len(pairs)} pairs, {iters} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
           f"chosen-rejected margin {margin_before:.3f} -> {margin_after:.3f} nats/token")
    return MlxPreferenceReport("dpo", reason, len(pairs), iters, round(time.perf_counter() - t0, 2),
                               losses[0], losses[-1], sum(accuracies[-3:]) / len(accuracies[-3:]),
                               round(margin_before, 4), round(margin_after, 4))
