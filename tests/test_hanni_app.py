"""Hanni as the app really writes its database (sources/hanni/schema.py), on real SQLite files:
proactive messages, the history window the app sends its model, the triggers on updated_at,
re-ratings (INSERT OR REPLACE), the owner sync's rows, feedback another exporter marked, and
the app's old nightly LaunchAgent."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from nightlora.cli import main
from nightlora.demo.database import write_hanni_db
from nightlora.schedule import OldAgent, disable_old_agent, find_old_agents
from nightlora.sources.hanni.config import HanniSourceConfig
from nightlora.sources.hanni.db import feedback_counts, mark_exported, mark_exported_from_manifest, open_snapshot
from nightlora.sources.hanni.db import marked_elsewhere, seen_feedback
from nightlora.sources.hanni.source import export_db
from server_fixtures import RecordingRunner

MARK = "[Автономное сообщение Ханни]:"
RATE = "INSERT OR REPLACE INTO message_feedback (conversation_id, message_index, rating, created_at) VALUES (?, ?, ?, 't')"


def app_db(path: Path, convs: dict[int, list[Any]], feedback: list[tuple[int, int, int, int]] = ()) -> Path:
    """A database in the app's own schema (triggers stamp feedback's updated_at), in WAL mode as the app keeps it.

    Conversations come with their updated_at, as the owner sync writes them: without one, the app's
    updated_at trigger's UPDATE fires conv_au, which deletes the row from the FTS index before
    conv_ai has added it (on an empty index SQLite 3.40 and 3.51 both answer "database disk image
    is malformed").
    """
    rows = [(cid, f"2025-01-01T00:00:{cid % 60:02d}", None, None, len(m), json.dumps(m, ensure_ascii=False),
             f"2025-01-01T00:00:{cid % 60:02d}.000") for cid, m in convs.items()]
    write_hanni_db(path, rows, [(c, i, r, "t", e) for c, i, r, e in feedback], app_schema=True, journal_mode="wal")
    return path


def connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    return contextlib.closing(conn)


def lines(out: Path, stem: str) -> list[dict[str, Any]]:
    p = out / f"{stem}.jsonl"
    return [json.loads(x) for x in p.read_bytes().split(b"\n")[:-1]] if p.exists() else []


def examples(out: Path) -> list[dict[str, Any]]:
    return [e for s in ("train", "valid", "test") for e in lines(out, s)]


def chat(n: int) -> list[list[str]]:
    return [m for i in range(n) for m in (["user", f"question {i}"], ["assistant", f"answer {i}"])]


PROACTIVE_CHAT = [
    {"role": "assistant", "content": f"{MARK} Good morning! Cello first?"},             # 0: the app wrote first
    {"role": "user", "content": "Yes. What's my cat called?"},
    {"role": "assistant", "content": "Your cat is called Murka."},                       # 2
    {"role": "user", "content": "And my dog?"},
    {"role": "assistant", "content": "Your dog is called Rex."},                         # 4: rated down
    {"role": "assistant", "content": f"{MARK} Rain after 17:00.", "proactive": True},    # 5: rated up
    {"role": "user", "content": "No, that's wrong. My dog is Baron."},
    {"role": "assistant", "content": "Sorry: your dog is Baron."},                       # 7
]


def test_proactive_messages_are_context_only_and_never_a_chosen_reply(tmp_path: Path):
    db = app_db(tmp_path / "h.db", {1: PROACTIVE_CHAT}, [(1, 0, 1, 0), (1, 4, -1, 0), (1, 5, 1, 0)])
    result = export_db(db, tmp_path / "out", None)
    out = tmp_path / "out"
    assert sorted(e["meta"]["message_index"] for e in examples(out)) == [2, 7]
    assert all(any(m["role"] == "user" for m in e["messages"]) for e in examples(out))  # never [system, assistant]
    (pref,) = lines(out, "preferences")
    # Before: the rated-up proactive message right after the bad reply was its "alternative".
    assert pref["meta"]["chosen_from"] == "next_reply" and pref["meta"]["chosen_index"] == 7
    assert pref["chosen"] == [{"role": "assistant", "content": "Sorry: your dog is Baron."}]
    # ...and it stays in the later turns' context, as the user saw it (the key "proactive" is not kept).
    assert {"role": "assistant", "content": f"{MARK} Rain after 17:00."} in examples(out)[-1]["messages"]
    assert result.manifest["cases"] == {
        "proactive_opening": 1, "proactive_opening_rated": 1,
        "proactive_flagged": 1, "proactive_flagged_rated": 1, "proactive_flagged_not_chosen": 1,
    }


def test_the_marker_alone_marks_a_proactive_message(tmp_path: Path):
    msgs = [["user", "Hi"], ["assistant", "Hello!"], ["assistant", f"{MARK} Time to walk Baron."],
            ["user", "Done."], ["assistant", "Great."]]
    db = app_db(tmp_path / "h.db", {1: msgs})
    result = export_db(db, tmp_path / "out", None)
    assert sorted(e["meta"]["message_index"] for e in examples(tmp_path / "out")) == [1, 4]
    assert result.manifest["cases"] == {"proactive_marker": 1}


def test_a_setting_makes_proactive_messages_targets_but_still_never_chosen(tmp_path: Path):
    db = app_db(tmp_path / "h.db", {1: PROACTIVE_CHAT}, [(1, 0, 1, 0), (1, 4, -1, 0), (1, 5, 1, 0)])
    result = export_db(db, tmp_path / "out", None, source_settings={"proactive_targets": True})
    out = tmp_path / "out"
    assert sorted(e["meta"]["message_index"] for e in examples(out)) == [0, 2, 5, 7]
    (pref,) = lines(out, "preferences")
    assert pref["meta"]["chosen_index"] == 7
    assert result.manifest["cases"] == {"unprompted_target": 2, "unprompted_not_chosen": 1}


def test_contexts_are_cut_to_the_last_messages_the_app_sends(tmp_path: Path):
    db = app_db(tmp_path / "h.db", {1: chat(15)})  # 30 messages
    assert HanniSourceConfig().history_window == 20
    result = export_db(db, tmp_path / "out", None)
    by_index = {e["meta"]["message_index"]: e["messages"] for e in examples(tmp_path / "out")}
    assert len(by_index[19]) == 1 + 19 + 1  # system, everything before, the target
    last = by_index[29]
    assert len(last) == 1 + 20 + 1 and last[0]["role"] == "system"
    assert last[1] == {"role": "assistant", "content": "answer 4"} and last[-2] == {"role": "user", "content": "question 14"}
    assert result.manifest["cases"] == {"context_windowed": 5} and result.manifest["history_window"] == 20

    whole = export_db(db, tmp_path / "all", None, source_settings={"history_window": 0})
    assert len({e["meta"]["message_index"]: e for e in examples(tmp_path / "all")}[29]["messages"]) == 31
    assert whole.manifest["cases"] == {} and whole.manifest["history_window"] is None


def test_marking_counts_rows_not_the_trigger_s_writes(tmp_path: Path):
    db = app_db(tmp_path / "h.db", {1: chat(13)}, [(1, 2 * i + 1, 1, 0) for i in range(13)])
    with connect(db) as conn:
        before = dict(conn.execute("SELECT id, updated_at FROM message_feedback"))
    assert all(before.values())  # the AFTER INSERT trigger stamped every row
    result = export_db(db, tmp_path / "out", None)
    assert result.manifest["feedback"]["seen"]["count"] == 13
    assert mark_exported_from_manifest(db, result.manifest_path) == 13
    with connect(db) as conn:
        after = dict(conn.execute("SELECT id, updated_at FROM message_feedback WHERE exported = 1"))
    assert set(after) == set(before) and all(after[i] != before[i] for i in after)  # the trigger bumped each
    # What total_changes would have said: the trigger's UPDATE counts too.
    copy = tmp_path / "copy.db"
    with connect(db) as src, connect(copy) as dst:
        src.backup(dst)
        start = dst.total_changes
        dst.execute("UPDATE message_feedback SET exported = 0")
        assert dst.total_changes - start == 26
    assert mark_exported_from_manifest(db, result.manifest_path) == 0


def test_a_rating_changed_during_the_run_is_a_new_row_left_for_the_next_night(tmp_path: Path):
    db = app_db(tmp_path / "h.db", {1: chat(3)}, [(1, 1, 1, 0), (1, 3, 1, 0), (1, 5, 1, 0)])
    result = export_db(db, tmp_path / "out", None)
    seen = result.manifest["feedback"]["seen"]
    with connect(db) as conn:
        conn.execute(RATE, (1, 3, -1))  # the user changes their mind while the job trains
        assert conn.execute("SELECT id, rating, exported FROM message_feedback WHERE message_index = 3").fetchone() == (4, -1, 0)
    assert mark_exported_from_manifest(db, result.manifest_path) == 2  # row 2 is gone, row 4 is newer
    consumed = set(seen["keys"])
    c = feedback_counts(db, 1, consumed)
    assert (c.positive, c.negative, c.high_water) == (0, 1, 4)


def test_a_row_the_sync_puts_in_an_id_gap_is_new_feedback(tmp_path: Path):
    db = app_db(tmp_path / "h.db", {1: chat(4)}, [(1, 1, 1, 0), (1, 3, 1, 0), (1, 5, 1, 0)])
    with connect(db) as conn:
        conn.execute(RATE, (1, 3, 1))  # id 2 -> id 4: a gap at 2
    result = export_db(db, tmp_path / "out", None)
    seen = result.manifest["feedback"]["seen"]
    assert [k.split("@")[0] for k in seen["keys"]] == ["1", "3", "4"]
    with connect(db) as conn:  # the phone's row, by its own id
        conn.execute("INSERT INTO message_feedback (id, conversation_id, message_index, rating, created_at, exported,"
                     " updated_at) VALUES (2, 1, 7, -1, 't', 0, '2025-06-01T10:00:00.000')")
    assert mark_exported_from_manifest(db, result.manifest_path) == 3
    with connect(db) as conn:
        assert conn.execute("SELECT exported FROM message_feedback WHERE id = 2").fetchone() == (0,)
    c = feedback_counts(db, 1, set(seen["keys"]))
    assert (c.positive, c.negative) == (0, 1)


def test_a_row_the_sync_replaces_under_a_consumed_id_is_new_feedback(tmp_path: Path):
    db = app_db(tmp_path / "h.db", {1: chat(4)}, [(1, 1, 1, 0), (1, 3, 1, 0)])
    with open_snapshot(db) as conn:
        keys = set(seen_feedback(conn).keys)  # a night consumed both, but marking failed (the app held a lock)
    assert feedback_counts(db, 1, keys).total == 0
    with connect(db) as conn:  # the phone's row 2 (another rating) wins by its newer updated_at
        conn.execute("INSERT INTO message_feedback (id, conversation_id, message_index, rating, created_at, exported,"
                     " updated_at) VALUES (2, 1, 5, -1, 't', 0, '2099-01-01T00:00:00.000') ON CONFLICT(id) DO UPDATE SET"
                     " message_index = excluded.message_index, rating = excluded.rating, updated_at = excluded.updated_at")
    c = feedback_counts(db, 1, keys)
    assert (c.positive, c.negative) == (0, 1)
    # A cursor of bare ids (nights before this key format) still covers its rows, whatever they hold now.
    assert feedback_counts(db, 1, {"1", "2"}).total == 0
    with open_snapshot(db) as conn:
        assert [k.split("@")[0] for k in seen_feedback(conn, keys).keys] == ["2"]


def test_marking_skips_a_row_that_changed_since_the_export(tmp_path: Path):
    db = app_db(tmp_path / "h.db", {1: chat(2)}, [(1, 1, 1, 0), (1, 3, 1, 0)])
    with open_snapshot(db) as conn:
        seen = seen_feedback(conn)
    with connect(db) as conn:
        conn.execute("UPDATE message_feedback SET rating = -1, updated_at = '2099-01-01T00:00:00.000' WHERE id = 2")
    assert mark_exported(db, seen) == 1
    with connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT exported FROM message_feedback ORDER BY id")] == [1, 0]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("NIGHTLORA_CONFIG", raising=False)
    return tmp_path


def test_check_warns_when_another_exporter_marked_feedback_since_the_last_night(isolated: Path, capsys):
    from nightlora.cli.wiring import build_deps
    from nightlora.config import load_config
    from nightlora.pipeline.nightly import run_nightly

    data = isolated / "hanni"
    data.mkdir()
    db = app_db(data / "hanni.db", {1: chat(4)}, [(1, 1, 1, 1), (1, 3, 1, 0), (1, 5, -1, 0)])
    cfg_path = isolated / "c.toml"
    cfg_path.write_text(f'[source]\ndata_dir = "{data}"\n[data]\nmin_feedback = 100\n[target]\nkind = "none"\n')

    assert main(["--config", str(cfg_path), "check", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["total"] == 2
    assert "warning: 1 ratings in" in captured.err and "marked exported by something other than nightlora" in captured.err

    cfg = load_config(cfg_path, environ={})
    logs: list[str] = []
    deps = build_deps(cfg, progress=False)
    deps.log = logs.append
    night = run_nightly(cfg, deps)  # too little feedback: the night ends at the gate, having noticed it
    assert night.status == "skipped"
    assert any("1 ratings in" in line for line in logs)
    assert main(["--config", str(cfg_path), "check"]) == 0
    assert "warning" not in capsys.readouterr().err

    with connect(db) as conn:  # the app's export button: every rating exported, in the pair format only
        conn.execute("UPDATE message_feedback SET exported = 1 WHERE exported = 0")
    assert main(["--config", str(cfg_path), "check"]) == 0
    assert "warning: 2 ratings in" in capsys.readouterr().err
    with open_snapshot(db) as conn:
        assert marked_elsewhere(conn) == ["1", "2", "3"]
        assert marked_elsewhere(conn, {"2@x", "3"}) == ["1"]  # the ids nightlora consumed are its own


def test_the_app_s_own_schema_refuses_a_first_conversation_saved_without_updated_at(tmp_path: Path):
    # Why the demo and these tests give conversations an updated_at: the app's save_conversation
    # (memory.rs) does not, and its triggers then fail.  nightlora never writes conversations.
    db = app_db(tmp_path / "h.db", {})
    with connect(db) as conn, pytest.raises(sqlite3.DatabaseError, match="malformed"):
        conn.execute("INSERT INTO conversations (started_at, message_count, messages) VALUES ('t', 0, '[]')")


def test_the_old_launch_agent_is_found_and_disabled_only_on_request(tmp_path: Path):
    agents = tmp_path / "LaunchAgents"
    agents.mkdir()
    plist = agents / "com.hanni.nightly-train.plist"
    plist.write_bytes(b"<plist/>")
    runner = RecordingRunner().on(["launchctl", "print-disabled"], 0, '\t"com.apple.x" => enabled\n')
    (agent,) = find_old_agents(HanniSourceConfig.old_agents, runner, agents_dir=agents, uid=501)
    assert agent == OldAgent("com.hanni.nightly-train", plist, loaded=True, disabled=False)
    assert runner.calls == [["launchctl", "print-disabled", "gui/501"],
                            ["launchctl", "print", "gui/501/com.hanni.nightly-train"]]  # looking changes nothing
    runner.calls.clear()
    done = disable_old_agent(agent, runner, uid=501)
    assert runner.calls == [["launchctl", "bootout", "gui/501/com.hanni.nightly-train"],
                            ["launchctl", "disable", "gui/501/com.hanni.nightly-train"]]
    assert done.disabled and not done.loaded and plist.read_bytes() == b"<plist/>"  # its plist is left alone
    assert "is disabled" in done.note() and "still enabled" in agent.note()

    already = RecordingRunner().on(["launchctl", "print-disabled"], 0, '\t"com.hanni.nightly-train" => disabled\n') \
        .on(["launchctl", "print"], 113)
    assert find_old_agents(HanniSourceConfig.old_agents, already, agents_dir=agents, uid=501)[0].disabled
    assert find_old_agents(HanniSourceConfig.old_agents, RecordingRunner(), agents_dir=tmp_path / "none") == []


def test_schedule_install_disables_the_old_agent_only_when_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from nightlora.cli import deploy_cmds

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "Library" / "LaunchAgents").mkdir(parents=True)
    (tmp_path / "Library" / "LaunchAgents" / "com.hanni.nightly-train.plist").write_bytes(b"<plist/>")
    runner = RecordingRunner()
    notes = deploy_cmds._old_agents(HanniSourceConfig.old_agents, runner, False)  # --keep-old-agent
    assert "still enabled" in notes[0] and "still enabled" in capsys.readouterr().err
    assert not any(c[1] in ("bootout", "disable") for c in runner.calls)
    # No flag and no terminal to ask on: never disabled silently.
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    assert "still enabled" in deploy_cmds._old_agents(HanniSourceConfig.old_agents, runner, None)[0]
    assert not any(c[1] in ("bootout", "disable") for c in runner.calls)
    notes = deploy_cmds._old_agents(HanniSourceConfig.old_agents, runner, True)  # --disable-old-agent
    uid = __import__("os").getuid()
    assert runner.calls[-2:] == [["launchctl", "bootout", f"gui/{uid}/com.hanni.nightly-train"],
                                 ["launchctl", "disable", f"gui/{uid}/com.hanni.nightly-train"]]
    assert "is disabled" in notes[0]
