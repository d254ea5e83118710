"""The mlx backend: mlx_lm's LoRA training (the original job's engine) through its Python API.

The original job ran ``mlx_lm lora --train --mask-prompt --grad-checkpoint --test``.
This runs the same pieces in-process (``mlx_lm.load``, ``linear_to_lora_layers``,
``ChatDataset`` tokenization, ``tuner.train``, ``tuner.evaluate``) rather than the CLI
as a subprocess, because:

- early stopping that keeps the best weights needs the live model at each validation;
  the CLI can only be stopped from outside and leaves the last weights, not the best;
- progress (step, loss, tokens/s) arrives as numbers through a ``TrainingCallback``
  instead of being parsed from rich-formatted terminal output;
- the memory isolation a subprocess would give is already there: ``nightlora train``
  is its own process each night and releases everything when it exits.

What differs from the CLI on purpose: validation is ours (before the first step, after
every ``eval_every`` steps and after the last one, on the whole valid split) and the
adapter keeps the best-validated weights, then DPO on thumbs-down pairs may follow (mlx/preference.py); the learning rate warms up and decays on a
cosine; the loss mask ends at the last real token and batches are grouped by length
(see mlx_data). The optimizer is the CLI's (Adam, no gradient clipping). The adapter folder is what ``mlx_lm lora`` writes
(``adapters.safetensors`` + its ``adapter_config.json``), plus ``nightlora.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.cli_ui import make_console
from mlx_lm.lora import CONFIG_DEFAULTS
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.trainer import TrainingArgs, evaluate, train
from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers
from mlx_lm.utils import load, save_config

from nightlora.errors import ModelError, TrainError
from nightlora.paths import AdapterFiles
from nightlora.platform.fsutil import atomic_dir
from nightlora.train.base import (
    HyperParams,
    ProgressEvent,
    ProgressFn,
    TrainMetrics,
    TrainRequest,
    manifest_sha256,
    write_adapter_meta,
)
from nightlora.train.early_stopping import EarlyStopping
from nightlora.train.mlx.data import Encoded, TokenCounter, encode_split, iterate_batches, target_loss
from nightlora.train.splits import read_preferences, read_splits

if TYPE_CHECKING:
    from nightlora.train.mlx.preference import MlxPreferenceReport

ADAPTER_WEIGHTS = AdapterFiles.MLX_WEIGHTS
ADAPTER_CONFIG = AdapterFiles.MLX_CONFIG
PEFT_WEIGHTS = AdapterFiles.PEFT_WEIGHTS
TRAIN_LOSS_POINTS = 100  # at most this many (step, mean loss) points in the metrics, as the torch backend


def lora_parameters(hp: HyperParams) -> dict:
    """mlx_lm adds ``scale * (x @ lora_a) @ lora_b``: scale is PEFT's alpha / rank."""
    return {"rank": hp.lora_rank, "dropout": hp.lora_dropout, "scale": hp.lora_alpha / hp.lora_rank}


def lr_schedule(hp: HyperParams) -> dict:
    """Linear warm-up from 0, then cosine decay to 0 by the last step (mlx_lm's ``lr_schedule`` config)."""
    schedule: dict = {"name": "cosine_decay", "arguments": [hp.learning_rate, max(1, hp.iters - hp.warmup_steps), 0.0]}
    if hp.warmup_steps:
        schedule |= {"warmup": hp.warmup_steps, "warmup_init": 0.0}
    return schedule


def adapter_config(request: TrainRequest, batch_size: int) -> dict:
    """The ``adapter_config.json`` that ``mlx_lm lora`` would write for the same run."""
    hp = request.hyperparams
    cfg = copy.deepcopy(CONFIG_DEFAULTS)
    cfg.update(
        model=str(request.base_model),
        train=True,
        data=str(request.dataset_dir),
        adapter_path=str(request.output_dir),
        resume_adapter_file=str(Path(request.init_adapter) / ADAPTER_WEIGHTS) if request.init_adapter else None,
        fine_tune_type="lora",
        optimizer="adam",
        mask_prompt=True,
        test=True,
        seed=hp.seed,
        num_layers=hp.num_layers,
        batch_size=batch_size,
        iters=hp.iters,
        learning_rate=hp.learning_rate,
        lr_schedule=lr_schedule(hp),
        lora_parameters=lora_parameters(hp),
        max_seq_length=hp.max_seq_length,
        grad_checkpoint=hp.grad_checkpoint,
        steps_per_report=1,
        steps_per_eval=hp.eval_every,
        val_batches=-1,
        test_batches=-1,
        save_every=hp.iters + 1,  # no intermediate checkpoints: the folder holds one adapter
    )
    return cfg


