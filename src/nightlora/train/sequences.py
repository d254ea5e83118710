"""Token sequences with their target spans, merged per conversation where that is exact, and batched.

The export writes one example per target turn, each with its whole history: example j
of a conversation is example j+1 without its last turns.  When the tokens of each example
are a prefix of the next one's, the longest one holds them all, and its mask can cover
every example's target span: under causal attention each target token sees exactly the
context it had in its own example, so the sum of per-target losses is unchanged while the
shared history is read once instead of once per turn.

Whether it is exact is decided on tokens, not messages: some chat templates render an
earlier assistant turn differently from the last one (Qwen3's drops the ``<think>`` block
of earlier turns), and a tool list that grows during a conversation changes its system
prompt.  Examples that do not extend the chain start a new one (they stay apart).
Backend-neutral (no torch, no mlx): both backends tokenize into ``Encoded`` and batch here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

# Examples per length-sorting window, in global batches (transformers' LengthGroupedSampler uses 50).
MEGABATCH_BATCHES = 50


@dataclass(frozen=True)
class Encoded:
    tokens: list[int]
    spans: tuple[tuple[int, int], ...]  # target token ranges [start, end): tokens[start:end] are learned
    # A self-replay example (the base model's own answer to a general prompt): its targets may be
    # learned toward the base model's whole next-token distribution rather than its greedy tokens.
    replay: bool = False

    @property
    def offset(self) -> int:
        """Where the (first) target starts."""
        return self.spans[0][0]

    @property
    def n_targets(self) -> int:
        return sum(end - start for start, end in self.spans)

    def truncated(self, max_len: int) -> "Encoded":
        spans = tuple((s, min(e, max_len)) for s, e in self.spans if s < max_len)
        return Encoded(self.tokens[:max_len], spans, self.replay)




@dataclass(frozen=True)
class EncodedSplit:
    items: list[Encoded]
    examples: int       # examples read
    dropped: int        # examples whose target lies entirely beyond max_seq_length
    merged: int = 0     # examples learned inside another one's sequence (not read on their own)
    fallback: int = 0   # examples of merge groups that were not prefixes of each other (kept apart)


def encode_all(encoded: Sequence[Encoded], examples: Sequence[dict], max_seq_length: int, *,
               merge: bool = True) -> EncodedSplit:
    """``encoded[i]`` is ``examples[i]`` tokenized: merge each conversation's where that is exact, truncate
    like mlx_lm (keep the first max_seq_length tokens); targets cut off entirely are dropped."""
    encoded = [Encoded(e.tokens, e.spans, True) if is_replay(ex) else e for e, ex in zip(encoded, examples)]
    sequences, merged, fallback = (merge_prefix_chains(examples, encoded) if merge
                                   else ([(e, 1) for e in encoded], 0, 0))
    out, dropped = [], 0
    for enc, n in sequences:
        cut = enc.truncated(max_seq_length)
        kept = len(cut.spans)
        dropped += len(enc.spans) - kept
        if kept:
            out.append(cut)
    return EncodedSplit(out, len(examples), dropped, merged, fallback)


def is_replay(example: dict) -> bool:
    return (example.get("meta") or {}).get("source") == "replay"


def _group_key(example: dict) -> Any:
    meta = example.get("meta") or {}
    cid = meta.get("conversation_id")
    # Examples without a conversation (replay, distilled, hand-made) are their own group.
    return None if cid is None else (meta.get("source"), meta.get("split"), cid)


def merge_prefix_chains(examples: Sequence[dict], encoded: Sequence[Encoded]) -> tuple[list[tuple[Encoded, int]], int, int]:
    """(merged sequences with how many examples each holds, examples merged into another, examples kept
    apart because they were not prefixes).  Order: each chain where its first example was."""
    groups: dict[Any, list[int]] = {}
    order: list[Any] = []
    for i, ex in enumerate(examples):
        key = _group_key(ex)
        if key is None:
            key = ("single", i)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(i)

    out: list[tuple[Encoded, int]] = []
    merged = fallback = 0
    for key in order:
        members = sorted(groups[key], key=lambda i: len(encoded[i].tokens))
        chains: list[list[int]] = []
        for i in members:
            toks = encoded[i].tokens
            for chain in chains:
                last = encoded[chain[-1]].tokens
                if len(last) <= len(toks) and toks[:len(last)] == last:
                    chain.append(i)
                    break
            else:
                chains.append([i])
        fallback += len(chains) - 1 if len(members) > 1 else 0
        for chain in chains:
            head = encoded[chain[-1]]
            spans = tuple(sorted({s for i in chain for s in encoded[i].spans}))
            out.append((Encoded(head.tokens, spans, head.replay), len(chain)))
            merged += len(chain) - 1
    return out, merged, fallback


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless global batches of example indices, each batch of similar lengths.

    The examples run as a stream of shuffled epochs, so every batch is full and no
    example is dropped systematically (mlx_lm drops the longest remainder each
    epoch). Each window of MEGABATCH_BATCHES batches is sorted by length, cut into
    batches, and the batches are shuffled.
    """
    rng = random.Random(seed)
    n = len(lengths)

    def stream() -> Iterator[int]:
        while True:
            order = list(range(n))
            rng.shuffle(order)
            yield from order

    examples = stream()
    # A window longer than an epoch would hold an example twice, side by side once sorted.
    window = batch_size * max(1, min(MEGABATCH_BATCHES, n // batch_size))
    while True:
        chunk = [next(examples) for _ in range(window)]
        chunk.sort(key=lambda i: lengths[i], reverse=True)
        batches = [chunk[i:i + batch_size] for i in range(0, window, batch_size)]
        rng.shuffle(batches)
        yield from batches
