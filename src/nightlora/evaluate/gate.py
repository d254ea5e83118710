"""Checks a trained adapter must pass before it goes live, and the probe score.

Promotion rule today: the test loss must be a finite number (a NaN or infinite loss
means training diverged; such an adapter is never deployed). The probe score --
held-out questions about facts the user told the assistant -- is measured through
the live server before and after deployment and recorded, not used to gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from nightlora.errors import EvaluationError
from nightlora.train.base import TrainMetrics

ChatFn = Callable[[str], str]  # question -> the assistant's reply


def check_promotable(metrics: TrainMetrics) -> None:
    """Raise EvaluationError unless the adapter may be deployed."""
    if metrics.test_loss is None:
        raise EvaluationError("training recorded no test loss; refusing to deploy an unchecked adapter")
    if not math.isfinite(metrics.test_loss):
        raise EvaluationError(f"test loss is {metrics.test_loss}: training diverged; the adapter is not deployed")
    bad = [step for step, loss in metrics.train_loss if not math.isfinite(loss)]
    if bad:
        raise EvaluationError(f"train loss was not finite at step {bad[0]}; the adapter is not deployed")


@dataclass
class ProbeItem:
    question: str
    answer: str
    reply: str
    correct: bool


@dataclass
class ProbeResult:
    correct: int
    total: int
    items: list[ProbeItem] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {"correct": self.correct, "total": self.total, "score": self.score,
                "items": [asdict(i) for i in self.items]}


def read_probe(path: Path) -> list[dict]:
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            items.append({"question": str(obj["question"]), "answer": str(obj["answer"])})
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EvaluationError(f"{path}:{n}: not a probe line (want {{\"question\", \"answer\"}})") from None
    return items


def answer_matches(expected: str, reply: str) -> bool:
    """The expected answer appears in the reply, ignoring case and surrounding punctuation."""
    norm = lambda s: " ".join(s.casefold().replace(".", " ").replace(",", " ").split())  # noqa: E731
    return norm(expected) in norm(reply)


def probe(chat: ChatFn, items: list[dict]) -> ProbeResult:
    result = ProbeResult(correct=0, total=len(items))
    for it in items:
        reply = chat(it["question"])
        ok = answer_matches(it["answer"], reply)
        result.correct += ok
        result.items.append(ProbeItem(it["question"], it["answer"], reply, ok))
    return result