def _peak_memory_mb() -> float:
    """MLX's own peak (Metal buffers are not in RSS) or the process's peak RSS, whichever is larger."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
    return max(mx.get_peak_memory() / 2**20, rss_mb)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute the rich console mlx_lm's trainer draws its tables and bars on (its only output here).

    Progress reaches the caller as ProgressEvents instead. Muting that console rather than
    redirecting sys.stdout leaves the caller's own printing alone.
    """
    console = make_console()
    was = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = was


@contextlib.contextmanager
def _restore_call(block: nn.Module) -> Iterator[None]:
    """mlx_lm's grad checkpointing patches the block *class*; undo it so later inference in this process is plain."""
    cls = type(block)
    original = cls.__call__
    try:
        yield
    finally:
        cls.__call__ = original


class _StopEarly(Exception):
    pass


class _Monitor(TrainingCallback):
    """Called by mlx_lm after every step: records the loss, validates, reports, stops early."""

    def __init__(self, model: nn.Module, valid: list[Encoded], hp: HyperParams, progress: ProgressFn | None):
        self.model, self.valid, self.hp, self.progress = model, valid, hp, progress
        self.validation: EarlyStopping[dict[str, mx.array]] = EarlyStopping(
            hp.early_stopping_patience, lambda: dict(tree_flatten(model.trainable_parameters())))
        self.train_loss: list[tuple[int, float]] = []
        self._window: list[float] = []
        self._report_every = max(1, math.ceil(hp.iters / TRAIN_LOSS_POINTS))
        self.train_time = 0.0
        self.steps = 0
        self.tokens = TokenCounter(seed=hp.seed)

    def validate(self, step: int) -> float:
        loss = evaluate(
            model=self.model, dataset=self.valid, batch_size=self.hp.batch_size, num_batches=-1,
            max_seq_length=self.hp.max_seq_length, loss=target_loss, iterate_batches=iterate_batches,
        )
        self.model.train()
        if not math.isfinite(loss):
            raise TrainError(f"validation loss is {loss} at step {step}: the weights diverged (lower the learning rate)")
        self.validation.record(step, loss)
        return loss

    def on_train_loss_report(self, train_info: dict) -> None:
        step, loss = train_info["iteration"], train_info["train_loss"]
        if not math.isfinite(loss):
            raise TrainError(f"training loss is {loss} at step {step}: lower the learning rate (now {self.hp.learning_rate:g})")
        self.steps = step
        self.train_time += 1.0 / train_info["iterations_per_second"]  # one step per report
        self._window.append(loss)
        if step % self._report_every == 0 or step == self.hp.iters:
            self.train_loss.append((step, sum(self._window) / len(self._window)))
            self._window = []
        valid_loss = None
        if self.valid and (step % self.hp.eval_every == 0 or step == self.hp.iters):
            valid_loss = self.validate(step)
        self.report(step, train_loss=loss, valid_loss=valid_loss, tokens_per_second=self.tokens.tokens / self.train_time)
        if self.validation.should_stop:
            self.notify(f"early stop at step {step}: no better validation loss in {self.hp.early_stopping_patience} evaluations")
            raise _StopEarly

    def report(self, step: int, **values: float | None) -> None:
        if self.progress:
            self.progress(ProgressEvent(step=step, total=self.hp.iters, **values))

    def notify(self, message: str) -> None:
        if self.progress:
            self.progress(ProgressEvent(step=self.steps, total=self.hp.iters, message=message))


def _read_init_adapter(path: Path, base_model: Path) -> tuple[dict, dict[str, mx.array]]:
    """An mlx adapter's config and weights; a PEFT adapter (the torch backend's) is converted first."""
    path = Path(path)
    if not (path / ADAPTER_WEIGHTS).is_file() and (path / PEFT_WEIGHTS).is_file():
        from nightlora.train.convert import peft_to_mlx

        with tempfile.TemporaryDirectory(prefix="nightlora-init-") as tmp:
            return _read_init_adapter(peft_to_mlx(path, Path(tmp) / "mlx", base_model), base_model)
    if not (path / ADAPTER_WEIGHTS).is_file() or not (path / ADAPTER_CONFIG).is_file():
        raise TrainError(f"init adapter {path} has no {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}: not an mlx or PEFT adapter")
    cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    if cfg.get("fine_tune_type", "lora") != "lora":
        raise TrainError(f"init adapter {path} is a {cfg['fine_tune_type']!r} adapter; only LoRA continues")
    weights = mx.load(str(path / ADAPTER_WEIGHTS))
    mx.eval(weights)  # read now: a converted adapter's temp folder goes away on return
    return cfg, weights


