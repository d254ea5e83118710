"""Learning from thumbs-down in the torch backend: TRL's DPO on pairs, KTO on unpaired ratings.

Runs after the SFT stage, on the same adapter.  The data comes from the export:

* DPO: ``preferences.jsonl`` records of the train split that have a ``chosen`` reply (the
  correction or the 1-rated alternative after a rated-down reply).  TRL's conversational
  format is exactly the export's: ``prompt`` (system + context), ``chosen``, ``rejected``.
* KTO: unpaired. Desirable: the train split's examples the user rated 1; undesirable: every
  rated-down reply of the train split (with or without a chosen one).

The reference model: given a PeftModel, TRL copies its adapter as a frozen "ref" adapter, so
the reference is tonight's SFT adapter, itself trained from the base model this same night
(nightlora never continues last night's adapter, so no drift accumulates).  The "ref" copy
is removed before the adapter is saved.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from nightlora.errors import TrainError

MIN_PAIRS = 2       # DPO on fewer pairs than this learns nothing worth the time
MIN_KTO_EACH = 1    # KTO needs at least one desirable and one undesirable example
KTO_BATCH = 2       # its KL estimate needs more than one example per batch


@dataclass
class PreferenceData:
    pairs: list[dict] = field(default_factory=list)        # {"prompt", "chosen", "rejected", "tools"?}
    desirable: list[dict] = field(default_factory=list)    # {"prompt", "completion", "label": True}
    undesirable: list[dict] = field(default_factory=list)  # {"prompt", "completion", "label": False}


def preference_data(train_examples: list[dict], preferences: list[dict]) -> PreferenceData:
    out = PreferenceData()
    for p in preferences:
        if (p.get("meta") or {}).get("split") != "train":
            continue
        extra = {"tools": p["tools"]} if p.get("tools") else {}
        if p.get("chosen"):
            out.pairs.append({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"], **extra})
        out.undesirable.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False, **extra})
    for e in train_examples:
        meta = e.get("meta") or {}
        if meta.get("rating") == 1 and meta.get("source") == "feedback":
            extra = {"tools": e["tools"]} if e.get("tools") else {}
            out.desirable.append({"prompt": e["messages"][:-1], "completion": e["messages"][-1:], "label": True, **extra})
    return out


def choose_method(wanted: str, data: PreferenceData) -> tuple[str | None, str]:
    """(method or None, why): "auto" takes DPO where pairs exist, else KTO on unpaired ratings."""
    if wanted == "off":
        return None, "preference training off (config)"
    can_dpo = len(data.pairs) >= MIN_PAIRS
    can_kto = len(data.desirable) >= MIN_KTO_EACH and len(data.undesirable) >= MIN_KTO_EACH
    if wanted == "dpo" or (wanted == "auto" and can_dpo):
        if not can_dpo:
            return None, f"{len(data.pairs)} rated-down replies with a better one: DPO needs {MIN_PAIRS}"
        return "dpo", f"DPO on {len(data.pairs)} pairs (a rated-down reply and the better one)"
    if wanted in ("kto", "auto"):
        if not can_kto:
            return None, (f"{len(data.desirable)} thumbs-up and {len(data.undesirable)} thumbs-down replies: "
                          "no preference training")
        return "kto", f"KTO on {len(data.desirable)} thumbs-up and {len(data.undesirable)} thumbs-down replies"
    raise TrainError(f"unknown preference method {wanted!r} (auto, dpo, kto, off)")


@dataclass
class PreferenceReport:
    method: str
    reason: str
    examples: int
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    reward_accuracy: float | None  # DPO: share of pairs whose chosen reply gained more than the rejected

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Log:
    """Collects the losses TRL reports (its Trainer's log calls), instead of printing them."""

    def __init__(self) -> None:
        self.entries: list[dict] = []

    def make(self):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if logs:
                    outer.entries.append(dict(logs))

        return Callback()


def train_preference(model: Any, tokenizer: Any, method: str, reason: str, data: PreferenceData, *, beta: float,
                     learning_rate: float, epochs: float, max_length: int, seed: int, bf16: bool = False,
                     notify: Callable[[str], None] = lambda msg: None) -> PreferenceReport:
    """Train ``model`` (a PeftModel with the SFT adapter as "default") in place with DPO or KTO."""
    import datasets
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()  # TRL maps the dataset; our own progress lines are the ones people read
    log = _Log()
    t0 = time.perf_counter()
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="nightlora-pref-") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        common: dict[str, Any] = dict(
            output_dir=tmp, learning_rate=learning_rate, num_train_epochs=epochs, beta=beta,
            max_length=max_length, lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=1,
            save_strategy="no", report_to=[], seed=seed, disable_tqdm=True, use_cpu=not _on_gpu(model),
            gradient_checkpointing=False, remove_unused_columns=False,
            # The same precision as the SFT stage: accelerate keeps one state per process.
            bf16=bf16, fp16=False,
        )
        if method == "dpo":
            from trl import DPOConfig, DPOTrainer

            rows = data.pairs
            trainer = DPOTrainer(model=model, ref_model=None, processing_class=tokenizer,
                                 args=DPOConfig(per_device_train_batch_size=min(4, len(rows)), **common),
                                 train_dataset=Dataset.from_list(rows), callbacks=[log.make()])
        else:
            from trl import KTOConfig, KTOTrainer

            rows = data.desirable + data.undesirable
            # Weighted so that both sides count about equally (TRL's recommended ratio).
            undesirable_weight = min(4.0, max(1.0, len(data.desirable) / max(1, len(data.undesirable))))
            trainer = KTOTrainer(model=model, ref_model=None, processing_class=tokenizer,
                                 args=KTOConfig(per_device_train_batch_size=KTO_BATCH, desirable_weight=1.0,
                                                undesirable_weight=undesirable_weight, **common),
                                 train_dataset=Dataset.from_list(rows), callbacks=[log.make()])
        trainer.train()
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    model.set_adapter("default")
    losses = [e["loss"] for e in log.entries if "loss" in e and isinstance(e["loss"], (int, float))]
    if losses and not all(math.isfinite(v) for v in losses):
        raise TrainError(f"{method.upper()} loss was not finite: lower the preference learning rate")
    accuracies = [e[k] for e in log.entries for k in ("rewards/accuracies",) if k in e]
    steps = max((int(e.get("step", 0)) for e in log.entries), default=0) or len(losses)
    notify(f"{method.upper()}: {len(rows)} examples, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses
           else f"{method.upper()}: {len(rows)} examples")
    return PreferenceReport(method, reason, len(rows), steps, round(time.perf_counter() - t0, 2),
                            losses[0] if losses else None, losses[-1] if losses else None,
                            sum(accuracies[-3:]) / len(accuracies[-3:]) if accuracies else None)


def _on_gpu(model: Any) -> bool:
    try:
        return next(model.parameters()).device.type == "cuda"
    except StopIteration:
        return False
