"""The held-out probe: questions about facts the user told the assistant, asked in other words.

``probe.jsonl`` lines are ``{"question": ..., "answer": ...}``; a reply is right when it
contains the answer.  Asked with the same system prompt the training examples start with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from nightlora.errors import EvaluationError

ChatFn = Callable[[str], str]  # question -> the assistant's reply


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
