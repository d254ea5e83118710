"""The Hanni source: the app's SQLite database, read from one snapshot.

Hanni stores each conversation as one JSON array of messages (two formats over its
history, messages.py) and each rating as a row of ``message_feedback`` pointing at a
message index; it shows which ratings were used by an ``exported`` flag, which
``mark_consumed`` sets.  The app's own run history is its ``flywheel_cycles`` table
(cycles.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Mapping

from nightlora.dataset.examples import ConversationExport
from nightlora.dataset.examples import conversation_examples as _examples
from nightlora.dataset.messages import BadConversation, Message
from nightlora.dataset.system_prompt import SystemPrompt, load_system_prompt
from nightlora.paths import PROBE
from nightlora.sources.base import Conversation, FeedbackCounts, SeenFeedback
from nightlora.sources.hanni import db
from nightlora.sources.hanni.config import HanniSourceConfig
from nightlora.sources.hanni.cycles import HanniCycles
from nightlora.sources.hanni.messages import normalize_messages, parse_messages, proactive_turns

if TYPE_CHECKING:
    from nightlora.dataset.writer import ExportResult


def _proactive_rules(parsed: Any, messages: list[Message], proactive_targets: bool) -> dict[str, Any]:
    """Proactive turns are never a chosen reply; unless the config says so, context only."""
    reasons = proactive_turns(parsed, messages)
    return {"context_only": {} if proactive_targets else reasons, "unprompted": frozenset(reasons)}


def read_conversation(row: db.ConversationRow, proactive_targets: bool = False) -> Conversation:
    """A stored row as the dataset rules take it (or the reason it cannot be read)."""
    if not isinstance(row.id, int) or isinstance(row.id, bool):
        # Not Hanni's INTEGER PRIMARY KEY (a copy by another tool): named by its row in the manifest.
        label = row.id if isinstance(row.id, str) else f"rowid {row.rowid}"
        return Conversation(label, rated=row.rated, skip_reason="bad_conversation_id")
    try:
        parsed = parse_messages(row.messages)
        messages = normalize_messages(parsed)
    except BadConversation as e:
        return Conversation(row.id, ratings=row.feedback, rated=row.rated, skip_reason=e.reason)
    return Conversation(row.id, messages, row.feedback, row.rated, **_proactive_rules(parsed, messages, proactive_targets))


def conversation_examples(conversation_id: int, stored: Any, feedback: Mapping[Any, Any], system_prompt: str,
                          *, proactive_targets: bool = False, **kw: Any) -> ConversationExport:
    """The dataset rules on one conversation as Hanni stores it (``stored``: the parsed column)."""
    try:
        messages = normalize_messages(stored)
    except BadConversation as e:
        return ConversationExport(skip_reason=e.reason)
    return _examples(conversation_id, messages, feedback, system_prompt,
                     **_proactive_rules(stored, messages, proactive_targets), **kw)


class HanniSnapshot:
    def __init__(self, conn: sqlite3.Connection, consumed: Collection[str], proactive_targets: bool = False):
        self.conn = conn
        self.consumed = consumed
        self.proactive_targets = proactive_targets

    def counts(self, min_feedback: int) -> FeedbackCounts:
        return db.count_feedback(self.conn, min_feedback, self.consumed)

    def seen(self) -> SeenFeedback:
        return db.seen_feedback(self.conn, self.consumed)

    def orphans(self) -> int:
        return db.orphan_feedback_count(self.conn)

    def conversations(self) -> Iterator[Conversation]:
        for row in db.iter_conversations(self.conn):
            yield read_conversation(row, self.proactive_targets)

    def marked_elsewhere(self) -> list[str]:
        return db.marked_elsewhere(self.conn, self.consumed)

    def cases(self) -> Mapping[str, int]:
        # Hanni's feedback problems are the dataset rules' own (feedback_* under skipped), but for
        # rows whose id is not an integer, which no night can count, mark or consume.
        cases = {}
        bad = db.bad_id_feedback_count(self.conn)
        if bad:
            cases["feedback_bad_id"] = bad
        if not db.has_exported(self.conn):  # said in the manifest: the app's flag cannot be read or set
            cases[db.NO_EXPORTED_COLUMN] = self.conn.execute("SELECT COUNT(*) FROM message_feedback").fetchone()[0]
        return cases


class HanniSource:
    kind = "hanni"

    def __init__(self, cfg: HanniSourceConfig):
        self.cfg = cfg
        self.db_path = cfg.db_path
        self.history_window = cfg.history_window

    @property
    def key(self) -> str:
        return f"hanni:{self.db_path.expanduser().absolute()}"

    @property
    def location(self) -> str:
        return str(self.db_path.absolute())

    @property
    def system_prompt_path(self) -> Path:
        return self.cfg.system_prompt_path

    @property
    def probe_path(self) -> Path:
        return self.db_path.parent / PROBE

    def system_prompt(self) -> tuple[SystemPrompt, list[str]]:
        return load_system_prompt(self.system_prompt_path)

    @contextlib.contextmanager
    def snapshot(self, consumed: Collection[str] = frozenset()) -> Iterator[HanniSnapshot]:
        with db.open_snapshot(self.db_path) as conn:
            yield HanniSnapshot(conn, consumed, self.cfg.proactive_targets)

    def mark_consumed(self, seen: SeenFeedback) -> int:
        # The app reads its `exported` flag (its Flywheel screen, its own exporter): keep it true.
        return db.mark_exported(self.db_path, seen)

    def app_recorder(self, log: Callable[[str], None] | None = None) -> HanniCycles | None:
        return HanniCycles(self.db_path, log=log) if self.db_path.is_file() else None


def export_db(db_path: Path, out_dir: Path, system_prompt_path: Path | None, *,
              source_settings: Mapping[str, Any] | None = None, **kw: Any) -> "ExportResult":
    """``export_dataset`` on a Hanni database file given by path (the tests and benchmarks use it)."""
    from nightlora.dataset.writer import export_dataset

    source = HanniSource(HanniSourceConfig(db=Path(db_path).absolute(), **(source_settings or {})))
    prompt, warnings = load_system_prompt(system_prompt_path)
    return export_dataset(source, out_dir, prompt, warnings=warnings, **kw)
