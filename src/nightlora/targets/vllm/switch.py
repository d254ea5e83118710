"""What a version must show before the stable name moves to it (pure rules, no HTTP).

The reply to the health prompt must say something, end by itself (finish_reason "stop"),
not loop, and differ from the base model's reply to the same prompt: an adapter whose
answer is the base model's is not applied (a fresh PEFT adapter's B matrices are zero).
"""

from __future__ import annotations

from collections import Counter

NGRAM = 4          # words (the same rule as evaluate/smoke.py, which targets may not import)
LOOP_REPEATS = 3


def loops(text: str) -> bool:
    words = text.split()
    grams = Counter(tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1))
    return bool(grams) and max(grams.values()) >= LOOP_REPEATS


def reply_problem(text: str, finish_reason: str | None, base_text: str | None) -> str | None:
    """Why this reply does not pass, in a few words; None when it does.  ``base_text`` None: no comparison."""
    if not text.strip():
        return "empty reply"
    if finish_reason != "stop":
        return f"did not stop (finish_reason {finish_reason!r})"
    if loops(text):
        return "repeats itself"
    if base_text is not None and text.strip() == base_text.strip():
        return "answers exactly as the base model does (the adapter changes nothing)"
    return None