def _load_init_adapter(model: nn.Module, path: Path, base_model: Path, hp: HyperParams) -> None:
    """Continue from ``path``: it must have this run's rank, scale and adapted layers (an adapter keeps its shape)."""
    cfg, weights = _read_init_adapter(path, base_model)
    ours = dict(tree_flatten(model.trainable_parameters()))
    theirs = cfg.get("lora_parameters", {})
    want = lora_parameters(hp)
    fits = set(weights) == set(ours) and all(weights[k].shape == ours[k].shape for k in ours)
    if not fits or not math.isclose(float(theirs.get("scale", 0)), want["scale"], rel_tol=1e-6):
        raise TrainError(
            f"init adapter {path} has rank {theirs.get('rank')}, scale {theirs.get('scale')}, "
            f"{cfg.get('num_layers')} layers; the hyperparameters ask for rank {want['rank']}, "
            f"scale {want['scale']:g}, {hp.num_layers} layers on the same modules"
        )
    model.load_weights(list(weights.items()), strict=False)


def _preference_stage(model: nn.Module, tokenizer, train_chats: list[dict], request: TrainRequest,
                      notify: Callable[[str], None]) -> MlxPreferenceReport | None:
    """DPO on the SFT adapter (train/mlx/preference.py); None when none runs."""
    hp = request.hyperparams
    if hp.preference == "off":
        return None
    from nightlora.train.mlx.preference import choose_mlx_method, reference_model, train_dpo_stage
    from nightlora.train.torch.preference import preference_data

    user_train = [e for e in train_chats if (e.get("meta") or {}).get("source") != "replay"]
    data = preference_data(user_train, read_preferences(request.dataset_dir))
    method, why = choose_mlx_method(hp.preference, data)
    if method is None:
        notify(why)
        return None

    def skeleton() -> nn.Module:
        # The same structure as the policy; its lazily loaded base weights are replaced unread.
        ref, _ = load(str(request.base_model), lazy=True)
        ref.freeze()
        linear_to_lora_layers(ref, hp.num_layers, lora_parameters(hp))
        return ref

    ref = reference_model(model, skeleton)
    with _restore_call(model.layers[0]):
        return train_dpo_stage(model, ref, tokenizer, data, why, hp, notify)


