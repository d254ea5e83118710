"""Hanni's SQLite database: its schema contract, read-only snapshots, and the one write we make.

The app may be writing while we read.  Every read goes through ``open_snapshot``:
a read-only connection with a busy timeout inside one read transaction, so the
feedback counts, the exported rows and the feedback high-water mark all describe
the same moment.  In WAL mode the app keeps writing meanwhile; in rollback-journal
mode its commits wait (up to its own busy timeout) until the snapshot ends.

``mark_exported`` is the only function in the data stage that writes to hanni.db.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from nightlora.errors import ExportError, SourceError

BUSY_TIMEOUT_S = 5.0

# The app's schema (its contract with us: we read it, we never change it).
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    started_at TEXT,
    ended_at TEXT,
    summary TEXT,
    message_count INTEGER,
    messages TEXT
);
CREATE TABLE IF NOT EXISTS message_feedback (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER,
    message_index INTEGER,
    rating INTEGER,
    created_at TEXT,
    exported INTEGER DEFAULT 0,
    UNIQUE(conversation_id, message_index)
);
CREATE TABLE IF NOT EXISTS flywheel_cycles (
    id INTEGER PRIMARY KEY,
    started_at TEXT,
    finished_at TEXT,
    status TEXT,
    train_pairs INTEGER,
    eval_score REAL,
    notes TEXT,
    adapter_path TEXT
);
"""

# What the export reads; flywheel_cycles belongs to a later stage and is not required here.
REQUIRED_COLUMNS = {
    "conversations": {"id", "started_at", "messages"},
    "message_feedback": {"id", "conversation_id", "message_index", "rating", "exported"},
}

# The app's default is 0; a NULL written by hand still means "not exported yet".
UNEXPORTED = "COALESCE(exported, 0) = 0"


def _ro_uri(path: Path) -> str:
    return path.absolute().as_uri() + "?mode=ro"


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    for table, needed in REQUIRED_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise SourceError(f"{path} is not a Hanni database (no {table} table)")
        missing = sorted(needed - have)
        if missing:
            raise SourceError(f"{path} is not a Hanni database ({table} lacks {', '.join(missing)})")


