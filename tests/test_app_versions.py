"""hanni.db from newer and older app versions: extra columns and tables, flywheel_cycles missing,
the exported flag missing, and the app writing (WAL) while a night reads.  What is there is read,
what is missing is said, and the app's schema is never altered beyond creating flywheel_cycles."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nightlora.dataset.manifest import read_seen
from nightlora.demo.database import build_demo_db
from nightlora.errors import SourceError
from nightlora.sources.hanni import db as hanni_db
from nightlora.sources.hanni.cycles import HanniCycles
from nightlora.sources.hanni.source import export_db

NIGHTLORA = [sys.executable, "-m", "nightlora"]


def schema(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def newer_app(db: Path) -> None:
    """What a later Hanni could add: columns in every table nightlora reads, tables it does not know."""
    build_demo_db(db, conversations=24)
    with sqlite3.connect(db) as conn:
        for table, column in (("conversations", "embedding BLOB"), ("conversations", "pinned INTEGER DEFAULT 0"),
                              ("message_feedback", "comment TEXT"), ("message_feedback", "device_id TEXT"),
                              ("flywheel_cycles", "gpu TEXT")):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        conn.execute("CREATE TABLE memories (id INTEGER PRIMARY KEY, fact TEXT NOT NULL)")
        conn.execute("UPDATE message_feedback SET comment = 'nice', device_id = 'mac-2' WHERE id % 2 = 0")


def test_a_newer_apps_database_is_read_marked_and_recorded_without_touching_its_schema(tmp_path: Path) -> None:
    db = tmp_path / "hanni.db"
    newer_app(db)
    before = schema(db)
    counts = hanni_db.feedback_counts(db, 1)
    result = export_db(db, tmp_path / "out", None, min_messages=2)
    assert counts.total > 10 and result.counts["train"] > 0
    assert hanni_db.mark_exported(db, read_seen(tmp_path / "out" / "manifest.json")) > 0
    cycles = HanniCycles(db)
    cycle = cycles.start()
    assert cycle is not None and cycles.finish(cycle, "completed", train_pairs=3)
    assert schema(db) == before


def test_flywheel_cycles_missing_is_the_one_table_created(tmp_path: Path) -> None:
    db = tmp_path / "hanni.db"
    build_demo_db(db, conversations=20)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE flywheel_cycles")  # an app version before the flywheel
    before = schema(db)
    export_db(db, tmp_path / "out", None, min_messages=2)
    assert schema(db) == before  # reading creates nothing
    cycles = HanniCycles(db)
    assert cycles.finish(cycles.start(), "completed")
    after = schema(db)
    assert set(after) - set(before) == {"flywheel_cycles"} and {k: after[k] for k in before} == before


@pytest.mark.slow
def test_without_the_exported_flag_a_night_reads_learns_and_says_what_is_missing(tmp_path: Path,
                                                                                  tiny_model_dir: Path) -> None:
    data = tmp_path / "hanni"
    db = data / "hanni.db"
    build_demo_db(db, conversations=24)
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE message_feedback DROP COLUMN exported")  # an app version before it
    before = schema(db)
    cfg = tmp_path / "nightlora.toml"
    cfg.write_text(f'[source]\ndata_dir = {json.dumps(str(data))}\n[train]\nmodel = {json.dumps(str(tiny_model_dir))}\n'
                   'backend = "torch"\niters = 2\nbatch_size = 4\nmax_seq_length = 256\n[eval]\ngate = false\n'
                   '[target]\nkind = "none"\n')
    env_cmd = [*NIGHTLORA, "-c", str(cfg)]
    check = subprocess.run([*env_cmd, "check", "--json"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    total = json.loads(check.stdout)["total"]
    assert total > 10  # every rating counts as new: there is no flag saying otherwise

    run = subprocess.run([*env_cmd, "run"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (data / "nightlora" / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed"
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert manifest["cases"][hanni_db.NO_EXPORTED_COLUMN] > 0  # said in the manifest
    assert "no message_feedback.exported column" in (run_dir / "run.log").read_text()  # and in the run's log
    assert schema(db) == before  # no column added to the app's table

    # nightlora's own record of what was used holds: the next night has nothing new
    again = subprocess.run([*env_cmd, "check", "--json"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["total"] == 0, again.stdout
    with pytest.raises(SourceError, match="no message_feedback.exported column"):
        hanni_db.mark_exported(db, read_seen(run_dir / "data" / "manifest.json"))


WRITER = textwrap.dedent("""
    import json, sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    print("ready", flush=True)
    n = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute("INSERT INTO conversations (started_at, messages) VALUES ('2026-01-01T00:00:00', ?)",
                           (json.dumps([{"role": "user", "content": f"live {n}"}, {"role": "assistant", "content": "ok"}]),))
        conn.execute("INSERT INTO message_feedback (conversation_id, message_index, rating, created_at) VALUES (?, 1, 1, 't')",
                     (cur.lastrowid,))
        conn.execute("COMMIT")
        n += 1
        time.sleep(0.002)
""")


def test_the_app_writing_in_wal_mode_while_a_night_reads(tmp_path: Path) -> None:
    db = tmp_path / "hanni.db"
    build_demo_db(db, conversations=30)
    orphans = export_db(db, tmp_path / "before", None, min_messages=2).manifest["feedback"]["orphans"]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        seen_totals = []
        for i in range(4):
            result = export_db(db, tmp_path / f"out{i}", None, min_messages=2)
            m = result.manifest
            # one snapshot: the conversations read and the feedback seen describe the same moment
            assert m["feedback"]["seen"]["count"] >= m["conversations"]["total"] - 30
            assert m["feedback"]["orphans"] == orphans  # a live row's feedback is never seen without its conversation
            seen_totals.append(m["conversations"]["total"])
        assert writer.poll() is None, writer.stderr.read()  # the app never failed on our reads
        assert seen_totals == sorted(seen_totals) and seen_totals[-1] > seen_totals[0]  # it kept writing
    finally:
        writer.kill()
        writer.wait(timeout=10)
