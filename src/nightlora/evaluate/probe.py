"""The held-out probe: questions about facts the user told the assistant, asked in other words.

``probe.jsonl`` (beside the source's database; `nightlora demo-db` writes one) lines are
``{"question": ..., "answer": ...}``; a reply is right when it contains the answer.  The
evaluation asks them with the same system prompt the training examples start with.
"""

from __future__ import annotations

import json
from pathlib import Path

from nightlora.errors import EvaluationError


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
