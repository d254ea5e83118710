"""What the evaluation measured for each model (base, live, candidate), as plain records."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def mean(pairs: list[tuple[float, int]]) -> float | None:
    """Token-weighted mean loss of (summed loss, tokens) pairs; None when there is no token."""
    total, count = sum(s for s, _ in pairs), sum(n for _, n in pairs)
    return total / count if count else None


@dataclass
class ModelScores:
    name: str                      # "base", "live" or "candidate"
    adapter: str | None            # the version (or folder) answering; None: the base model alone
    test_loss: float | None = None         # mean loss of the user's held-out replies (lower is better)
    test_targets: int = 0
    general_loss: float | None = None      # mean loss of the base model's answers to held-out general prompts
    preference_accuracy: float | None = None  # share of held-out pairs whose chosen reply it prefers
    preference_pairs: int = 0
    probe_correct: int | None = None
    probe_total: int = 0
    probe_replies: list[str] = field(default_factory=list)
    smoke_problems: list[str | None] = field(default_factory=list)
    smoke_replies: list[str] = field(default_factory=list)

    @property
    def smoke_failures(self) -> int:
        return sum(p is not None for p in self.smoke_problems)

    @property
    def finite(self) -> bool:
        return self.test_loss is None or math.isfinite(self.test_loss)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["smoke_failures"] = self.smoke_failures
        return d
