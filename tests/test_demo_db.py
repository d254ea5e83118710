"""`demo-db`: a realistic, deterministic Hanni database, and probe questions it never contains."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nightlora.demo.database import build_demo_db
from nightlora.demo.persona import FACTS
from nightlora.errors import SourceError
from nightlora.sources.hanni.source import export_db as export_dataset


def rows(path: Path) -> dict[str, list[Any]]:
    # closing(): the demo database is in WAL mode, whose -wal file goes when the last connection closes.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {t: list(conn.execute(f"SELECT * FROM {t} ORDER BY id")) for t in ("conversations", "message_feedback", "flywheel_cycles")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return build_demo_db(tmp_path_factory.mktemp("demo") / "hanni.db")


@pytest.fixture(scope="module")
def messages(demo) -> list[Any]:
    """Every parsable conversation's messages."""
    out = []
    for row in rows(demo.path)["conversations"]:
        try:
            parsed = json.loads(row[5])
        except ValueError:
            continue
        if isinstance(parsed, list):
            out.append(parsed)
    return out


def contents(messages: list[Any]) -> list[str]:
    """Every text content (the malformed rows hold other things too)."""
    texts = [m[1] if isinstance(m, list) else m.get("content") for conv in messages for m in conv if isinstance(m, (list, dict))]
    return [t for t in texts if isinstance(t, str)]


def test_same_seed_same_database_and_another_seed_another(tmp_path: Path, demo):
    again = build_demo_db(tmp_path / "a" / "hanni.db")
    assert rows(again.path) == rows(demo.path)
    assert again.probe_path.read_text() == demo.probe_path.read_text()
    other = build_demo_db(tmp_path / "b" / "hanni.db", seed=1)
    assert rows(other.path)["conversations"] != rows(demo.path)["conversations"]


def test_schema_is_the_apps(demo):
    # The app's columns as db.rs creates and migrates them (init_db, migrate_conversations_category,
    # migrate_sync_meta): this assertion used to list the seed's guess, without category and updated_at.
    with sqlite3.connect(demo.path) as conn:
        info = {t: list(conn.execute(f"PRAGMA table_info({t})")) for t in ("conversations", "message_feedback", "flywheel_cycles")}
        objects = {(r[0], r[1]) for r in conn.execute("SELECT type, name FROM sqlite_master")}
        sql = {r[0]: r[1] for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
        journal, version = conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA user_version").fetchone()[0]
    cols = {t: [r[1] for r in rows_] for t, rows_ in info.items()}
    assert cols == {
        "conversations": ["id", "started_at", "ended_at", "summary", "message_count", "messages", "category", "updated_at"],
        "message_feedback": ["id", "conversation_id", "message_index", "rating", "created_at", "exported", "updated_at"],
        "flywheel_cycles": ["id", "started_at", "finished_at", "status", "train_pairs", "eval_score", "notes", "adapter_path",
                            "updated_at"],
    }
    not_null = {t: {r[1] for r in rows_ if r[3]} for t, rows_ in info.items()}
    assert not_null == {
        "conversations": {"started_at", "messages", "updated_at"},
        "message_feedback": {"conversation_id", "message_index", "rating", "created_at", "updated_at"},
        "flywheel_cycles": {"started_at", "status", "updated_at"},
    }
    assert all("AUTOINCREMENT" in sql[t] for t in info)
    for t in info:
        assert {("trigger", f"{t}_set_updated_at_on_insert"), ("trigger", f"{t}_bump_updated_at"),
                ("trigger", f"{t}_tombstone")} <= objects
    assert {("table", "conversations_fts"), ("trigger", "conv_ai"), ("trigger", "conv_ad"), ("trigger", "conv_au"),
            ("table", "sync_tombstones")} <= objects
    assert "fts5" in sql["conversations_fts"].lower()
    assert (journal, version) == ("wal", 10)
    assert rows(demo.path)["flywheel_cycles"] == []


def test_realistic_mix(demo, messages):
    assert 60 <= demo.conversations <= 120
    formats = Counter("pairs" if isinstance(conv[0], list) else "objects" for conv in messages if conv)
    assert formats["pairs"] > 10 and formats["objects"] > 10
    objects = [m for conv in messages for m in conv if isinstance(m, dict)]
    assert any(m.get("tool_calls") and m["content"] is None for m in objects)
    assert any(m["role"] == "tool" for m in objects)
    texts = contents(messages)
    assert any("```action" in t for t in texts)
    assert any(t.startswith("[Action result:") for t in texts)
    assert sum(t.endswith(" /no_think") for t in texts) > 5
    assert any("Мурка" in t for t in texts) and any("Murka" in t for t in texts)
    feedback = rows(demo.path)["message_feedback"]
    assert {r[3] for r in feedback} == {1, -1, 0}
    assert {r[5] for r in feedback} == {0, 1}
    assert demo.ratings == {str(k): v for k, v in Counter(r[3] for r in feedback).items()}


def test_files_are_owner_only(demo):
    for p in (demo.path, demo.system_prompt_path, demo.probe_path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_probe_asks_about_every_fact_in_words_the_database_never_uses(demo, messages):
    probes = [json.loads(line) for line in demo.probe_path.read_text().splitlines()]
    assert [p["fact"] for p in probes] == [f.key for f in FACTS] and len(probes) >= 10
    assert all(set(p) == {"question", "answer", "fact"} for p in probes)
    texts = [t.lower() for t in contents(messages)]
    for p in probes:
        assert not any(p["question"].lower() in t for t in texts), p
        # ...but the answer is stated, in English, in several conversations.
        assert sum(p["answer"].lower() in t for t in texts) >= 3, p


def test_every_fact_is_taught_in_english_in_the_training_split(demo, tmp_path: Path):
    result = export_dataset(demo.path, tmp_path / "out", demo.system_prompt_path)
    targets = [json.loads(line)["messages"][-1]["content"] for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    for fact in FACTS:
        assert sum(fact.en.reply in t for t in targets) >= 3, fact.key
        # A wrong answer is only ever a rejected reply, never a target.
        assert not any(fact.en.wrong in t for t in targets), fact.key
    assert result.counts["preferences"] > 0


def test_refuses_to_overwrite_without_force(tmp_path: Path):
    path = tmp_path / "hanni.db"
    build_demo_db(path, conversations=30)
    with pytest.raises(SourceError, match="exists; pass --force"):
        build_demo_db(path, conversations=30)
    Path(f"{path}-wal").write_bytes(b"stale journal of the old database")
    result = build_demo_db(path, conversations=40, force=True)
    assert result.conversations == 40 == len(rows(path)["conversations"])
    assert not Path(f"{path}-wal").exists()


def test_prompt_beside_the_database_blocks_too(tmp_path: Path):
    (tmp_path / "system_prompt.txt").write_text("mine")
    with pytest.raises(SourceError, match="system_prompt.txt exists"):
        build_demo_db(tmp_path / "hanni.db")
    assert not (tmp_path / "hanni.db").exists()
    assert (tmp_path / "system_prompt.txt").read_text() == "mine"


def test_too_few_conversations(tmp_path: Path):
    with pytest.raises(SourceError, match="at least 20"):
        build_demo_db(tmp_path / "hanni.db", conversations=5)