@contextlib.contextmanager
def open_snapshot(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction: every query sees the same snapshot."""
    path = Path(db_path)
    if not path.is_file():
        raise SourceError(f"Hanni database not found: {path}")
    try:
        conn = sqlite3.connect(_ro_uri(path), uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise SourceError(f"cannot open {path}: {e}") from None
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
        # A deferred transaction takes its snapshot at the first read: read now, before anything else.
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        _check_schema(conn, path)
        yield conn
    except sqlite3.Error as e:
        raise SourceError(f"cannot read {path}: {e}") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


def feedback_high_water(conn: sqlite3.Connection) -> int | None:
    """The largest feedback id in the snapshot (None when there is no feedback at all)."""
    return conn.execute("SELECT MAX(id) FROM message_feedback").fetchone()[0]


@dataclass(frozen=True)
class SeenFeedback:
    """The feedback rows an export saw unexported, as inclusive id ranges.

    A range never spans a row that was already exported at the snapshot, so marking
    ``id BETWEEN lo AND hi AND exported = 0`` later touches exactly these rows; rows the
    app adds meanwhile get ids above ``high_water`` and stay unexported.
    """

    high_water: int | None
    ranges: tuple[tuple[int, int], ...]
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"high_water": self.high_water, "count": self.count, "ranges": [list(r) for r in self.ranges]}

    @classmethod
    def from_dict(cls, d: Any) -> SeenFeedback:
        try:
            hw = d["high_water"]
            ranges = tuple((int(lo), int(hi)) for lo, hi in d["ranges"])
            count = int(d["count"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("not a seen-feedback record (high_water, count, ranges)") from None
        if hw is not None and not isinstance(hw, int):
            raise ValueError("high_water must be an integer or null")
        if any(lo > hi or (hw is not None and hi > hw) for lo, hi in ranges):
            raise ValueError("ranges must be ordered pairs up to high_water")
        return cls(hw, ranges, count)


def seen_feedback(conn: sqlite3.Connection) -> SeenFeedback:
    """The unexported feedback rows of the snapshot, compressed to id ranges (streamed, not loaded)."""
    high_water = feedback_high_water(conn)
    ranges: list[tuple[int, int]] = []
    count = 0
    lo = hi = None
    for fid, unexported in conn.execute(f"SELECT id, {UNEXPORTED} FROM message_feedback ORDER BY id"):
        if unexported:
            count += 1
            if lo is None:
                lo = fid
            hi = fid
        elif lo is not None:
            ranges.append((lo, hi))
            lo = None
    if lo is not None:
        ranges.append((lo, hi))
    return SeenFeedback(high_water, tuple(ranges), count)


@dataclass(frozen=True)
class ConversationRow:
    id: int
    # The raw column, as bytes: decoding is the exporter's job, so bad UTF-8 is a skipped row, not a crash.
    messages: bytes | None
    feedback: dict[Any, Any]  # message_index -> rating, every feedback row of the conversation
    rated: bool


def iter_conversations(conn: sqlite3.Connection) -> Iterator[ConversationRow]:
    """Every conversation, rated ones (any 1 or -1) first, then oldest first, streamed.

    The sort runs over ids only; each row's messages are then fetched by primary key,
    so SQLite's sorter never copies the message texts.
    """
    order = conn.execute(
        "SELECT c.id, EXISTS (SELECT 1 FROM message_feedback f"
        " WHERE f.conversation_id = c.id AND f.rating IN (1, -1)) AS rated,"
        " EXISTS (SELECT 1 FROM message_feedback f WHERE f.conversation_id = c.id)"
        " FROM conversations c ORDER BY rated DESC, c.started_at, c.id"
    )
    messages, feedback = conn.cursor(), conn.cursor()  # reused: a cursor per row costs more than the query
    for cid, rated, has_feedback in order:
        (raw,) = messages.execute("SELECT CAST(messages AS BLOB) FROM conversations WHERE id = ?", (cid,)).fetchone()
        ratings = (
            dict(feedback.execute("SELECT message_index, rating FROM message_feedback WHERE conversation_id = ?", (cid,)))
            if has_feedback
            else {}
        )
        yield ConversationRow(cid, raw, ratings, bool(rated))


def orphan_feedback_count(conn: sqlite3.Connection) -> int:
    """Feedback rows whose conversation does not exist (nothing to export them with)."""
    return conn.execute(
        "SELECT COUNT(*) FROM message_feedback WHERE conversation_id NOT IN (SELECT id FROM conversations)"
    ).fetchone()[0]


def mark_exported(db_path: Path, seen: SeenFeedback | Sequence[tuple[int, int]]) -> int:
    """Mark exactly the feedback rows an export saw as exported, in one transaction; return how many.

    ``seen`` is the export's ``SeenFeedback`` (or its id ranges).  Idempotent: rows already
    marked are left alone, so a second call returns 0.
    """
    if isinstance(seen, SeenFeedback):
        ranges, high_water = seen.ranges, seen.high_water
    else:
        ranges = tuple(seen)
        high_water = max((hi for _, hi in ranges), default=None)
    path = Path(db_path)
    if not path.is_file():
        raise SourceError(f"Hanni database not found: {path}")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise SourceError(f"cannot open {path}: {e}") from None
    try:
        _check_schema(conn, path)
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = feedback_high_water(conn)
            if high_water is not None and (current is None or current < high_water):
                raise ExportError(f"the export's feedback (ids up to {high_water}) is not in {path}: wrong database?")
            before = conn.total_changes
            conn.executemany(
                f"UPDATE message_feedback SET exported = 1 WHERE id BETWEEN ? AND ? AND {UNEXPORTED}",
                ranges,
            )
            marked = conn.total_changes - before
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return marked
    except sqlite3.Error as e:
        raise SourceError(f"cannot mark feedback exported in {path}: {e}") from None
    finally:
        conn.close()


def mark_exported_from_manifest(db_path: Path, manifest_path: Path) -> int:
    """``mark_exported`` with the rows recorded in an export's manifest.json."""
    try:
        manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
        seen = SeenFeedback.from_dict(manifest["feedback"]["seen"])
    except OSError as e:
        raise ExportError(f"cannot read manifest {manifest_path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{manifest_path} is not an export manifest: {e}") from None
    return mark_exported(db_path, seen)

