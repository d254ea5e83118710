"""One stored conversation -> the JSON lines it adds to the dataset.

Every line is byte-identical to ``json.dumps(record, ensure_ascii=False,
separators=(",", ":")) + "\\n"`` (tests/test_export_lines.py holds it to that).  json was
the largest cost of an export, so lines are written with orjson, which writes strings,
integers, booleans, null, lists and objects exactly as json.dumps does, several times
faster.  Floats it writes differently (``1e-7`` for ``1e-07``, ``null`` for ``NaN``), and
the only place a record can hold one is a tool call's ``arguments`` stored as an object:
such records, and anything else orjson refuses (integers beyond 64 bits), go through json.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from nightlora.dataset.dedupe import digest_of
from nightlora.dataset.examples import conversation_examples
from nightlora.dataset.split import split_of
from nightlora.paths import PREFERENCES_STEM
from nightlora.sources.base import Conversation

# One encoder for every record json writes: json.dumps with options builds a new one per call.
_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# The record fields that hold chat messages (examples: messages; preferences: the rest).
_MESSAGE_LISTS = ("messages", "prompt", "chosen", "rejected")


@dataclass
class Converted:
    """One conversation's outcome: ``skip_reason`` or ``too_short``, else its lines."""

    id: int | str
    rated: bool
    skip_reason: str | None = None
    too_short: bool = False
    feedback_problems: list[str] = field(default_factory=list)
    # (file stem: a split or "preferences", digest of the line without meta, the line)
    lines: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    cases: Counter[str] = field(default_factory=Counter)


def _stdlib_dumps(value: Any) -> bytes:
    return _json_dumps(value).encode()


def _has_object_arguments(record: dict[str, Any]) -> bool:
    if "tools" not in record:  # a record whose messages call tools always declares them
        return False
    return any(
        not isinstance(call["function"]["arguments"], str)
        for key in _MESSAGE_LISTS
        for msg in record.get(key) or ()
        for call in msg.get("tool_calls", ())
    )


def _encode(record: dict[str, Any], dumps: Callable[[Any], bytes]) -> tuple[bytes, bytes]:
    body = dumps({key: value for key, value in record.items() if key != "meta"})
    return digest_of(body), body[:-1] + b',"meta":' + dumps(record["meta"]) + b"}\n"


def encode_record(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """(digest of the record without its meta, the record as one JSON line, meta last)."""
    if not _has_object_arguments(record):
        try:
            return _encode(record, orjson.dumps)
        except orjson.JSONEncodeError:
            pass
    return _encode(record, _stdlib_dumps)


def convert(conv: Conversation, system_prompt: str, split: tuple[int, int, int], min_messages: int,
            history_window: int | None = None) -> Converted:
    """One source conversation -> its lines (or why it gave none)."""
    out = Converted(conv.id, conv.rated)
    if conv.skip_reason:
        out.skip_reason = conv.skip_reason
        return out
    part = split_of(conv.id if conv.split_key is None else conv.split_key, split)
    prompt = system_prompt if conv.system_prompt is None else conv.system_prompt
    ex = conversation_examples(
        conv.id, conv.messages, conv.ratings, prompt, split=part, min_messages=min_messages,
        context_only=conv.context_only, unprompted=conv.unprompted, alternatives=conv.alternatives,
        message_ids=conv.message_ids, history_window=history_window,
    )
    out.skip_reason, out.too_short, out.feedback_problems = ex.skip_reason, ex.too_short, ex.feedback_problems
    out.cases = ex.cases
    try:
        out.lines = [(part, *encode_record(e)) for e in ex.examples]
        out.lines += [(PREFERENCES_STEM, *encode_record(p)) for p in ex.preferences]
    except (UnicodeEncodeError, RecursionError, ValueError, TypeError):
        # What a source let through that no JSON line can hold (a lone surrogate, nesting past any
        # encoder's limit): the conversation is skipped and counted, never a failed export.
        out.lines, out.skip_reason = [], "unencodable"
    return out
