"""What a night did, stage by stage, as typed records (``result.json`` in the run folder)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightlora.evaluate.gate import Decision
from nightlora.evaluate.scores import ModelScores

if TYPE_CHECKING:
    from nightlora.pipeline.guards import GuardCheck
    from nightlora.dataset.writer import ExportResult
    from nightlora.sources.base import FeedbackCounts
    from nightlora.targets.deploy import DeployResult
    from nightlora.targets.downtime import DowntimeDecision
    from nightlora.teachers.distill import DistillResult
    from nightlora.train.base import HyperParams, TrainMetrics

from nightlora.state.db import FINAL_STATUSES  # noqa: F401  (how a night can end)


@dataclass
class TrainResult:
    backend: str
    hyperparams: HyperParams
    downtime: DowntimeDecision
    base_model: Path
    adapter_dir: Path | None = None
    metrics: TrainMetrics | None = None


@dataclass
class EvaluationResult:
    scores: dict[str, ModelScores]   # "base", "live" (when one was live), "candidate"
    decision: Decision
    test_split: str                  # the held-out split the losses come from ("test", else "valid")
    test_examples: int
    general_prompts: int
    preference_pairs: int
    probe_questions: list[str]
    smoke_prompts: list[str]

    @property
    def score(self) -> float | None:
        """flywheel_cycles.eval_score: the share of the base model's loss on the user's held-out replies
        that the candidate removes (1 - candidate / base); 0 = no better than the base model."""
        base, cand = self.scores["base"].test_loss, self.scores["candidate"].test_loss
        if not base or cand is None:
            return None
        return round(1 - cand / base, 4)

    def to_dict(self) -> dict[str, Any]:
        return {"scores": {k: v.to_dict() for k, v in self.scores.items()}, "decision": self.decision.to_dict(),
                "score": self.score, "test_split": self.test_split, "test_examples": self.test_examples,
                "general_prompts": self.general_prompts, "preference_pairs": self.preference_pairs,
                "probe_questions": len(self.probe_questions), "probe_questions_text": self.probe_questions,
                "smoke_prompts": len(self.smoke_prompts), "smoke_prompts_text": self.smoke_prompts}


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
    evaluation: EvaluationResult | None = None
    deploy: DeployResult | None = None
    commit: CommitResult | None = None
    guards: list[GuardCheck] | None = None
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
            "evaluation": _plain(self.evaluation), "deploy": _plain(self.deploy), "commit": _plain(self.commit),
            "guards": _plain(self.guards),
            "marked_exported": self.marked_exported, "stages_s": self.stages_s,
        }
