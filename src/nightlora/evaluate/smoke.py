"""The generation smoke check: a reply must say something, end by itself, and not loop."""

from __future__ import annotations

from collections import Counter

from nightlora.train.scoring import Generated

NGRAM = 4          # words
LOOP_REPEATS = 3   # the same 4 words this many times over is a loop


def loops(text: str) -> bool:
    words = text.split()
    grams = Counter(tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1))
    return bool(grams) and max(grams.values()) >= LOOP_REPEATS


def problem(g: Generated) -> str | None:
    """What is wrong with a reply, in a few words; None when it passes."""
    if not g.text.strip():
        return "empty reply"
    if not g.stopped:
        return "did not stop"
    if loops(g.text):
        return "repeats itself"
    return None