class MlxTrainer:
    """base.Trainer on mlx_lm."""

    name = "mlx"
    adapter_format = "mlx"
    kl_replay = False  # mlx learns replay answers as tokens

    def scorer(self, base_model: Path):
        from nightlora.train.mlx.scorer import MlxScorer

        return MlxScorer(base_model)

    def cpu_threads(self, n: int | None) -> contextlib.AbstractContextManager[None]:
        # MLX computes on the Apple GPU; its CPU backend (Linux) has no thread setting to lend a core back.
        return contextlib.nullcontext()

    def train(self, request: TrainRequest, progress: ProgressFn | None = None) -> TrainMetrics:
        started = time.perf_counter()
        hp = request.hyperparams
        if Path(request.output_dir).exists():
            raise TrainError(f"{request.output_dir} already exists: adapters are never overwritten")

        def notify(message: str) -> None:
            if progress:
                progress(ProgressEvent(step=0, total=hp.iters, message=message))

        splits = read_splits(request.dataset_dir)
        try:
            model, tokenizer = load(str(request.base_model))
        except (OSError, ValueError) as e:
            raise ModelError(f"mlx_lm cannot load {request.base_model}: {e}") from None
        if not 1 <= hp.num_layers <= len(model.layers):
            raise TrainError(f"num_layers {hp.num_layers} is not between 1 and the model's {len(model.layers)} layers")

        encoded: dict[str, list[Encoded]] = {}
        sequences: dict[str, dict[str, int]] = {}
        for split, chats in splits.items():
            enc = encode_split(tokenizer, chats, hp.max_seq_length, f"{split}.jsonl", merge=hp.merge_turns)
            encoded[split] = enc.examples
            sequences[split] = {"examples": enc.split.examples, "sequences": len(enc.examples),
                                "merged": enc.split.merged, "kept_apart": enc.split.fallback, "dropped": enc.dropped}
            if enc.dropped:
                notify(f"{split}: {enc.dropped} targets skipped: beyond max_seq_length {hp.max_seq_length}")
            if enc.truncated:
                notify(f"{split}: {enc.truncated} sequences cut to max_seq_length {hp.max_seq_length}")
        train_set, valid_set, test_set = encoded["train"], encoded["valid"], encoded["test"]
        if not train_set:
            raise TrainError(f"the train split of {request.dataset_dir} has no example to learn from")
        # mlx_lm's batch iterator needs at least batch_size examples.
        batch_size = min(hp.batch_size, len(train_set))
        if batch_size < hp.batch_size:
            notify(f"batch size {hp.batch_size} lowered to {batch_size}: the train split has {len(train_set)} examples")

        mx.random.seed(hp.seed)  # LoRA init and dropout
        np.random.seed(hp.seed)  # mlx_lm's batch order
        model.freeze()
        linear_to_lora_layers(model, hp.num_layers, lora_parameters(hp))
        if request.init_adapter:
            _load_init_adapter(model, request.init_adapter, request.base_model, hp)
        mx.reset_peak_memory()

        monitor = _Monitor(model, valid_set, hp, progress)
        stopped_early = False
        with atomic_dir(request.output_dir) as out:
            save_config(adapter_config(request, batch_size), out / ADAPTER_CONFIG)
            if valid_set:
                monitor.report(0, valid_loss=monitor.validate(0))
            args = TrainingArgs(
                batch_size=batch_size, iters=hp.iters, val_batches=-1, steps_per_report=1,
                steps_per_eval=hp.iters + 1, steps_per_save=hp.iters + 1, max_seq_length=hp.max_seq_length,
                adapter_file=str(out / ADAPTER_WEIGHTS), grad_checkpoint=hp.grad_checkpoint,
            )
            optimizer = optim.Adam(learning_rate=build_schedule(lr_schedule(hp)))
            model.train()
            try:
                with _quiet(), _restore_call(model.layers[0]):
                    train(
                        model=model, optimizer=optimizer, train_dataset=train_set, val_dataset=None, args=args,
                        loss=target_loss, iterate_batches=monitor.tokens.iterate_batches, training_callback=monitor,
                    )
            except _StopEarly:
                stopped_early = True

            validation = monitor.validation
            if validation.best_is_earlier:
                model.load_weights(list(validation.best_weights.items()), strict=False)
                monitor.notify(f"kept the weights of step {validation.best_step} (validation loss {validation.best_loss:.4f})")
            preference = _preference_stage(model, tokenizer, splits["train"], request, monitor.notify)
            mx.save_safetensors(str(out / ADAPTER_WEIGHTS), dict(tree_flatten(model.trainable_parameters())))

            test_loss = None
            if test_set:
                test_loss = evaluate(
                    model=model, dataset=test_set, batch_size=batch_size, num_batches=-1,
                    max_seq_length=hp.max_seq_length, loss=target_loss, iterate_batches=iterate_batches,
                )
                if not math.isfinite(test_loss):
                    raise TrainError(f"test loss is {test_loss}: the weights diverged (lower the learning rate)")
                monitor.notify(f"test loss {test_loss:.4f}")

            metrics = TrainMetrics(
                backend=self.name,
                adapter_format="mlx",
                train_loss=monitor.train_loss,
                valid_loss=validation.losses,
                test_loss=test_loss,
                tokens_per_second=monitor.tokens.tokens / monitor.train_time if monitor.train_time else 0.0,
                trained_tokens=monitor.tokens.tokens,
                peak_memory_mb=round(_peak_memory_mb(), 1),
                duration_s=round(time.perf_counter() - started, 2),
                iters_done=monitor.steps,
                stopped_early=stopped_early,
                best_step=validation.best_step,
                hyperparams=hp.to_dict(),
                manifest_sha256=manifest_sha256(request.dataset_dir),
                base_model=str(request.base_model),
                sequences=sequences,
                preference=preference.to_dict() if preference else None,
            )
            write_adapter_meta(out, request, metrics)
        return metrics
