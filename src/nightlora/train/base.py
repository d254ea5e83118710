"""The trainer contract both backends implement, and the records they produce.

Input: the dataset folder written by `nightlora export` (train/valid/test.jsonl +
manifest.json), a base model folder, an optional adapter to start from, and
typed hyperparameters. Output: a finished adapter folder (renamed into place only
when complete) holding the weights, the backend's adapter config and
``nightlora.json`` (the metrics below, the exact hyperparameters, the dataset
manifest's hash, the base model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Literal, Protocol

from nightlora.dataset.manifest import manifest_sha256, try_read_manifest  # noqa: F401  (trainers use both)
from nightlora.paths import AdapterFiles
from nightlora.train.scoring import Scorer

ADAPTER_META = AdapterFiles.TRAINER_META


@dataclass(frozen=True)
class HyperParams:
    iters: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    num_layers: int  # how many of the last transformer blocks get LoRA; the model's count = all
    max_seq_length: int
    grad_checkpoint: bool
    eval_every: int
    early_stopping_patience: int  # evaluations without improvement before stopping; 0 = never
    seed: int
    reasons: dict[str, str] = field(default_factory=dict)  # why each value was chosen
    # Train each conversation's targets in one sequence (train/merge.py); False: one example at a time.
    merge_turns: bool = True
    # Self-replay examples written beside train.jsonl (the base model's answers to general prompts).
    replay_examples: int = 0
    # How replay examples are learned: "kl" toward the base model's whole next-token distribution
    # (KL(base || adapter) at each answer token), "ce" toward its greedy tokens like any example.
    replay_loss: str = "ce"
    # Learning from thumbs-down after SFT: "dpo", "kto", "auto" (DPO where pairs exist, else KTO) or "off".
    preference: str = "off"
    preference_beta: float = 0.1
    preference_learning_rate: float = 5e-5
    preference_epochs: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainRequest:
    dataset_dir: Path
    base_model: Path
    output_dir: Path  # must not exist yet; written via fsutil.atomic_dir
    hyperparams: HyperParams
    init_adapter: Path | None = None


@dataclass
class ProgressEvent:
    step: int
    total: int
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None
    message: str | None = None


ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class TrainMetrics:
    backend: str
    adapter_format: Literal["mlx", "peft"]
    train_loss: list[tuple[int, float]]  # (step, loss)
    valid_loss: list[tuple[int, float]]
    test_loss: float | None
    tokens_per_second: float
    trained_tokens: int
    peak_memory_mb: float
    duration_s: float
    iters_done: int
    stopped_early: bool
    best_step: int | None
    hyperparams: dict
    manifest_sha256: str | None
    base_model: str
    # Per split: examples read, sequences trained (each conversation's examples merged), merged, kept apart.
    sequences: dict = field(default_factory=dict)
    # The preference stage after SFT (train/torch/preference.py), when one ran.
    preference: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Trainer(Protocol):
    name: str
    #: the format of the adapters it writes ("peft" or "mlx")
    adapter_format: str
    #: replay_loss = "kl" is honoured (else replay answers are learned as tokens)
    kl_replay: bool

    def train(self, request: TrainRequest, progress: ProgressFn | None = None) -> TrainMetrics: ...

    def scorer(self, base_model: Path) -> "Scorer":
        """The base model loaded in this framework, to score it and adapters on it (train/scoring.py)."""

    def cpu_threads(self, n: int | None) -> ContextManager[None]:
        """Within it, this framework computes on at most ``n`` CPU threads (None: its own default)."""


def write_adapter_meta(adapter_dir: Path, request: TrainRequest, metrics: TrainMetrics) -> None:
    """Save the config and data provenance beside the weights (call inside atomic_dir)."""
    from nightlora.platform.fsutil import atomic_write_json

    atomic_write_json(Path(adapter_dir) / ADAPTER_META, {
        "format_version": 1,
        "metrics": metrics.to_dict(),
        "base_model": str(request.base_model),
        "init_adapter": str(request.init_adapter) if request.init_adapter else None,
        "dataset_dir": str(request.dataset_dir),
        "manifest": try_read_manifest(request.dataset_dir),
    })


def read_adapter_meta(adapter_dir: Path) -> dict | None:
    import json

    path = Path(adapter_dir) / ADAPTER_META
    return json.loads(path.read_text()) if path.is_file() else None
