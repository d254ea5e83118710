"""The state database (migrations, runs) and the row in the app's flywheel_cycles, on real SQLite files."""

from __future__ import annotations

import sqlite3

import pytest

from nightlora.state.migrations import MIGRATIONS, applied, migrate
from nightlora.sources.hanni.cycles import HanniCycles
from nightlora.state.db import RunRecorder, StateDB


def hanni_db(path, *, with_flywheel: bool = True):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY, messages TEXT)")
    if with_flywheel:
        conn.execute("""CREATE TABLE flywheel_cycles (
            id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, finished_at TEXT,
            status TEXT NOT NULL DEFAULT 'running', train_pairs INTEGER DEFAULT 0, eval_score REAL,
            notes TEXT, adapter_path TEXT)""")
        conn.execute("INSERT INTO flywheel_cycles (started_at, status) VALUES ('2025-12-01T03:00:00+01:00', 'completed')")
    conn.commit()
    conn.close()
    return path


def columns(path, table):
    with sqlite3.connect(path) as c:
        return [(r[1], r[2], r[3], r[4]) for r in c.execute(f"PRAGMA table_info({table})")]


def test_migrations_apply_once_in_order(tmp_path):
    db = StateDB.for_state_dir(tmp_path)
    assert applied(db.conn) == [m.__name__ for m in MIGRATIONS] == ["m001_runs", "m002_runs_hanni_cycle", "m003_deploys",
                                                                    "m004_consumed_feedback"]
    assert migrate(db.conn) == []
    db.close()
    assert StateDB(tmp_path / "state.db").path.exists()  # reopening is fine
    names = [c[0] for c in columns(tmp_path / "state.db", "runs")]
    assert names == ["id", "started_at", "finished_at", "status", "stage", "exit_code", "train_pairs", "eval_score",
                     "adapter_version", "run_dir", "notes", "hanni_cycle_id"]


def test_a_new_migration_applies_to_an_old_database_and_a_failing_one_leaves_no_trace(tmp_path):
    conn = sqlite3.connect(tmp_path / "s.db")
    migrate(conn)

    def m004_notes_index(c):
        c.execute("CREATE INDEX runs_status ON runs (status)")

    def m005_broken(c):
        c.execute("CREATE TABLE half (x)")
        raise RuntimeError("bug in a migration")

    assert migrate(conn, MIGRATIONS + [m004_notes_index]) == ["m004_notes_index"]
    with pytest.raises(RuntimeError):
        migrate(conn, MIGRATIONS + [m004_notes_index, m005_broken])
    assert "m005_broken" not in applied(conn)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None


def test_a_run_is_recorded_in_both_databases(tmp_path):
    app = hanni_db(tmp_path / "hanni.db")
    rec = RunRecorder(StateDB.for_state_dir(tmp_path / "state"), HanniCycles(app))
    run = rec.start(run_dir=tmp_path / "runs" / "1")
    assert run.status == "running" and run.hanni_cycle_id == 2 and run.run_dir.endswith("runs/1")
    with sqlite3.connect(app) as c:
        assert c.execute("SELECT status, finished_at FROM flywheel_cycles WHERE id = 2").fetchone() == ("running", None)
    rec.stage(run.id, "train", train_pairs=40)
    done = rec.finish(run.id, "completed", 0, train_pairs=40, eval_score=0.8, adapter_version="v0003",
                      adapter_path="/state/adapters/v0003", notes="v0003 is live")
    assert (done.status, done.exit_code, done.stage, done.adapter_version) == ("completed", 0, "train", "v0003")
    assert done.duration_s is not None and done.duration_s >= 0
    with sqlite3.connect(app) as c:
        row = c.execute("SELECT status, train_pairs, eval_score, notes, adapter_path, finished_at FROM flywheel_cycles "
                        "WHERE id = 2").fetchone()
    assert row[:5] == ("completed", 40, 0.8, "v0003 is live", "/state/adapters/v0003")
    assert row[5] == done.finished_at
    with pytest.raises(ValueError, match="status must be one of"):
        rec.finish(run.id, "great", 0)


def test_the_app_table_is_created_with_the_apps_schema_when_missing(tmp_path):
    app = hanni_db(tmp_path / "hanni.db", with_flywheel=False)
    cycle = HanniCycles(app).start("2026-01-02T03:00:00+01:00")
    assert cycle == 1
    assert columns(app, "flywheel_cycles") == [
        ("id", "INTEGER", 0, None), ("started_at", "TEXT", 1, None), ("finished_at", "TEXT", 0, None),
        ("status", "TEXT", 1, "'running'"), ("train_pairs", "INTEGER", 0, "0"), ("eval_score", "REAL", 0, None),
        ("notes", "TEXT", 0, None), ("adapter_path", "TEXT", 0, None),
    ]


