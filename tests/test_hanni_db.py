"""Hanni's database: read-only snapshots, clear errors, and marking feedback exported exactly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nightlora.demo.database import write_hanni_db
from nightlora.errors import ExportError, SourceError
from nightlora.sources.hanni.db import (
    SeenFeedback,
    mark_exported,
    mark_exported_from_manifest,
    open_snapshot,
    seen_feedback,
)

CONV = json.dumps([["user", "Hi"], ["assistant", "Hello"]])


def make_db(path: Path, exported: list[int], journal_mode: str | None = None) -> Path:
    """One conversation with one feedback row per entry of ``exported`` (ids 1..n)."""
    write_hanni_db(
        path,
        [(1, "2025-01-01T00:00:00", None, None, 2, CONV)],
        [(1, i, 1, "t", flag) for i, flag in enumerate(exported)],
        journal_mode=journal_mode,
    )
    return path


def exported_flags(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT exported FROM message_feedback ORDER BY id")]


def add_feedback(path: Path, conversation_id: int, index: int, exported: int = 0) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO message_feedback (conversation_id, message_index, rating, created_at, exported) VALUES (?, ?, 1, 't', ?)",
            (conversation_id, index, exported),
        )


def test_missing_file_is_a_one_line_source_error(tmp_path: Path):
    with pytest.raises(SourceError, match="not found"):
        with open_snapshot(tmp_path / "nope.db"):
            pass


def test_a_file_that_is_not_a_database(tmp_path: Path):
    (tmp_path / "x.db").write_text("hello")
    with pytest.raises(SourceError, match="not a database"):
        with open_snapshot(tmp_path / "x.db"):
            pass


def test_a_database_without_hanni_tables(tmp_path: Path):
    sqlite3.connect(tmp_path / "x.db").execute("CREATE TABLE other (id)").connection.close()
    with pytest.raises(SourceError, match="not a Hanni database .no conversations table"):
        with open_snapshot(tmp_path / "x.db"):
            pass
    with sqlite3.connect(tmp_path / "y.db") as conn:
        conn.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY, started_at TEXT, messages TEXT)")
        conn.execute("CREATE TABLE message_feedback (id INTEGER PRIMARY KEY, rating INTEGER)")
    with pytest.raises(SourceError, match="message_feedback lacks conversation_id, message_index") as e:
        with open_snapshot(tmp_path / "y.db"):
            pass
    assert "\n" not in str(e.value)


def test_snapshot_connection_cannot_write(tmp_path: Path):
    db = make_db(tmp_path / "h.db", [0])
    with pytest.raises(SourceError, match="readonly|read-only|query_only"):
        with open_snapshot(db) as conn:
            conn.execute("UPDATE message_feedback SET exported = 1")
    assert exported_flags(db) == [0]


def test_snapshot_does_not_see_writes_committed_after_it_began_in_wal_mode(tmp_path: Path):
    db = make_db(tmp_path / "h.db", [0, 0], journal_mode="wal")
    with open_snapshot(db) as conn:
        before = seen_feedback(conn)
        add_feedback(db, 1, 5)  # the app goes on writing: WAL lets it
        assert seen_feedback(conn) == before
        assert conn.execute("SELECT COUNT(*) FROM message_feedback").fetchone()[0] == 2
    with open_snapshot(db) as conn:
        assert seen_feedback(conn).count == 3


def test_in_rollback_journal_mode_the_apps_commit_waits_for_the_snapshot(tmp_path: Path):
    db = make_db(tmp_path / "h.db", [0])
    with open_snapshot(db):
        writer = sqlite3.connect(db, timeout=0.1)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            writer.execute("INSERT INTO message_feedback (conversation_id, message_index, rating) VALUES (1, 9, 1)")
            writer.commit()
        writer.close()
    add_feedback(db, 1, 9)  # and succeeds once the snapshot ends


def test_seen_feedback_is_compact_ranges_of_unexported_ids(tmp_path: Path):
    db = make_db(tmp_path / "h.db", [0, 0, 1, 0, 1, 1, 0, 0])
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM message_feedback WHERE id = 8")  # gone before the snapshot: not seen
    with open_snapshot(db) as conn:
        seen = seen_feedback(conn)
    assert seen == SeenFeedback(high_water=7, ranges=((1, 2), (4, 4), (7, 7)), count=4)
    assert SeenFeedback.from_dict(json.loads(json.dumps(seen.to_dict()))) == seen


def test_mark_exported_marks_exactly_the_seen_rows_once(tmp_path: Path):
    db = make_db(tmp_path / "h.db", [0, 0, 1, 0, 1, 1, 0, 0])
    with open_snapshot(db) as conn:
        seen = seen_feedback(conn)
    add_feedback(db, 1, 20)  # arrives while the job runs
    assert mark_exported(db, seen) == 5
    assert exported_flags(db) == [1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert mark_exported(db, seen) == 0  # idempotent


def test_mark_exported_accepts_plain_ranges(tmp_path: Path):
    db = make_db(tmp_path / "h.db", [0, 0, 0])
    assert mark_exported(db, [(2, 3)]) == 2
    assert exported_flags(db) == [0, 1, 1]


def test_mark_exported_refuses_a_record_from_another_database(tmp_path: Path):
    db = make_db(tmp_path / "h.db", [0, 0])
    with pytest.raises(ExportError, match="wrong database"):
        mark_exported(db, SeenFeedback(high_water=50, ranges=((1, 50),), count=50))
    assert exported_flags(db) == [0, 0]
    with pytest.raises(SourceError, match="not found"):
        mark_exported(tmp_path / "nope.db", [(1, 1)])


def test_mark_exported_from_a_bad_manifest_is_an_export_error(tmp_path: Path):
    db = make_db(tmp_path / "h.db", [0])
    with pytest.raises(ExportError, match="cannot read manifest"):
        mark_exported_from_manifest(db, tmp_path / "missing.json")
    (tmp_path / "m.json").write_text('{"feedback": {"seen": {"high_water": 1, "ranges": [[3, 1]], "count": 1}}}')
    with pytest.raises(ExportError, match="not an export manifest"):
        mark_exported_from_manifest(db, tmp_path / "m.json")
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(ExportError, match="not an export manifest"):
        mark_exported_from_manifest(db, tmp_path / "m.json")


def test_seen_ranges_break_at_ids_that_do_not_exist(tmp_path: Path):
    """A device sync can insert a row into a gap of ids already seen: no range may cover it."""
    db = make_db(tmp_path / "h.db", [0, 0, 0, 0])
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM message_feedback WHERE id = 3")
    with open_snapshot(db) as conn:
        seen = seen_feedback(conn)
    assert seen.ranges == ((1, 2), (4, 4)) and seen.count == 3
    with sqlite3.connect(db) as conn:  # the sync fills the gap after the export
        conn.execute("INSERT INTO message_feedback (id, conversation_id, message_index, rating, created_at, exported)"
                     " VALUES (3, 1, 30, 1, 't', 0)")
    assert mark_exported(db, seen) == 3
    assert exported_flags(db) == [1, 1, 0, 1]


def test_consumed_feedback_is_left_out_of_counts_and_seen(tmp_path: Path):
    from nightlora.sources.hanni.db import count_feedback

    db = make_db(tmp_path / "h.db", [0, 0, 0, 1])
    with open_snapshot(db) as conn:
        counts = count_feedback(conn, 2, consumed={"2"})
        seen = seen_feedback(conn, consumed={"2"})
    assert (counts.positive, counts.total, counts.due) == (2, 2, True)
    assert seen.ranges == ((1, 1), (3, 3)) and list(seen.iter_keys()) == ["1", "3"]


def test_mark_exported_counts_rows_not_the_apps_trigger_writes(tmp_path: Path):
    """Hanni's own schema updates ``updated_at`` from an AFTER UPDATE trigger: that is not a marked row."""
    db = make_db(tmp_path / "h.db", [0, 0, 0])
    with sqlite3.connect(db) as conn:
        conn.executescript("""
            ALTER TABLE message_feedback ADD COLUMN updated_at TEXT;
            CREATE TRIGGER feedback_touch AFTER UPDATE ON message_feedback BEGIN
                UPDATE message_feedback SET updated_at = 'now' WHERE id = NEW.id AND updated_at IS NOT 'now';
            END;""")
    assert mark_exported(db, [(1, 3)]) == 3
