"""What a source of feedback gives nightlora: one read snapshot of the app's data.

A source (``[source] kind = ...``, sources/registry.py) reads an app's own store --
Hanni's SQLite file, Open WebUI's -- and never writes to it except through
``mark_consumed`` (Hanni's app shows an ``exported`` flag).  Inside one snapshot:

* ``counts``: the gate's numbers, over feedback nightlora has not consumed yet;
* ``seen``: exactly that feedback, compactly, for the manifest and the commit stage;
* ``conversations``: every conversation, normalized to OpenAI chat messages
  (dataset/messages.py) with its ratings by message index, rated ones first.

Which feedback is consumed is nightlora's own record (state/cursor.py), advanced
only when a night's adapter went live; the snapshot takes it as ``consumed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Mapping, Protocol

from nightlora.dataset.messages import Message
from nightlora.state.db import AppRecorder

if TYPE_CHECKING:
    from nightlora.dataset.system_prompt import SystemPrompt


@dataclass(frozen=True)
class FeedbackCounts:
    positive: int
    negative: int
    total: int
    min_feedback: int
    due: bool
    high_water: int | str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SeenFeedback:
    """The unconsumed feedback a snapshot held: integer ids as ranges, other ids as keys.

    A range ``(lo, hi)`` stands for every integer from lo to hi, each of which was a
    feedback row seen unconsumed: ranges break at ids that do not exist as well as at
    consumed ones, so a row that appears later (a device sync filling a gap, a re-rating)
    is never covered by them.
    """

    high_water: int | str | None
    ranges: tuple[tuple[int, int], ...]
    count: int
    keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"high_water": self.high_water, "count": self.count,
                             "ranges": [list(r) for r in self.ranges]}
        if self.keys:
            d["keys"] = list(self.keys)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "SeenFeedback":
        try:
            hw = d["high_water"]
            ranges = tuple((int(lo), int(hi)) for lo, hi in d["ranges"])
            count = int(d["count"])
            keys = tuple(str(k) for k in d.get("keys", ()))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("not a seen-feedback record (high_water, count, ranges)") from None
        if hw is not None and not isinstance(hw, (int, str)) or isinstance(hw, bool):
            raise ValueError("high_water must be an integer, a text id or null")
        if any(lo > hi or (isinstance(hw, int) and hi > hw) for lo, hi in ranges):
            raise ValueError("ranges must be ordered pairs up to high_water")
        return cls(hw, ranges, count, keys)

    def iter_keys(self) -> Iterator[str]:
        """Every feedback id seen, as text (the cursor's keys)."""
        for lo, hi in self.ranges:
            for i in range(lo, hi + 1):
                yield str(i)
        yield from self.keys


class RangeBuilder:
    """Builds SeenFeedback ranges from integer ids given in ascending order."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.count = 0
        self._lo: int | None = None
        self._hi: int | None = None

    def add(self, fid: int) -> None:
        self.count += 1
        if self._hi is not None and fid == self._hi + 1:
            self._hi = fid
            return
        self.gap()
        self._lo = self._hi = fid

    def gap(self) -> None:
        if self._lo is not None:
            self.ranges.append((self._lo, self._hi))  # type: ignore[arg-type]
        self._lo = self._hi = None

    def result(self, high_water: int | None) -> SeenFeedback:
        self.gap()
        return SeenFeedback(high_water, tuple(self.ranges), self.count)


@dataclass(frozen=True)
class Conversation:
    """One conversation as the dataset rules take it; ``skip_reason`` set means it cannot be read.

    A source whose app keeps a tree of messages (Open WebUI) hands one linear
    Conversation per path, all with the chat's id and ``split_key``.
    """

    id: int | str
    messages: list[Message] = field(default_factory=list)
    ratings: Mapping[Any, Any] = field(default_factory=dict)  # message index -> rating, as stored
    rated: bool = False
    skip_reason: str | None = None
    # index -> why that turn is context only: never a target, a rejected reply or a chosen one
    # (a proactive message, a reply by another model, a turn already exported on another path)
    context_only: Mapping[int, str] = field(default_factory=dict)
    # turns that answer no user message (the assistant's own initiative): never the chosen reply of another
    unprompted: frozenset[int] = frozenset()
    # a rated-down turn's index -> (a reply the user preferred in the same context, its id): a regenerated sibling
    alternatives: Mapping[int, tuple[Message, str | None]] = field(default_factory=dict)
    # what the split hashes (None: the id), so that every path of one chat lands in one split
    split_key: int | str | None = None
    # index -> the app's own message id, written to each record's meta as message_id
    message_ids: Mapping[int, str] = field(default_factory=dict)
    # the system prompt the app sent with this conversation (None: the source's default one)
    system_prompt: str | None = None


class Snapshot(Protocol):
    def counts(self, min_feedback: int) -> FeedbackCounts: ...
    def seen(self) -> SeenFeedback: ...
    def orphans(self) -> int:
        """Feedback rows whose conversation does not exist."""
    def conversations(self) -> Iterator[Conversation]: ...
    def marked_elsewhere(self) -> list[str]:
        """Feedback ids the app's own record marks as used that nightlora never consumed
        (another exporter took them); [] where the app keeps no such record."""
    def cases(self) -> Mapping[str, int]:
        """Feedback rows the source itself left out or handled specially, by reason (the
        manifest's ``cases`` with the dataset rules' own); complete once conversations() is read."""


class Source(Protocol):
    kind: str
    #: identifies this source's data in nightlora's state (e.g. "hanni:/abs/path/hanni.db")
    key: str
    #: where the data is, for people (a database path)
    location: str
    #: the app's system prompt file, when it has one
    system_prompt_path: Path | None
    #: held-out questions about the user, when the source keeps them
    probe_path: Path | None
    #: the app sends the model only its last N messages: contexts are cut the same way (None: all)
    history_window: int | None

    def system_prompt(self) -> "tuple[SystemPrompt, list[str]]":
        """The prompt examples start with when a conversation brings none of its own (and the
        probe asks with), and warnings about it (e.g. the built-in prompt was used)."""

    def snapshot(self, consumed: frozenset[str] | set[str] = frozenset()) -> ContextManager[Snapshot]:
        """One read snapshot; ``consumed``: feedback ids (as text) nightlora already consumed."""

    def mark_consumed(self, seen: SeenFeedback) -> int:
        """Record in the app's own store that this feedback was used, where it has such a record
        (Hanni's ``exported`` column); how many rows changed, 0 where the app has none."""

    def app_recorder(self, log: Any = None) -> "AppRecorder | None":
        """The app's own run history, when it has one."""
