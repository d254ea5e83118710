"""Whole exports from real SQLite files: outputs, manifest, splits, order, and the database left alone."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nightlora.demo.database import DemoResult, build_demo_db, write_hanni_db
from nightlora.errors import ExportError
from nightlora.dataset.system_prompt import FALLBACK_SYSTEM_PROMPT
from nightlora.sources.hanni.source import export_db as export_dataset
from nightlora.dataset.split import split_of
from nightlora.sources.hanni.db import mark_exported_from_manifest

SPLITS = ("train", "valid", "test")


def chat(n_turns: int, tag: str) -> list[list[str]]:
    out = []
    for i in range(n_turns):
        out += [["user", f"{tag} question {i}"], ["assistant", f"{tag} answer {i}"]]
    return out


def make_db(path: Path, convs: dict[int, Any], feedback: list[tuple] = (), started: dict[int, str] | None = None,
            journal_mode: str | None = None) -> Path:
    rows = []
    for cid, messages in convs.items():
        when = (started or {}).get(cid, f"2025-01-01T00:00:{cid % 60:02d}")
        text = messages if isinstance(messages, (str, bytes)) else json.dumps(messages, ensure_ascii=False)
        rows.append((cid, when, when, None, 0, text))
    write_hanni_db(path, rows, [(c, i, r, "t", e) for c, i, r, e in feedback], journal_mode=journal_mode)
    return path


def read_split(out: Path, split: str) -> list[dict[str, Any]]:
    path = out / f"{split}.jsonl"
    # JSON lines end at "\n" only: str.splitlines() would also split at U+2028 inside a string.
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]] if path.exists() else []


def all_examples(out: Path) -> list[dict[str, Any]]:
    return [e for s in SPLITS for e in read_split(out, s)]


def db_state(path: Path) -> tuple[str, list[Any]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = [list(conn.execute(f"SELECT * FROM {t} ORDER BY id")) for t in ("conversations", "message_feedback", "flywheel_cycles")]
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest(), rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return build_demo_db(tmp_path_factory.mktemp("demo") / "hanni.db")


@pytest.fixture(scope="module")
def demo_export(demo: DemoResult, tmp_path_factory: pytest.TempPathFactory):
    before = db_state(demo.path)
    result = export_dataset(demo.path, tmp_path_factory.mktemp("out") / "training", demo.system_prompt_path)
    return result, before


def test_demo_export_writes_every_file_owner_only_with_a_complete_manifest(demo_export):
    result, _ = demo_export
    out = result.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "preferences.jsonl", "test.jsonl", "train.jsonl", "valid.jsonl"]
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    m = json.loads((out / "manifest.json").read_text())
    assert m == result.manifest
    for key in ("counts", "skipped", "feedback", "system_prompt_sha256", "timings", "created_at", "files"):
        assert key in m
    assert set(m["counts"]) == {"train", "valid", "test", "preferences"}
    assert m["counts"]["train"] > 3 * m["counts"]["valid"] > 0 and m["counts"]["test"] > 0 and m["counts"]["preferences"] > 0
    for name, info in m["files"].items():
        data = (out / name).read_bytes()
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "lines": data.count(b"\n")}
    prompt = Path(m["system_prompt"]["path"]).read_text().strip()
    assert m["system_prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert {"high_water", "positive", "negative", "total", "seen"} <= set(m["feedback"])
    assert set(m["timings"]) == {"snapshot_s", "export_s", "total_s"}


def test_demo_malformed_rows_and_stray_feedback_are_skipped_by_reason(demo_export):
    skipped = demo_export[0].skipped
    for reason in ("bad_json", "not_a_list", "bad_role", "bad_content", "too_few_real_messages",
                   "feedback_index_out_of_range", "feedback_on_non_assistant"):
        assert len(skipped[reason]) == 1, reason


def test_export_changes_nothing_in_the_database(demo, demo_export):
    _, before = demo_export
    assert db_state(demo.path) == before
    assert not Path(f"{demo.path}-journal").exists()


def test_export_of_a_wal_database_leaves_the_database_file_identical(tmp_path: Path):
    db = make_db(tmp_path / "h.db", {1: chat(2, "a")}, [(1, 1, 1, 0)], journal_mode="wal")
    before = db_state(db)
    export_dataset(db, tmp_path / "out", None)
    assert db_state(db) == before


def test_examples_are_valid_chats_in_the_hash_split_of_their_conversation(demo_export):
    out = demo_export[0].out_dir
    for split in SPLITS:
        for e in read_split(out, split):
            assert e["messages"][0]["role"] == "system" and e["messages"][-1]["role"] == "assistant"
            assert split_of(e["meta"]["conversation_id"]) == split == e["meta"]["split"]
            assert e["meta"]["source"] == "feedback"
    for p in read_split(out, "preferences"):
        assert p["rejected"][0]["role"] == "assistant" and p["meta"]["rating"] == -1


def test_split_is_stable_as_the_database_grows(tmp_path: Path):
    convs = {cid: chat(2, f"c{cid}") for cid in range(1, 61)}
    make_db(tmp_path / "h.db", convs)
    export_dataset(tmp_path / "h.db", tmp_path / "night1", None)
    first = {s: {e["meta"]["conversation_id"] for e in read_split(tmp_path / "night1", s)} for s in SPLITS}
    assert all(first.values())

    grown = {**convs, **{cid: chat(3, f"c{cid}") for cid in range(61, 200)}}
    started = {cid: "2024-06-01T00:00:00" for cid in range(61, 200)}  # some of the new ones are older
    make_db(tmp_path / "h.db", grown, [(cid, 1, 1, 0) for cid in range(100, 140)], started=started)
    export_dataset(tmp_path / "h.db", tmp_path / "night2", None)
    second = {s: {e["meta"]["conversation_id"] for e in read_split(tmp_path / "night2", s)} for s in SPLITS}
    for s in SPLITS:
        assert first[s] <= second[s]
        assert not first[s] & (second["train"] | second["valid"] | second["test"]) - second[s]


def test_rated_conversations_come_first_then_oldest_first(tmp_path: Path):
    convs = {cid: chat(1, f"c{cid}") for cid in range(1, 41)}
    started = {cid: f"2025-01-{41 - cid:02d}T00:00:00" if cid <= 30 else f"2025-02-{cid - 30:02d}T00:00:00" for cid in convs}
    rated = {5, 17, 33}
    make_db(tmp_path / "h.db", convs, [(cid, 1, 1, 0) for cid in rated] + [(2, 1, 0, 0)], started=started)
    export_dataset(tmp_path / "h.db", tmp_path / "out", None, min_messages=2)
    for split in SPLITS:
        ids = [e["meta"]["conversation_id"] for e in read_split(tmp_path / "out", split)]
        first = [cid for cid in ids if cid in rated]
        assert ids[: len(first)] == first  # a withdrawn rating (conversation 2) does not count
        assert ids == sorted(first, key=started.get) + sorted([c for c in ids if c not in rated], key=started.get)


def test_identical_examples_are_kept_once(tmp_path: Path):
    same = chat(2, "same")
    make_db(tmp_path / "h.db", {1: same, 2: same, 3: same[:2] + chat(1, "other")})
    result = export_dataset(tmp_path / "h.db", tmp_path / "out", None, min_messages=2)
    bodies = [json.dumps(e["messages"]) for e in all_examples(tmp_path / "out")]
    assert len(bodies) == len(set(bodies)) == 3  # same's two turns, then the other's second
    assert result.manifest["duplicates"]["examples"] == 3


def test_empty_split_has_no_file_and_a_stale_one_is_removed(tmp_path: Path):
    cid = next(c for c in range(1, 100) if split_of(c) == "train")
    make_db(tmp_path / "h.db", {cid: chat(2, "x")})
    out = tmp_path / "out"
    out.mkdir()
    (out / "valid.jsonl").write_text("stale\n")
    (out / ".train.jsonl.123.tmp").write_text("left by a killed export")
    result = export_dataset(tmp_path / "h.db", out, None)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "preferences.jsonl", "train.jsonl"]
    assert result.counts == {"train": 2, "valid": 0, "test": 0, "preferences": 0}


def test_missing_system_prompt_warns_and_uses_the_builtin(tmp_path: Path):
    make_db(tmp_path / "h.db", {1: chat(2, "x")})
    result = export_dataset(tmp_path / "h.db", tmp_path / "out", tmp_path / "system_prompt.txt")
    assert result.warnings and "not found" in result.warnings[0]
    assert result.manifest["system_prompt"]["builtin"] is True
    assert all(e["messages"][0]["content"] == FALLBACK_SYSTEM_PROMPT for e in all_examples(tmp_path / "out"))

    (tmp_path / "system_prompt.txt").write_text("  Be brief.\n")
    result = export_dataset(tmp_path / "h.db", tmp_path / "out", tmp_path / "system_prompt.txt")
    assert not result.warnings and result.manifest["system_prompt_sha256"] == hashlib.sha256(b"Be brief.").hexdigest()
    assert all(e["messages"][0]["content"] == "Be brief." for e in all_examples(tmp_path / "out"))


def test_unwritable_output_is_an_export_error(tmp_path: Path):
    make_db(tmp_path / "h.db", {1: chat(2, "x")})
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError):
        export_dataset(tmp_path / "h.db", tmp_path / "file" / "out", None)


def test_mark_exported_after_export_marks_what_the_export_saw_only(tmp_path: Path):
    db = make_db(tmp_path / "h.db", {1: chat(3, "a"), 2: chat(3, "b")},
                 [(1, 1, 1, 1), (1, 3, -1, 0), (2, 1, 1, 0), (2, 3, 0, 0)])
    result = export_dataset(db, tmp_path / "out", None)
    assert result.manifest["feedback"]["seen"] == {"high_water": 4, "count": 3, "ranges": [[2, 4]]}
    with sqlite3.connect(db) as conn:  # the app rates more while the job runs
        conn.execute("INSERT INTO message_feedback (conversation_id, message_index, rating, exported) VALUES (2, 5, 1, 0)")
    assert mark_exported_from_manifest(db, result.manifest_path) == 3
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT exported FROM message_feedback ORDER BY id")] == [1, 1, 1, 1, 0]
    assert mark_exported_from_manifest(db, result.manifest_path) == 0


def test_counts_export_and_high_water_come_from_one_snapshot_while_the_app_writes(tmp_path: Path):
    # Each app transaction adds a conversation and its rating: a consistent read sees both or neither.
    db = make_db(tmp_path / "h.db", {cid: chat(2, f"c{cid}") for cid in range(1, 1501)},
                 [(cid, 1, 1, 0) for cid in range(1, 1501)], journal_mode="wal")
    stop = threading.Event()

    def app() -> None:
        conn = sqlite3.connect(db, timeout=5)
        cid = 1501
        while not stop.is_set():
            with conn:
                conn.execute("INSERT INTO conversations VALUES (?, 'z', 'z', NULL, 4, ?)", (cid, json.dumps(chat(2, f"c{cid}"))))
                conn.execute("INSERT INTO message_feedback (conversation_id, message_index, rating, exported) VALUES (?, 1, 1, 0)", (cid,))
            cid += 1
        conn.close()

    writer = threading.Thread(target=app)
    writer.start()
    try:
        result = export_dataset(db, tmp_path / "out", None)
    finally:
        stop.set()
        writer.join()
    m = result.manifest
    hw = m["feedback"]["high_water"]
    assert m["conversations"]["total"] == hw == m["feedback"]["positive"] == m["feedback"]["seen"]["count"]
    assert max(e["meta"]["conversation_id"] for e in all_examples(tmp_path / "out")) <= hw
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] > hw  # the app did write meanwhile


def test_exported_files_load_in_mlx_lm_with_prompt_masking(demo_export, tiny_model_dir: Path):
    from mlx_lm.tuner.datasets import load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = SimpleNamespace(data=str(demo_export[0].out_dir), train=True, test=True, mask_prompt=True)
    train, valid, test = load_dataset(args, tokenizer)
    assert len(train) == demo_export[0].counts["train"] and len(valid) and len(test)
    with_tools = 0
    for ds in (train, valid, test):
        for i in range(len(ds)):
            tokens, offset = ds.process(ds[i])
            assert 0 < offset < len(tokens)
            target = tokenizer.decode(tokens[offset:])
            assert "<|im_start|>user" not in target and "<|im_start|>system" not in target
            with_tools += "tools" in ds[i]
    assert with_tools > 0

