"""Hanni's SQLite database: its schema contract, read-only snapshots, and the one write we make.

The app may be writing while we read.  Every read goes through ``open_snapshot``:
a read-only connection with a busy timeout inside one read transaction, so the
feedback counts, the exported rows and the feedback high-water mark all describe
the same moment.  In WAL mode the app keeps writing meanwhile; in rollback-journal
mode its commits wait (up to its own busy timeout) until the snapshot ends.

``mark_exported`` is the only function here that writes to hanni.db (the flywheel_cycles
record is in cycles.py).  Which feedback nightlora consumed is its own record
(state/cursor.py); the snapshot leaves that out as well as what the app marks exported.

A feedback row's key (the cursor's, and what ``mark_exported`` matches) is its id, or
``"id@updated_at"`` where the table has the app's ``updated_at`` (schema.py): the owner sync
can replace a row with another device's row of the same id, which a bare id would take
for one already used.  A bare-id key of an earlier night still covers its row.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, ContextManager, Iterator, Sequence

from nightlora.errors import ExportError, SourceError
from nightlora.sources.base import FeedbackCounts, RangeBuilder, SeenFeedback
from nightlora.sources.readonly import check_columns, read_snapshot

BUSY_TIMEOUT_S = 5.0

# The columns the export reads, without the app's NOT NULLs, triggers and sync columns
# (the app's own schema is schema.py): tests write rows the app's constraints refuse, to see
# the export survive them, and databases of app versions before its sync look like this.
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
# ``exported`` is the app's flag, not needed to read: a database without it (another app version)
# is read with every rating unexported, nightlora's own state recording what was used (has_exported).
REQUIRED_COLUMNS = {
    "conversations": {"id", "started_at", "messages"},
    "message_feedback": {"id", "conversation_id", "message_index", "rating"},
}

# The app's default is 0; a NULL written by hand still means "not exported yet".
UNEXPORTED = "COALESCE(exported, 0) = 0"
NO_EXPORTED_COLUMN = "no_exported_column"  # the manifest's case when the app keeps no such flag
# Hanni's ids are INTEGER PRIMARY KEYs; a copy made by another tool may hold text, NULL or real ids,
# which no id range or key can name: such rows are left out of the gate and of what is seen, and counted.
INTEGER_ID = "typeof(id) = 'integer'"


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    check_columns(conn, path, "a Hanni database", REQUIRED_COLUMNS)


def open_snapshot(db_path: Path) -> ContextManager[sqlite3.Connection]:
    """A read-only connection inside one read transaction: every query sees the same snapshot."""
    return read_snapshot(db_path, "a Hanni database", REQUIRED_COLUMNS)


def feedback_high_water(conn: sqlite3.Connection) -> int | None:
    """The largest feedback id in the snapshot (None when there is no feedback at all)."""
    return conn.execute(f"SELECT MAX(id) FROM message_feedback WHERE {INTEGER_ID}").fetchone()[0]


def bad_id_feedback_count(conn: sqlite3.Connection) -> int:
    """Feedback rows whose id is not an integer (not written by Hanni): never counted, seen or marked."""
    return conn.execute(f"SELECT COUNT(*) FROM message_feedback WHERE NOT {INTEGER_ID}").fetchone()[0]


def has_exported(conn: sqlite3.Connection) -> bool:
    """Whether the feedback table has the app's ``exported`` flag (every app version nightlora knows does)."""
    return any(row[1] == "exported" for row in conn.execute("PRAGMA table_info(message_feedback)"))


def _unexported(conn: sqlite3.Connection) -> str:
    return UNEXPORTED if has_exported(conn) else "1"


def has_updated_at(conn: sqlite3.Connection) -> bool:
    """Whether the feedback table has the app's sync column (app versions since its owner sync)."""
    return any(row[1] == "updated_at" for row in conn.execute("PRAGMA table_info(message_feedback)"))


def feedback_key(fid: int, updated_at: Any) -> str:
    return f"{fid}@{updated_at}" if updated_at is not None else str(fid)