def test_a_database_that_is_not_hannis_is_left_alone(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    rec = RunRecorder(StateDB.for_state_dir(tmp_path), HanniCycles(other))
    run = rec.start()
    assert run.hanni_cycle_id is None
    rec.finish(run.id, "skipped", 0, notes="not enough feedback")
    with sqlite3.connect(other) as c:
        assert c.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert HanniCycles(tmp_path / "missing.db").start() is None
    assert not (tmp_path / "missing.db").exists()


def test_a_locked_app_database_never_breaks_the_run(tmp_path, caplog):
    app = hanni_db(tmp_path / "hanni.db")
    blocker = sqlite3.connect(app, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        rec = RunRecorder(StateDB.for_state_dir(tmp_path), HanniCycles(app, busy_timeout_s=0.2))
        run = rec.start()
        assert run.hanni_cycle_id is None and run.status == "running"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_durations_and_deploys(tmp_path):
    db = StateDB.for_state_dir(tmp_path)
    for start, end, status in [("2026-01-01T03:00:00+00:00", "2026-01-01T03:20:00+00:00", "completed"),
                               ("2026-01-02T03:00:00+00:00", "2026-01-02T03:01:00+00:00", "skipped"),
                               ("2026-01-03T03:00:00+00:00", "2026-01-03T03:30:00+00:00", "rolled_back")]:
        r = db.start_run(started_at=start)
        db.finish_run(r.id, status, 0, finished_at=end)
    db.start_run()  # still running: no duration
    assert db.durations() == [1800.0, 1200.0]
    assert [r.status for r in db.recent_runs(2)] == ["running", "rolled_back"]
    db.record_deploy(3, "deploy", "rolled_back", requested="v0004", live="v0003", detail="v0004 failed")
    (d,) = db.deploys()
    assert (d["run_id"], d["outcome"], d["requested"], d["live"]) == (3, "rolled_back", "v0004", "v0003")
    with pytest.raises(ValueError, match="no updatable column id"):
        db.update_run(1, id=5)


def _cycle(app, cycle_id):
    with sqlite3.connect(app) as c:
        return c.execute("SELECT status, finished_at, notes FROM flywheel_cycles WHERE id = ?", (cycle_id,)).fetchone()


def test_the_app_record_is_made_at_the_end_when_the_start_found_its_database_locked(tmp_path):
    app = hanni_db(tmp_path / "hanni.db")
    rec = RunRecorder(StateDB.for_state_dir(tmp_path / "state"), HanniCycles(app, busy_timeout_s=0.1))
    blocker = sqlite3.connect(app, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    run = rec.start()
    blocker.execute("ROLLBACK")
    blocker.close()
    assert run.hanni_cycle_id is None
    done = rec.finish(run.id, "completed", 0, notes="v0001 is live")
    assert done.hanni_cycle_id is not None
    assert _cycle(app, done.hanni_cycle_id)[:1] == ("completed",)


def test_resync_completes_the_app_records_a_locked_database_left_running(tmp_path):
    app = hanni_db(tmp_path / "hanni.db")
    state = StateDB.for_state_dir(tmp_path / "state")
    rec = RunRecorder(state, HanniCycles(app, busy_timeout_s=0.1))
    ended, running = rec.start(), rec.start()
    blocker = sqlite3.connect(app, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the app writing while the night ends: its row stays 'running'
    rec.finish(ended.id, "completed", 0, notes="v0002 is live", adapter_version="v0002")
    blocker.execute("ROLLBACK")
    blocker.close()
    assert _cycle(app, ended.hanni_cycle_id)[0] == "running"

    repaired = rec.resync_app(state.recent_runs(), lambda r: "/store/current")
    assert repaired == [ended.id]  # the run still running is not ours to finish here
    status, finished_at, notes = _cycle(app, ended.hanni_cycle_id)
    assert (status, notes) == ("completed", "v0002 is live") and finished_at == state.run(ended.id).finished_at
    assert _cycle(app, running.hanni_cycle_id)[0] == "running"
    assert rec.resync_app(state.recent_runs(), lambda r: None) == []  # nothing left: nothing written


def test_a_locked_state_db_is_a_state_error(tmp_path):
    from nightlora.errors import StateError
    from nightlora.state import db as state_db

    StateDB.for_state_dir(tmp_path).close()
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    old, state_db.BUSY_TIMEOUT_S = state_db.BUSY_TIMEOUT_S, 0.1
    try:
        with pytest.raises(StateError, match="database is locked .another process holds it") as e:
            StateDB.for_state_dir(tmp_path)
        assert e.value.exit_code == 14
    finally:
        state_db.BUSY_TIMEOUT_S = old
        blocker.execute("ROLLBACK")
        blocker.close()
