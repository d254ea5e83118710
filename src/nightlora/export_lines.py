"""One stored conversation -> the JSON lines it adds to the dataset.

Every line is byte-identical to ``json.dumps(record, ensure_ascii=False,
separators=(",", ":")) + "\\n"`` (tests/test_export_lines.py holds it to that), but
encoding is most of an export's work, so it is built from parts: a conversation's records
repeat its context, so each message is encoded once and a record's message list reuses the
bytes of the longest list encoded before it; examples' meta comes from a template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # the C one, non-ASCII kept
from operator import is_
from typing import Any

from nightlora.export_dedupe import digest_of
from nightlora.export_examples import conversation_examples
from nightlora.export_messages import ROLES, BadConversation, Message, parse_messages
from nightlora.export_split import split_of
from nightlora.hanni_db import ConversationRow

# One encoder for everything else: json.dumps with options builds a new one per call.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# The record fields that hold chat messages (examples: messages; preferences: the rest).
_MESSAGE_LISTS = frozenset({"messages", "prompt", "chosen", "rejected"})

# An example's meta, in the order export_examples builds it; other metas take the generic path.
_EXAMPLE_META = ("conversation_id", "message_index", "rating", "source", "split", "tool_call")

_ROLE_CONTENT = {role: f'{{"role":{encode_basestring(role)},"content":'.encode() for role in ROLES}


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


def _message_json(m: Message) -> bytes:
    if len(m) == 2:  # {"role", "content"}, in that order: nearly every message
        return _ROLE_CONTENT[m["role"]] + encode_basestring(m["content"]).encode() + b"}"
    return _dumps(m).encode()


def _scalar_json(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if type(v) is int:
        return str(v)
    if type(v) is str:
        return encode_basestring(v)
    return _dumps(v)


def _meta_json(meta: dict[str, Any]) -> bytes:
    if tuple(meta) == _EXAMPLE_META and type(meta["conversation_id"]) is type(meta["message_index"]) is int:
        # A generic encoding costs five times this, once per example.
        return (
            f'{{"conversation_id":{meta["conversation_id"]},"message_index":{meta["message_index"]},'
            f'"rating":{_scalar_json(meta["rating"])},"source":{encode_basestring(meta["source"])},'
            f'"split":{encode_basestring(meta["split"])},"tool_call":{_scalar_json(meta["tool_call"])}}}'
        ).encode()
    return ("{" + ",".join([f"{encode_basestring(k)}:{_scalar_json(v)}" for k, v in meta.items()]) + "}").encode()


class _Encoder:
    """JSON lines for one conversation's records, in the order export_examples makes them.

    Each record's context is the previous record's messages and a few more, as the same
    objects: ``_longest`` is the longest message list encoded so far and ``_longest_json``
    its bytes without the closing bracket, which a list starting with it extends.
    """

    def __init__(self) -> None:
        self._longest: list[Message] = []
        self._longest_json = b"["
        # export_examples shares one tools list between the examples that have the same tools.
        self._tools: list[dict[str, Any]] | None = None
        self._tools_json = b""

    def _messages(self, messages: list[Message]) -> bytes:
        known = self._longest
        if known and len(messages) > len(known) and all(map(is_, known, messages)):
            head = self._longest_json + b"," + b",".join(map(_message_json, messages[len(known) :]))
        else:
            head = b"[" + b",".join(map(_message_json, messages))
        if len(messages) > len(known):
            self._longest, self._longest_json = messages, head
        return head + b"]"

    def _field(self, key: str, value: Any) -> bytes:
        if key in _MESSAGE_LISTS and value is not None:
            encoded = self._messages(value)
        elif key == "tools":
            if value is not self._tools:
                self._tools, self._tools_json = value, _dumps(value).encode()
            encoded = self._tools_json
        else:
            encoded = _dumps(value).encode()
        return encode_basestring(key).encode() + b":" + encoded

    def line(self, record: dict[str, Any]) -> tuple[bytes, bytes]:
        """(digest of the record without its meta, the record as one JSON line)."""
        body = b"{" + b",".join([self._field(key, value) for key, value in record.items() if key != "meta"])
        return digest_of(body), body + b',"meta":' + _meta_json(record["meta"]) + b"}\n"


def convert_row(row: ConversationRow, system_prompt: str, split: tuple[int, int, int], min_messages: int) -> Converted:
    out = Converted(row.id, row.rated)
    try:
        parsed = parse_messages(row.messages)
    except BadConversation as e:
        out.skip_reason = e.reason
        return out
    part = split_of(row.id, split)
    conv = conversation_examples(row.id, parsed, row.feedback, system_prompt, split=part, min_messages=min_messages)
    out.skip_reason, out.too_short, out.feedback_problems = conv.skip_reason, conv.too_short, conv.feedback_problems
    encoder = _Encoder()
    out.lines = [(part, *encoder.line(e)) for e in conv.examples]
    out.lines += [("preferences", *encoder.line(p)) for p in conv.preferences]
    return out
