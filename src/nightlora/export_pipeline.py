"""Turning streamed rows into JSON lines, in chunks, in this process or in worker processes.

The CPU-heavy part of an export (parsing, the rules, JSON encoding) runs on chunks of
rows; a large database spreads the chunks over worker processes.  Results come back in
row order, and only a few chunks are in flight at once, so memory stays bounded and the
output is the same whatever the number of workers.  Reading the database, keeping
identical records once and writing the files stay in the calling process.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nightlora.export_dedupe import digest_of
from nightlora.export_examples import conversation_examples
from nightlora.export_messages import BadConversation, Message, parse_messages
from nightlora.export_split import split_of
from nightlora.hanni_db import ConversationRow

CHUNK_ROWS = 256
# Spawn, not fork: the calling process may hold threads and open SQLite handles.
_CONTEXT = multiprocessing.get_context("spawn")

# One encoder for every line: json.dumps with options builds a new encoder per call, which
# cost more than the encoding itself at hundreds of thousands of small objects.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# The record fields that hold chat messages (examples: messages; preferences: the rest).
_MESSAGE_LISTS = frozenset({"messages", "prompt", "chosen", "rejected"})

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Chunk:
    rows: list[ConversationRow]
    system_prompt: str
    split: tuple[int, int, int]
    min_messages: int


@dataclass
class Converted:
    """One conversation's outcome: ``skip_reason`` or ``too_short``, else its lines."""

    id: int
    rated: bool
    skip_reason: str | None = None
    too_short: bool = False
    feedback_problems: list[str] = field(default_factory=list)
    # (file stem: a split or "preferences", digest of the line without meta, the line)
    lines: list[tuple[str, bytes, bytes]] = field(default_factory=list)


class _Encoder:
    """JSON lines for one conversation's records, each message encoded once.

    A conversation's examples share their context's message objects, so caching each
    message's UTF-8 JSON by object turns the quadratic cost of repeating contexts into
    byte joins.  The cache keeps the objects alive (ids stay unique); one per conversation.
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Message, bytes]] = {}

    def _messages(self, messages: list[Message]) -> bytes:
        parts = []
        for m in messages:
            hit = self._cache.get(id(m))
            if hit is None:
                hit = self._cache[id(m)] = (m, _dumps(m).encode("utf-8"))
            parts.append(hit[1])
        return b"[" + b",".join(parts) + b"]"

    def line(self, record: dict[str, Any]) -> tuple[bytes, bytes]:
        """(digest of the record without its meta, the record as one JSON line)."""
        fields = []
        for key, value in record.items():
            if key == "meta":
                continue
            if key in _MESSAGE_LISTS and value is not None:
                encoded = self._messages(value)
            else:
                encoded = _dumps(value).encode("utf-8")
            fields.append(b'"' + key.encode() + b'":' + encoded)
        body = b"{" + b",".join(fields)
        return digest_of(body), body + b',"meta":' + _dumps(record["meta"]).encode("utf-8") + b"}\n"


def convert_row(row: ConversationRow, system_prompt: str, split: tuple[int, int, int], min_messages: int) -> Converted:
    out = Converted(row.id, row.rated)
    part = split_of(row.id, split)
    try:
        parsed = parse_messages(row.messages)
    except BadConversation as e:
        out.skip_reason = e.reason
        return out
    conv = conversation_examples(row.id, parsed, row.feedback, system_prompt, split=part, min_messages=min_messages)
    out.skip_reason, out.too_short, out.feedback_problems = conv.skip_reason, conv.too_short, conv.feedback_problems
    encoder = _Encoder()
    out.lines = [(part, *encoder.line(e)) for e in conv.examples]
    out.lines += [("preferences", *encoder.line(p)) for p in conv.preferences]
    return out


def convert_chunk(chunk: Chunk) -> list[Converted]:
    return [convert_row(row, chunk.system_prompt, chunk.split, chunk.min_messages) for row in chunk.rows]


def chunked(rows: Iterable[ConversationRow], system_prompt: str, split: tuple[int, int, int], min_messages: int) -> Iterator[Chunk]:
    batch: list[ConversationRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) == CHUNK_ROWS:
            yield Chunk(batch, system_prompt, split, min_messages)
            batch = []
    if batch:
        yield Chunk(batch, system_prompt, split, min_messages)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, in order, with at most 2 items per worker in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ProcessPoolExecutor(workers, mp_context=_CONTEXT)
    try:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
