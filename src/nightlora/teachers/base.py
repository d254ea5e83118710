"""What a teacher is: something that, given what the assistant saw, writes the reply it should give.

A kind (``[teacher] kind = ...``, teachers/registry.py) turns a ``TeacherRequest`` -- the
assistant's system prompt, the conversation up to the turn to answer, the tools it had --
into what goes over the wire (``payload``: a JSON body, an argv), and sends that.  The two
are apart so that `nightlora distill --dry-run` prints exactly what ``send`` would send, and
the requests log records it.  ``send`` raises ``TeacherError`` (errors.py) with a reason
the asking loop acts on (teachers/ask.py); it never retries by itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from nightlora.dataset.messages import Message


@dataclass(frozen=True)
class TeacherRequest:
    system: str
    messages: tuple[Message, ...]   # OpenAI chat messages after the system prompt; the last is the user's
    tools: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"system": self.system, "messages": list(self.messages)}
        if self.tools:
            d["tools"] = list(self.tools)
        return d


@dataclass(frozen=True)
class TeacherReply:
    """What the teacher answered: cached even when it is of no use (empty, a placeholder it made up),
    so that a prompt is asked once; only an answer that is not one (not JSON, an error) is asked again."""

    text: str
    input_tokens: int | None = None   # None: the teacher does not report usage (the claude CLI's text output)
    output_tokens: int | None = None
    truncated: bool = False           # stopped at the reply length limit

    @property
    def tokens(self) -> int:
        return (self.input_tokens or 0) + (self.output_tokens or 0)


class Teacher(Protocol):
    #: the kind's name in teachers/registry.py
    kind: str
    #: the model that answers ("default" when the kind picks it); part of the cache key
    model: str
    #: True only when every request stays on this machine (a loopback base_url)
    loopback: bool

    def payload(self, request: TeacherRequest) -> dict[str, Any]:
        """Exactly what ``send`` sends for ``request``, as JSON-ready data (no API key in it)."""

    def send(self, payload: dict[str, Any]) -> TeacherReply:
        """Send one payload; raises TeacherError (errors.py) when there is no answer (an empty one is one)."""


def teacher_name(teacher: Teacher) -> str:
    return f"{teacher.kind}:{teacher.model}"


def cache_key(teacher: Teacher, request: TeacherRequest) -> str:
    """A hash of (teacher, model, system prompt, context): what was asked, as it was sent."""
    canonical = json.dumps([teacher.kind, teacher.model, request.to_dict()], ensure_ascii=False,
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reported: bool = field(default=False)

    def add(self, reply: TeacherReply) -> None:
        if reply.input_tokens is not None or reply.output_tokens is not None:
            self.reported = True
        self.input_tokens += reply.input_tokens or 0
        self.output_tokens += reply.output_tokens or 0


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429/503 answer's ``Retry-After`` asks us to wait (None: absent, or an HTTP date)."""
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None