def split_key(key: str) -> tuple[int, str | None]:
    """``"14@2026-05-19T01:02:03.000"`` -> (14, "2026-05-19T01:02:03.000"); ``"14"`` -> (14, None)."""
    fid, sep, updated_at = key.partition("@")
    return int(fid), (updated_at if sep else None)


def _is_consumed(consumed: Collection[str], fid: int, updated_at: Any) -> bool:
    if not consumed:
        return False
    return str(fid) in consumed or (updated_at is not None and feedback_key(fid, updated_at) in consumed)


def _updated_at_column(conn: sqlite3.Connection) -> str:
    return "updated_at" if has_updated_at(conn) else "NULL"


def count_feedback(conn: sqlite3.Connection, min_feedback: int, consumed: Collection[str] = ()) -> FeedbackCounts:
    """The gate's counts, read inside the caller's snapshot: ratings 1 and -1 not yet used."""
    positive = negative = 0
    rows = conn.execute(
        f"SELECT id, rating, {_updated_at_column(conn)} FROM message_feedback"
        f" WHERE {_unexported(conn)} AND rating IN (1, -1) AND {INTEGER_ID}"
    )
    for fid, rating, updated_at in rows:
        if _is_consumed(consumed, fid, updated_at):
            continue
        if rating == 1:
            positive += 1
        else:
            negative += 1
    total = positive + negative
    return FeedbackCounts(positive, negative, total, min_feedback, total >= min_feedback, feedback_high_water(conn))


def feedback_counts(db_path: Path, min_feedback: int, consumed: Collection[str] = ()) -> FeedbackCounts:
    with open_snapshot(db_path) as conn:
        return count_feedback(conn, min_feedback, consumed)


def seen_feedback(conn: sqlite3.Connection, consumed: Collection[str] = ()) -> SeenFeedback:
    """The unexported, unconsumed feedback rows of the snapshot (streamed, not loaded).

    As exact id ranges, or, where rows have ``updated_at``, as one ``id@updated_at`` key each:
    marking then touches a row only while it is still the one the export saw.
    """
    high_water = feedback_high_water(conn)
    if has_updated_at(conn):
        keys = [
            feedback_key(fid, updated_at)
            for fid, updated_at in conn.execute(
                f"SELECT id, updated_at FROM message_feedback WHERE {_unexported(conn)} AND {INTEGER_ID} ORDER BY id")
            if not _is_consumed(consumed, fid, updated_at)
        ]
        return SeenFeedback(high_water, (), len(keys), tuple(keys))
    ranges = RangeBuilder()
    for fid, unexported in conn.execute(
            f"SELECT id, {_unexported(conn)} FROM message_feedback WHERE {INTEGER_ID} ORDER BY id"):
        if unexported and not _is_consumed(consumed, fid, None):
            ranges.add(fid)
        else:
            ranges.gap()
    return ranges.result(high_water)


def marked_elsewhere(conn: sqlite3.Connection, consumed: Collection[str] = ()) -> list[str]:
    """Feedback ids marked exported that nightlora never consumed: the app's export button, or its
    old nightly script (com.hanni.nightly-train), took them."""
    if not has_exported(conn):
        return []
    ours = {split_key(k)[0] for k in consumed if k.partition("@")[0].isdigit()}
    return [str(fid) for (fid,) in conn.execute(f"SELECT id FROM message_feedback WHERE exported = 1 AND {INTEGER_ID} ORDER BY id")
            if fid not in ours]


@dataclass(frozen=True)
class ConversationRow:
    id: int
    # The raw column, as bytes: decoding is the exporter's job, so bad UTF-8 is a skipped row, not a crash.
    messages: bytes | None
    feedback: dict[Any, Any]  # message_index -> rating, every feedback row of the conversation
    rated: bool
    rowid: int | None = None


