"""The torch backend: transformers + PEFT LoRA, in one process or many under ``accelerate launch``.

In-process (what ``nightlora train --backend torch`` does): ``TorchTrainer().train(request)``.
Distributed (several GPUs, or CPU processes over gloo)::

    nightlora train --dry-run --json > hp.json        # the hyperparameters for this data
    accelerate launch --num_processes N -m nightlora.train.torch.backend \\
        --dataset DIR --model DIR --out DIR --hyperparams hp.json [--init-adapter DIR]

``batch_size`` is global (examples per optimizer step, as in mlx_lm's distributed
training): each process takes its share of every length-grouped batch. The loss is
the token-weighted mean over the whole global batch, so N processes compute the same
update as one. Only the main process reports progress and writes the adapter.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from torch import nn
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup
from transformers.utils import logging as hf_logging

from nightlora.errors import ModelError, NightloraError, TrainError
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
from nightlora.train.progress import TqdmProgress
from nightlora.train.splits import read_preferences, read_splits
from nightlora.train.torch.data import (
    IGNORE_INDEX,
    Batch,
    Encoded,
    collate,
    encode_examples,
    eval_batches,
    length_grouped_batches,
)
from nightlora.train.torch.lora import MODEL_LOAD_ERRORS, SafetensorError, build_lora_model, load_trainable_state, trainable_state

if False:  # typing only (the scorer imports this module)
    from nightlora.train.torch.scorer import TorchScorer

MAX_GRAD_NORM = 1.0  # transformers.Trainer's default; one bad batch cannot wreck a small adapter
TRAIN_LOSS_POINTS = 100  # at most this many (step, mean loss) points in the metrics record


def _body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The transformer body and the output layer, to compute logits only where there are targets.

    None under DDP (its gradient hooks run only through the wrapper's own forward) and for
    models that do not expose both."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    body, head = (get_decoder() if get_decoder else None), (get_head() if get_head else None)
    return (body, head) if body is not None and head is not None and body is not base else None


def target_logits(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits of the predicting positions, their target tokens, the positions' mask).

    Position t predicts token t+1 (labels shifted left).  The output layer -- a large share of
    a small model's compute (SmolLM2: 49k x 576) -- runs only at the positions that predict a
    target, which is the same loss as full logits masked afterwards."""
    targets = F.pad(batch.labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    where = targets != IGNORE_INDEX
    parts = _body_and_head(model)
    if parts is None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return logits[where], targets[where], where
    body, head = parts
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    return head(hidden[where]), targets[where], where


def target_loss_sum(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy over the target tokens."""
    logits, targets, _ = target_logits(model, batch)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def target_loss_per_row(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the batch: the summed target cross-entropy and the number of target tokens."""
    logits, targets, where = target_logits(model, batch)
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    rows = where.nonzero()[:, 0]
    sums = torch.zeros(where.shape[0], dtype=ce.dtype, device=ce.device).index_add_(0, rows, ce)
    return sums, where.sum(dim=1)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _compute_dtype() -> tuple[torch.dtype, str]:
    """bf16 weights and autocast where the GPU supports it; fp32 on CPU (bf16 matmuls there are slow)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16, "bf16"
    return torch.float32, "no"


class _Run:
    """One training run; every process of a distributed job runs the same steps."""

    def __init__(self, request: TrainRequest, progress: ProgressFn | None, started: float):
        self.request = request
        self.started = started
        self.hp: HyperParams = request.hyperparams
        dtype, mixed_precision = _compute_dtype()
        self.acc = Accelerator(mixed_precision=mixed_precision)
        self.progress = progress if self.acc.is_main_process else None
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        # The global batch is split evenly; a batch size that does not divide is rounded up.
        self.per_rank = math.ceil(self.hp.batch_size / self.world)

        splits = read_splits(request.dataset_dir)
        self.user_train = [e for e in splits["train"] if (e.get("meta") or {}).get("source") != "replay"]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(request.base_model)
        except MODEL_LOAD_ERRORS as e:
            raise ModelError(f"cannot load the base model {request.base_model}: {type(e).__name__}: {e}") from e
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        encoded = {}
        self.sequences: dict[str, dict[str, int]] = {}
        for split, examples in splits.items():
            enc = encode_examples(self.tokenizer, examples, self.hp.max_seq_length, merge=self.hp.merge_turns)
            encoded[split] = enc.items
            self.sequences[split] = {"examples": enc.examples, "sequences": len(enc.items), "merged": enc.merged,
                                     "kept_apart": enc.fallback, "dropped": enc.dropped}
            if enc.dropped:
                self._notify(f"{split}: {enc.dropped} targets skipped: beyond max_seq_length {self.hp.max_seq_length}")
        self.train_set: list[Encoded] = encoded["train"]
        self.valid_set: list[Encoded] = encoded["valid"]
        self.test_set: list[Encoded] = encoded["test"]
        if not self.train_set:
            raise TrainError(f"the train split of {request.dataset_dir} has no example to learn from")

        set_seed(self.hp.seed)  # LoRA init, dropout and batch order
        self.model = build_lora_model(request.base_model, self.hp, dtype, request.init_adapter)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=self.hp.learning_rate)
        # Stepped by hand: accelerate's prepared scheduler would step once per process.
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, self.hp.warmup_steps, self.hp.iters)
        self.ddp_model, self.optimizer = self.acc.prepare(self.model, optimizer)
        if self.acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.acc.device)

    def _notify(self, message: str) -> None:
        if self.progress:
            self.progress(ProgressEvent(step=0, total=self.hp.iters, message=message))

    def _all_sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        return self.acc.reduce(t, "sum").tolist()

    def _batch(self, items: Sequence[Encoded]) -> Batch:
        return collate(items, self.pad_id).to(self.acc.device)

    def evaluate(self, items: list[Encoded]) -> float:
        """Token-weighted mean loss over ``items``, each process scoring its share."""
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), self.acc.autocast():
            for chunk in eval_batches(items[self.rank::self.world], self.per_rank):
                batch = self._batch(chunk)
                total += float(target_loss_sum(self.model, batch))
                count += batch.n_targets
        total, count = self._all_sum(total, count)
        loss = total / count
        if not math.isfinite(loss):
            raise TrainError(f"validation loss is {loss}: the weights diverged (lower the learning rate)")
        return loss

    def train_step(self, indices: list[int]) -> tuple[float, int]:
        """One optimizer step on a global batch; returns its mean target loss and its token count."""
        items = [self.train_set[i] for i in indices[self.rank::self.world]]
        batch = self._batch(items)
        (n_targets,) = self._all_sum(batch.n_targets)
        self.ddp_model.train()
        with self.acc.autocast():
            if self.hp.replay_loss == "kl" and any(e.replay for e in items):
                loss_sum = self._loss_with_replay_kl(items, batch)
            else:
                loss_sum = target_loss_sum(self.ddp_model, batch)
        # DDP averages gradients over processes, hence x world: the update is that of the global token mean.
        self.acc.backward(loss_sum * self.world / n_targets)
        self.acc.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_total, n_tokens = self._all_sum(float(loss_sum.detach()), batch.n_tokens)
        return loss_total / n_targets, int(n_tokens)

    def _loss_with_replay_kl(self, items: Sequence[Encoded], batch: Batch) -> torch.Tensor:
        """Cross-entropy on the user's targets plus, on replay answers, KL(base || adapter) summed
        over their tokens: the adapter is pulled toward the base model's whole next-token
        distribution there, not only its greedy token, so what it does not need to change for the
        user stays as the base model had it.  Normalized with the CE tokens (one term per token)."""
        logits, targets, where = target_logits(self.ddp_model, batch)
        rows = where.nonzero()[:, 0]
        replay_rows = torch.tensor([e.replay for e in items], device=rows.device)
        at_replay = replay_rows[rows]
        replay_batch = self._batch([e for e in items if e.replay])
        with torch.no_grad(), self.model.disable_adapter():
            # Row order and right padding keep the replay rows' target positions in the same order.
            base_logits, _, _ = target_logits(self.model, replay_batch)
        logp = F.log_softmax(logits[at_replay].float(), dim=-1)
        base_logp = F.log_softmax(base_logits.float(), dim=-1)
        kl = F.kl_div(logp, base_logp, log_target=True, reduction="sum")
        ce = F.cross_entropy(logits[~at_replay].float(), targets[~at_replay], reduction="sum")
        return ce + kl

    def run(self) -> TrainMetrics:
        hp = self.hp
        global_batch = self.per_rank * self.world
        if global_batch != hp.batch_size:
            self._notify(f"batch size {hp.batch_size} rounded up to {global_batch} for {self.world} processes")
        schedule = length_grouped_batches([len(e.tokens) for e in self.train_set], global_batch, hp.seed)
        validation: EarlyStopping[dict[str, torch.Tensor]] = EarlyStopping(
            hp.early_stopping_patience, lambda: trainable_state(self.model))
        if self.valid_set:
            validation.record(0, self.evaluate(self.valid_set))
            self._report(0, valid_loss=validation.losses[-1][1])

        report_every = max(1, math.ceil(hp.iters / TRAIN_LOSS_POINTS))
        train_losses: list[tuple[int, float]] = []
        window: list[float] = []
        trained_tokens, train_time, step, stopped_early = 0, 0.0, 0, False
        for step in range(1, hp.iters + 1):
            tic = time.perf_counter()
            loss, n_tokens = self.train_step(next(schedule))
            train_time += time.perf_counter() - tic
            if not math.isfinite(loss):
                raise TrainError(f"training loss is {loss} at step {step}: lower the learning rate (now {hp.learning_rate:g})")
            trained_tokens += n_tokens
            window.append(loss)
            if step % report_every == 0 or step == hp.iters:
                train_losses.append((step, sum(window) / len(window)))
                window = []
            valid_loss = None
            if self.valid_set and (step % hp.eval_every == 0 or step == hp.iters):
                valid_loss = self.evaluate(self.valid_set)
                validation.record(step, valid_loss)
            self._report(step, train_loss=loss, valid_loss=valid_loss, tokens_per_second=trained_tokens / train_time)
            if validation.should_stop:
                stopped_early = True
                self._notify(f"early stop at step {step}: no better validation loss in {hp.early_stopping_patience} evaluations")
                break

        if validation.best_is_earlier:
            load_trainable_state(self.model, validation.best_weights)
            self._notify(f"kept the weights of step {validation.best_step} (validation loss {validation.best_loss:.4f})")
        sft_state = trainable_state(self.model) if hp.preference != "off" else None
        preference = self.preference_stage()
        test_loss = self.evaluate(self.test_set) if self.test_set else None
        peak = self.acc.reduce(torch.tensor(_peak_memory_mb(self.acc.device), device=self.acc.device), "max")

        metrics = TrainMetrics(
            backend="torch",
            adapter_format="peft",
            train_loss=train_losses,
            valid_loss=validation.losses,
            test_loss=test_loss,
            tokens_per_second=trained_tokens / train_time if train_time else 0.0,
            trained_tokens=trained_tokens,
            peak_memory_mb=round(float(peak), 1),
            duration_s=round(time.perf_counter() - self.started, 2),
            iters_done=step,
            stopped_early=stopped_early,
            best_step=validation.best_step,
            hyperparams=hp.to_dict(),
            manifest_sha256=manifest_sha256(self.request.dataset_dir),
            base_model=str(self.request.base_model),
            sequences=self.sequences,
            preference=preference.to_dict() if preference else None,
        )
        if self.acc.is_main_process:
            self._save(self.request.output_dir, metrics)
            if preference is not None and sft_state is not None:
                # The adapter as SFT left it, beside the one DPO/KTO moved on: the gate judges it when
                # preference training cost more general behaviour than the rule allows (stages/evaluate.py).
                load_trainable_state(self.model, sft_state)
                self._save(AdapterFiles.sft_only(self.request.output_dir), dataclasses.replace(metrics, preference=None))
        self.acc.wait_for_everyone()
        return metrics

    def _save(self, out: Path, metrics: TrainMetrics) -> None:
        try:
            with atomic_dir(out) as tmp:  # a failed write leaves no adapter behind
                self.model.save_pretrained(tmp)
                write_adapter_meta(tmp, self.request, metrics)
        except (OSError, SafetensorError) as e:  # a full disk, a quota, a read-only folder
            raise TrainError(f"cannot write the adapter to {out}: {e}") from e

    def preference_stage(self):
        """DPO or KTO on the SFT adapter (train/torch/preference.py); None when none runs."""
        hp = self.hp
        if hp.preference == "off":
            return None
        from nightlora.train.torch.preference import choose_method, preference_data, train_preference

        data = preference_data(self.user_train, read_preferences(self.request.dataset_dir))
        method, why = choose_method(hp.preference, data)
        if method is None:
            self._notify(why)
            return None
        if self.world > 1:
            self._notify(f"{why}: skipped, preference training runs in one process only")
            return None
        self.model.train()
        return train_preference(self.model, self.tokenizer, method, why, data, beta=hp.preference_beta,
                                learning_rate=hp.preference_learning_rate, epochs=hp.preference_epochs,
                                max_length=hp.max_seq_length, seed=hp.seed, notify=self._notify,
                                bf16=self.acc.mixed_precision == "bf16")

    def _report(self, step: int, **values: float | None) -> None:
        if self.progress:
            self.progress(ProgressEvent(step=step, total=self.hp.iters, **values))


class TorchTrainer:
    """base.Trainer on transformers + PEFT + accelerate."""

    name = "torch"
    adapter_format = "peft"
    kl_replay = True

    def scorer(self, base_model: Path) -> "TorchScorer":
        from nightlora.train.torch.scorer import TorchScorer

        return TorchScorer(base_model)

    @contextlib.contextmanager
    def cpu_threads(self, n: int | None) -> Iterator[None]:
        # torch's intra-op pool is process-wide: set for the stage, then given back as it was.
        before = torch.get_num_threads()
        if n is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def train(self, request: TrainRequest, progress: ProgressFn | None = None) -> TrainMetrics:
        if Path(request.output_dir).exists():
            raise TrainError(f"{request.output_dir} already exists: adapters are never overwritten")
        return _Run(request, progress, started=time.perf_counter()).run()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nightlora.train.torch.backend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="folder written by `nightlora export`")
    p.add_argument("--model", type=Path, required=True, help="base model folder")
    p.add_argument("--out", type=Path, required=True, help="adapter folder to create (must not exist)")
    p.add_argument("--hyperparams", type=Path, required=True, help="JSON file of HyperParams (`nightlora train --dry-run --json`)")
    p.add_argument("--init-adapter", type=Path, default=None, help="PEFT adapter to continue from")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train and print the metrics as JSON (main process); errors as one line, with TrainError's exit code."""
    args = _parse_args(argv)
    hf_logging.disable_progress_bar()  # weight-loading bars, once per process; ours shows the training
    try:
        hp = HyperParams(**json.loads(args.hyperparams.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        print(f"nightlora: error: cannot read hyperparameters from {args.hyperparams}: {e}", file=sys.stderr)
        return TrainError.exit_code
    request = TrainRequest(args.dataset, args.model, args.out, hp, args.init_adapter)
    state = PartialState()  # joins the process group when run under `accelerate launch`
    try:
        if state.is_main_process:
            with TqdmProgress(total=hp.iters) as bar:
                metrics = TorchTrainer().train(request, bar)
            print(json.dumps(metrics.to_dict(), indent=2))
        else:
            TorchTrainer().train(request)
    except NightloraError as e:
        print(f"nightlora: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
