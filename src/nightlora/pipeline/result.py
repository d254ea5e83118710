"""What a night did, stage by stage, as typed records (``result.json`` in the run folder)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nightlora.dataset.writer import ExportResult
    from nightlora.evaluate.probe import ProbeResult
    from nightlora.sources.base import FeedbackCounts
    from nightlora.targets.deploy import DeployResult
    from nightlora.targets.downtime import DowntimeDecision
    from nightlora.teachers.distill import DistillResult
    from nightlora.train.base import HyperParams, TrainMetrics

# How a night can end (state.db runs.status, flywheel_cycles.status).
FINAL_STATUSES = ("completed", "skipped", "rolled_back", "failed", "interrupted")


@dataclass
class TrainResult:
    backend: str
    hyperparams: HyperParams
    downtime: DowntimeDecision
    base_model: Path
    adapter_dir: Path | None = None
    metrics: TrainMetrics | None = None


@dataclass
class CommitResult:
    consumed: int          # feedback rows recorded as consumed in nightlora's state db
    marked_in_source: int  # rows the source's own record changed (Hanni's exported flag)
    pruned: list[str] = field(default_factory=list)
    warning: str | None = None


def _plain(value: Any) -> Any:
    """Records as JSON-ready values (dataclasses, paths, enums, tuples)."""
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


@dataclass
class RunResult:
    status: str  # one of FINAL_STATUSES
    exit_code: int
    message: str
    run_id: int | None = None
    run_dir: Path | None = None
    feedback: FeedbackCounts | None = None
    export: ExportResult | None = None
    distill: DistillResult | None = None
    train: TrainResult | None = None
    deploy: DeployResult | None = None
    commit: CommitResult | None = None
    probe_before: ProbeResult | None = None
    probe_after: ProbeResult | None = None
    stages_s: dict[str, float] = field(default_factory=dict)

    @property
    def marked_exported(self) -> int:
        return self.commit.marked_in_source if self.commit else 0

    @property
    def live(self) -> str | None:
        return self.deploy.live if self.deploy else None

    @property
    def train_pairs(self) -> int | None:
        return self.export.counts.get("train") if self.export else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "exit_code": self.exit_code, "message": self.message,
            "run_id": self.run_id, "run_dir": _plain(self.run_dir),
            "feedback": _plain(self.feedback), "export": _plain(self.export),
            "distill": _plain(self.distill), "train": _plain(self.train),
            "deploy": _plain(self.deploy), "commit": _plain(self.commit),
            "probe_before": _plain(self.probe_before), "probe_after": _plain(self.probe_after),
            "marked_exported": self.marked_exported, "stages_s": self.stages_s,
        }