def iter_conversations(conn: sqlite3.Connection) -> Iterator[ConversationRow]:
    """Every conversation, rated ones (any 1 or -1) first, then oldest first, streamed.

    The sort runs over ids only; each row's messages are then fetched by primary key,
    so SQLite's sorter never copies the message texts.
    """
    order = conn.execute(
        "SELECT c.rowid, c.id, EXISTS (SELECT 1 FROM message_feedback f"
        " WHERE f.conversation_id = c.id AND f.rating IN (1, -1)) AS rated,"
        " EXISTS (SELECT 1 FROM message_feedback f WHERE f.conversation_id = c.id)"
        " FROM conversations c ORDER BY rated DESC, c.started_at, c.id, c.rowid"
    )
    messages, feedback = conn.cursor(), conn.cursor()  # reused: a cursor per row costs more than the query
    for rowid, cid, rated, has_feedback in order:
        # By rowid: the same as id in Hanni's own table, and still one row where a copy's ids are NULL or repeated.
        (raw,) = messages.execute("SELECT CAST(messages AS BLOB) FROM conversations WHERE rowid = ?", (rowid,)).fetchone()
        ratings = (
            dict(feedback.execute("SELECT message_index, rating FROM message_feedback WHERE conversation_id = ?", (cid,)))
            if has_feedback
            else {}
        )
        yield ConversationRow(cid, raw, ratings, bool(rated), rowid)


def orphan_feedback_count(conn: sqlite3.Connection) -> int:
    """Feedback rows whose conversation does not exist (nothing to export them with)."""
    return conn.execute(
        "SELECT COUNT(*) FROM message_feedback WHERE conversation_id NOT IN (SELECT id FROM conversations)"
    ).fetchone()[0]


def mark_exported(db_path: Path, seen: SeenFeedback | Sequence[tuple[int, int]]) -> int:
    """Mark exactly the feedback rows an export saw as exported, in one transaction; return how many.

    ``seen`` is the export's ``SeenFeedback`` (or its id ranges).  Idempotent: rows already
    marked are left alone, so a second call returns 0.  A key with ``updated_at`` marks its
    row only if that is still the row's ``updated_at`` (a re-rated or synced row is newer).
    """
    if isinstance(seen, SeenFeedback):
        ranges, keys, high_water = seen.ranges, seen.keys, seen.high_water
    else:
        ranges, keys = tuple(seen), ()
        high_water = max((hi for _, hi in ranges), default=None)
    try:
        pairs = [split_key(k) for k in keys]
    except ValueError:
        raise ExportError("the export's feedback keys are not Hanni feedback ids") from None
    path = Path(db_path)
    if not path.is_file():
        raise SourceError(f"Hanni database not found: {path}")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise SourceError(f"cannot open {path}: {e}") from None
    try:
        _check_schema(conn, path)
        if not has_exported(conn):  # never ALTER the app's table to add it
            raise SourceError(f"{path} has no message_feedback.exported column (another app version): the app's "
                              "own flag cannot be set; nightlora's state records which ratings were used")
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = feedback_high_water(conn)
            if high_water is not None and (current is None or current < high_water):
                raise ExportError(f"the export's feedback (ids up to {high_water}) is not in {path}: wrong database?")
            # rowcount, not total_changes: the app's AFTER UPDATE trigger (updated_at) writes too.
            marked = 0
            if ranges:
                cur = conn.executemany(
                    f"UPDATE message_feedback SET exported = 1 WHERE id BETWEEN ? AND ? AND {UNEXPORTED}", ranges,
                )
                marked += max(cur.rowcount, 0)
            with_time = [(fid, at) for fid, at in pairs if at is not None]
            bare = [(fid,) for fid, at in pairs if at is None]
            if with_time:
                cur = conn.executemany(
                    f"UPDATE message_feedback SET exported = 1 WHERE id = ? AND updated_at = ? AND {UNEXPORTED}",
                    with_time,
                )
                marked += max(cur.rowcount, 0)
            if bare:
                cur = conn.executemany(f"UPDATE message_feedback SET exported = 1 WHERE id = ? AND {UNEXPORTED}", bare)
                marked += max(cur.rowcount, 0)
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
    from nightlora.dataset.manifest import read_seen

    return mark_exported(db_path, read_seen(manifest_path))

