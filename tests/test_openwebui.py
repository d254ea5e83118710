"""The Open WebUI source on real webui.db files built with Open WebUI 0.12.4's own DDL:
paths by parentId, regeneration pairs, the live chat before the snapshot, filters, both
rating encodings, stale and malformed rows, the consumed cursor, and finding webui.db."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from nightlora.cli import main
from nightlora.config import load_config
from nightlora.dataset.split import split_of
from nightlora.dataset.writer import export_dataset
from nightlora.demo.openwebui import MODEL, OTHER_MODEL, USER_PROMPT, build_openwebui_db
from nightlora.errors import SourceError
from nightlora.sources.openwebui.config import OpenWebUISourceConfig
from nightlora.sources.openwebui.locate import find_webui_db
from nightlora.sources.openwebui.messages import convert_message
from nightlora.sources.openwebui.schema import APP_SCHEMA_SQL
from nightlora.sources.openwebui.source import OpenWebUISource
from server_fixtures import RecordingRunner

USER, OTHER_USER = "u-dmitry", "u-olga"


# --- a small webui.db, written the way Open WebUI writes it -------------------------------

class Chat:
    """A chat's message tree as the front end stores it (history.messages, parentId, childrenIds)."""

    def __init__(self, chat_id: str, user: str = USER, system: str | None = None):
        self.id, self.user, self.system = chat_id, user, system
        self.messages: dict[str, dict[str, Any]] = {}
        self.current: str | None = None
        self.t = 1_740_000_000

    def add(self, mid: str, parent: str | None, role: str, content: str, model: str = MODEL, **extra: Any) -> str:
        self.t += 10
        msg = {"id": mid, "parentId": parent, "childrenIds": [], "role": role, "content": content, "timestamp": self.t,
               **({"model": model} if role == "assistant" else {"models": [model]}), **extra}
        self.messages[mid] = msg
        if parent is not None:
            self.messages[parent]["childrenIds"].append(mid)
        self.current = mid
        return mid

    def body(self) -> dict[str, Any]:
        return {"id": "", "title": "t", "models": [MODEL], "params": {"system": self.system} if self.system else {},
                "history": {"messages": self.messages, "currentId": self.current}, "messages": [], "tags": [],
                "timestamp": self.t * 1000}


def feedback(fid: str, chat: Chat, mid: str, rating: Any, *, user: str = USER, at: int = 100, snapshot: bool = True,
             arena: bool = False, model: str | None = None, kind: str = "rating") -> tuple[Any, ...]:
    msg = chat.messages.get(mid, {})
    data = {"rating": rating, "model_id": model or msg.get("selectedModelId") or msg.get("model", MODEL)}
    meta = {"arena": arena, "model_id": msg.get("model", MODEL), "message_id": mid, "chat_id": chat.id}
    snap = json.dumps({"chat": {"id": chat.id, "user_id": chat.user, "chat": chat.body()}}) if snapshot else None
    return (fid, user, 0, kind, json.dumps(data), json.dumps(meta), snap, at, at)


def webui_db(path: Path, chats: list[Chat], rows: list[tuple[Any, ...]], *, deleted: tuple[str, ...] = (),
             settings: dict[str, Any] | None = None) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(APP_SCHEMA_SQL)
        for uid in (USER, OTHER_USER):
            conn.execute('INSERT INTO "user" (id, name, settings) VALUES (?, ?, ?)',
                         (uid, uid, json.dumps(settings if uid == USER and settings else {"ui": {}})))
        for c in chats:
            if c.id not in deleted:
                conn.execute("INSERT INTO chat (id, user_id, title, created_at, updated_at, chat, meta) VALUES (?, ?, 't', ?, ?, ?, '{}')",
                             (c.id, c.user, c.t, c.t, json.dumps(c.body())))
        conn.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return path


def export(db: Path, out: Path, consumed: frozenset[str] = frozenset(), **cfg: Any):
    source = OpenWebUISource(OpenWebUISourceConfig(kind="openwebui", db=db, data_dir=out.parent / "nl", **cfg))
    return export_dataset(source, out, source.system_prompt()[0], consumed=consumed, min_messages=0)


def lines(out: Path, stem: str) -> list[dict[str, Any]]:
    p = out / f"{stem}.jsonl"
    return [json.loads(x) for x in p.read_bytes().split(b"\n")[:-1]] if p.exists() else []


def examples(out: Path) -> list[dict[str, Any]]:
    return [e for s in ("train", "valid", "test") for e in lines(out, s)]


def texts(msgs: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in msgs]


def regenerated_chat() -> Chat:
    """u1 -> a1 (-1) and its regeneration a1b (+1, visible); u2 edited into u2b on the a1b branch."""
    c = Chat("c1")
    c.add("u1", None, "user", "What's my cat called?")
    c.add("a1", "u1", "assistant", "Barsik.")
    c.add("a1b", "u1", "assistant", "Murka.")
    c.add("u2", "a1b", "user", "and my dog")
    c.add("a2", "u2", "assistant", "Rex.")
    c.add("u2b", "a1b", "user", "And my dog?")      # the user edited u2: a new branch, now visible
    c.add("a2b", "u2b", "assistant", "Baron.")
    return c


def test_each_rated_reply_is_learned_on_its_own_path_and_siblings_make_a_pair(tmp_path: Path):
    c = regenerated_chat()
    rows = [feedback("f1", c, "a1", -1), feedback("f2", c, "a1b", 1), feedback("f3", c, "a2", 1),
            feedback("f4", c, "a2b", "1")]
    result = export(webui_db(tmp_path / "webui.db", [c], rows), tmp_path / "out")
    out = tmp_path / "out"
    got = {e["meta"]["message_id"]: texts(e["messages"]) for e in examples(out)}
    # a2 is on a branch that is no longer visible: its context is its own path, not the visible one.
    assert got == {
        "a1b": ["What's my cat called?", "Murka."],
        "a2": ["What's my cat called?", "Murka.", "and my dog", "Rex."],
        "a2b": ["What's my cat called?", "Murka.", "And my dog?", "Baron."],
    }
    assert all(e["messages"][0]["role"] == "user" for e in examples(out))  # no prompt anywhere: no system message
    (pref,) = lines(out, "preferences")
    assert texts(pref["prompt"]) == ["What's my cat called?"]
    assert pref["rejected"] == [{"role": "assistant", "content": "Barsik."}]
    assert pref["chosen"] == [{"role": "assistant", "content": "Murka."}]
    assert pref["meta"]["chosen_from"] == "sibling" and pref["meta"]["chosen_message_id"] == "a1b"
    assert result.manifest["duplicates"] == {"examples": 0, "preferences": 0}  # the shared a1b example once
    assert result.manifest["cases"]["sibling_pair"] == 1 and result.manifest["cases"]["on_another_path"] == 1
    # Every path of the chat in the chat's split.
    assert {e["meta"]["split"] for e in examples(out)} == {split_of("c1")}
    assert result.counts["train" if split_of("c1") == "train" else split_of("c1")] == 3


def test_a_rating_down_without_a_rated_sibling_takes_the_next_reply_or_none(tmp_path: Path):
    c = Chat("c1")
    c.add("u1", None, "user", "What's my dog called?")
    c.add("a1", "u1", "assistant", "Rex.")
    c.add("u2", "a1", "user", "No, Baron.")
    c.add("a2", "u2", "assistant", "Sorry: Baron.")
    d = Chat("c2")
    d.add("v1", None, "user", "Hi")
    d.add("b1", "v1", "assistant", "Go away.")
    out = tmp_path / "out"
    export(webui_db(tmp_path / "webui.db", [c, d], [feedback("f1", c, "a1", -1), feedback("f2", d, "b1", "-1")]), out)
    prefs = {p["meta"]["message_id"]: p for p in lines(out, "preferences")}
    assert prefs["a1"]["meta"]["chosen_from"] == "next_reply" and prefs["a1"]["chosen"][0]["content"] == "Sorry: Baron."
    assert prefs["b1"]["chosen"] is None
    assert [e["meta"]["message_id"] for e in examples(out)] == ["a2"]  # the next reply, unrated, is still a target


def test_the_live_chat_wins_and_a_deleted_chat_comes_from_its_snapshot(tmp_path: Path):
    live = Chat("live")
    live.add("u1", None, "user", "Where do I live?")
    live.add("a1", "u1", "assistant", "Porto.")
    row = feedback("f1", live, "a1", 1)            # the snapshot says "Porto."
    live.messages["a1"]["content"] = "Lisbon."      # the user edited the reply since
    gone = Chat("gone")
    gone.add("u1", None, "user", "What's my job?")
    gone.add("a1", "u1", "assistant", "Sound engineer.")
    db = webui_db(tmp_path / "webui.db", [live, gone], [row, feedback("f2", gone, "a1", 1)], deleted=("gone",))
    result = export(db, tmp_path / "out")
    got = sorted(texts(e["messages"])[-1] for e in examples(tmp_path / "out"))
    assert got == ["Lisbon.", "Sound engineer."]
    assert result.manifest["cases"]["chat_from_snapshot"] == 1 and result.manifest["feedback"]["orphans"] == 0
    # Without a snapshot, a deleted chat's rating has nothing to learn from: counted, not a crash.
    db2 = webui_db(tmp_path / "w2.db", [gone], [feedback("f2", gone, "a1", 1, snapshot=False)], deleted=("gone",))
    r2 = export(db2, tmp_path / "out2")
    assert r2.manifest["feedback"]["orphans"] == 1 and r2.manifest["cases"] == {"feedback_chat_missing": 1}
    assert examples(tmp_path / "out2") == []


def test_filters_by_user_model_and_arena(tmp_path: Path):
    c = Chat("c1")
    c.add("u1", None, "user", "Capital of France?")
    c.add("a", "u1", "assistant", "Paris.", model=MODEL, modelIdx=0)
    c.add("b", "u1", "assistant", "Lyon.", model=OTHER_MODEL, modelIdx=1)
    c.add("u2", "a", "user", "And of Spain?")
    c.add("x", "u2", "assistant", "Madrid.", model="arena-model", selectedModelId=MODEL)
    o = Chat("c2", user=OTHER_USER)
    o.add("v1", None, "user", "Olga's question")
    o.add("o1", "v1", "assistant", "Olga's answer.")
    rows = [feedback("f1", c, "a", 1), feedback("f2", c, "b", -1), feedback("f3", c, "x", 1, arena=True),
            feedback("f4", o, "o1", 1, user=OTHER_USER)]
    db = webui_db(tmp_path / "webui.db", [c, o], rows)

    everyone = export(db, tmp_path / "all")
    assert everyone.manifest["feedback"]["total"] == 3 and everyone.manifest["cases"]["feedback_arena"] == 1
    (pref,) = lines(tmp_path / "all", "preferences")  # the other model's reply, rated down, against its sibling
    assert pref["meta"]["message_id"] == "b" and pref["chosen"][0]["content"] == "Paris."

    mine = export(db, tmp_path / "mine", user_ids=[USER], model_ids=[MODEL], arena=True)
    m = mine.manifest
    assert (m["feedback"]["positive"], m["feedback"]["negative"]) == (2, 0)
    assert m["cases"]["feedback_other_user"] == 1 and m["cases"]["feedback_other_model"] == 1
    got = {e["meta"]["message_id"]: texts(e["messages"]) for e in examples(tmp_path / "mine")}
    assert got == {"a": ["Capital of France?", "Paris."],
                   "x": ["Capital of France?", "Paris.", "And of Spain?", "Madrid."]}  # the arena reply by MODEL
    assert lines(tmp_path / "mine", "preferences") == []


def test_a_reply_by_another_model_is_context_not_a_target(tmp_path: Path):
    c = Chat("c1")
    c.add("u1", None, "user", "Q1")
    c.add("a1", "u1", "assistant", "by the other model", model=OTHER_MODEL)
    c.add("u2", "a1", "user", "Q2")
    c.add("a2", "u2", "assistant", "by ours")
    result = export(webui_db(tmp_path / "webui.db", [c], [feedback("f1", c, "a2", 1)]), tmp_path / "out",
                    model_ids=[MODEL])
    (e,) = examples(tmp_path / "out")
    assert texts(e["messages"]) == ["Q1", "by the other model", "Q2", "by ours"]
    assert result.manifest["cases"] == {"other_model": 1}


def test_stale_and_malformed_rows_are_counted_never_fatal(tmp_path: Path):
    c = Chat("c1")
    c.add("u1", None, "user", "Hi")
    c.add("a1", "u1", "assistant", "Hello!")
    loop = Chat("loop")
    loop.add("p", None, "user", "Hi")
    loop.add("q", "p", "assistant", "Hello!")
    loop.messages["p"]["parentId"] = "q"
    broken = Chat("broken")
    rows = [
        feedback("old", c, "a1", -1, at=50), feedback("new", c, "a1", 1, at=60),   # the newer row holds
        feedback("gone", c, "deleted-msg", 1),                                      # the user deleted it since
        feedback("user", c, "u1", 1),                                               # a user message
        ("bad", USER, 0, "rating", '{"rating": 1, "model_', json.dumps({"chat_id": "c1", "message_id": "a1"}), None, 1, 1),
        feedback("great", c, "a1", "great"),
        ("nochat", USER, 0, "rating", json.dumps({"rating": 1}), json.dumps({"message_id": "a1"}), None, 1, 1),
        feedback("comment", c, "a1", 1, kind="comment"),
        feedback("l1", loop, "q", 1),
        ("b1", USER, 0, "rating", json.dumps({"rating": 1}), json.dumps({"chat_id": "broken", "message_id": "z"}), None, 1, 1),
    ]
    db = webui_db(tmp_path / "webui.db", [c, loop, broken], rows)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE chat SET chat = '{\"history\": {\"messages\": ' WHERE id = 'broken'")
    result = export(db, tmp_path / "out")
    m = result.manifest
    assert m["cases"] == {
        "feedback_superseded": 1, "feedback_message_deleted": 1, "feedback_on_non_assistant": 1,
        "feedback_bad_json": 1, "feedback_bad_rating": 1, "feedback_no_message": 1, "feedback_not_a_rating": 1,
        "feedback_history_cycle": 1,
    }
    assert m["skipped"] == {"bad_chat_json": ["broken"]}
    (e,) = examples(tmp_path / "out")
    assert e["meta"]["rating"] == 1 and texts(e["messages"]) == ["Hi", "Hello!"]
    # Every rating row that passed the filters is seen (and so consumed after a promoted night).
    assert m["feedback"]["seen"]["count"] == 9


def test_what_the_model_was_sent(tmp_path: Path):
    c = Chat("c1", system="Be terse.")
    c.add("u1", None, "user", "What's my cat called?")
    c.add("a1", "u1", "assistant",
          '<details type="reasoning" done="true" duration="2">\n<summary>Thought</summary>\n&gt; hmm\n</details>\nMurka.')
    c.add("u2", "a1", "user", "Weather?")
    output = [
        {"type": "reasoning", "id": "r", "summary": [{"type": "output_text", "text": "let me look"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Lisbon"}',
         "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": '{"temp": 19}'}]},
        {"type": "message", "content": [{"type": "output_text", "text": "19 °C."}]},
    ]
    c.add("a2", "u2", "assistant", "19 °C.", output=output)
    c.add("u3", "a2", "user", "Thanks")
    c.add("a3", "u3", "assistant", "")  # an empty reply: Open WebUI leaves it out
    d = Chat("c2")
    d.add("v1", None, "user", "Hi")
    d.add("b1", "v1", "assistant", "Hello!")
    db = webui_db(tmp_path / "webui.db", [c, d], [feedback("f1", c, "a2", 1), feedback("f2", d, "b1", 1)],
                  settings={"ui": {"system": "You are Dmitry's assistant."}})
    export(db, tmp_path / "out")
    by_id = {e["meta"]["message_id"]: e for e in examples(tmp_path / "out")}
    reply = by_id["a2"]
    assert reply["messages"][:3] == [{"role": "system", "content": "Be terse."},
                                     {"role": "user", "content": "What's my cat called?"},
                                     {"role": "assistant", "content": "Murka."}]
    assert reply["messages"][-3:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 19}'},
        {"role": "assistant", "content": "19 °C."},
    ]
    assert reply["tools"][0]["function"]["name"] == "get_weather"
    assert by_id["b1"]["messages"][0] == {"role": "system", "content": "You are Dmitry's assistant."}  # the user's own
    # A configured prompt is only for chats that had none of their own; here both had one.
    (tmp_path / "p.txt").write_text("Configured.")
    export(db, tmp_path / "cfg", system_prompt=tmp_path / "p.txt")
    assert {e["messages"][0]["content"] for e in examples(tmp_path / "cfg")} == {"Be terse.", "You are Dmitry's assistant."}


def test_tool_call_blocks_in_content_become_their_result():
    msg = {"role": "assistant", "content": 'Checking.\n<details type="tool_calls" done="true" result="&quot;19 C&quot;">'
                                           "<summary>Tool</summary></details>\nDone."}
    assert convert_message(msg) == [{"role": "assistant", "content": 'Checking.\n"19 C"\nDone.'}]
    assert convert_message({"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}) == \
        [{"role": "user", "content": "hi"}]


def test_consumed_feedback_is_keyed_by_id_and_time_and_the_database_is_never_written(tmp_path: Path):
    c = Chat("c1")
    c.add("u1", None, "user", "Q")
    c.add("a1", "u1", "assistant", "A")
    db = webui_db(tmp_path / "webui.db", [c], [feedback("f1", c, "a1", 1, at=100)])
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    first = export(db, tmp_path / "n1")
    seen = first.manifest["feedback"]["seen"]
    assert seen == {"high_water": 100, "count": 1, "ranges": [], "keys": ["f1@100"]}
    source = OpenWebUISource(OpenWebUISourceConfig(kind="openwebui", db=db))
    assert source.mark_consumed(__import__("nightlora.dataset.manifest", fromlist=["x"]).read_seen(first.manifest_path)) == 0
    again = export(db, tmp_path / "n2", consumed=frozenset(seen["keys"]))
    assert again.manifest["feedback"]["total"] == 0 and again.counts["train"] + again.counts["valid"] + again.counts["test"] == 1
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # the user changes the rating: the same row, updated
        conn.execute("UPDATE feedback SET data = json_set(data, '$.rating', -1), updated_at = 200 WHERE id = 'f1'")
    changed = export(db, tmp_path / "n3", consumed=frozenset(seen["keys"]))
    assert (changed.manifest["feedback"]["negative"], changed.manifest["feedback"]["seen"]["keys"]) == (1, ["f1@200"])
    assert hashlib.sha256(db.read_bytes()).hexdigest() != before  # (our own UPDATE above)
    after = hashlib.sha256(db.read_bytes()).hexdigest()
    export(db, tmp_path / "n4")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == after


def test_not_an_open_webui_database(tmp_path: Path):
    with pytest.raises(SourceError, match="Open WebUI database not found"):
        export(tmp_path / "nope.db", tmp_path / "out")
    with contextlib.closing(sqlite3.connect(tmp_path / "x.db")) as conn:
        conn.execute("CREATE TABLE feedback (id TEXT)")
    with pytest.raises(SourceError, match="not an Open WebUI database .feedback lacks"):
        export(tmp_path / "x.db", tmp_path / "out")


# --- the demo database ----------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return build_openwebui_db(tmp_path_factory.mktemp("owui") / "webui.db")


def test_demo_has_open_webui_s_schema_and_every_case(demo, tmp_path: Path):
    with contextlib.closing(sqlite3.connect(f"{demo.path.as_uri()}?mode=ro", uri=True)) as conn:
        cols = {t: [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')] for t in ("feedback", "chat")}
        chats = {cid: json.loads(raw) for cid, raw in conn.execute("SELECT id, chat FROM chat WHERE title NOT IN ('Broken')")}
        rows = list(conn.execute("SELECT id, user_id, type, data, meta, snapshot FROM feedback"))
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        users = conn.execute('SELECT COUNT(*) FROM "user"').fetchone()[0]
        stored = conn.execute("SELECT COUNT(*) FROM chat_message").fetchone()[0]
    assert cols["feedback"] == ["id", "user_id", "version", "type", "data", "meta", "snapshot", "created_at", "updated_at"]
    assert cols["chat"][:8] == ["id", "user_id", "title", "created_at", "updated_at", "share_id", "archived", "chat"]
    assert "current_message_id" in cols["chat"] and version == "0bd252b206fb" and users == 2 and stored > 100
    ratings = [json.loads(r[3]).get("rating") for r in rows if r[2] == "rating" and r[3].endswith("}")]
    assert {1, -1, "1", "-1", "great"} <= set(ratings)
    models = {json.loads(r[3]).get("model_id") for r in rows if r[3].endswith("}")}
    assert {MODEL, OTHER_MODEL} <= models and len({r[1] for r in rows}) == 2
    chat_ids = {json.loads(r[4]).get("chat_id") for r in rows}
    deleted = [r for r in rows if json.loads(r[4]).get("chat_id") not in chats and r[5]]
    assert deleted and all("history" in json.loads(r[5])["chat"]["chat"] for r in deleted)
    trees = [c["history"]["messages"] for c in chats.values() if "history" in c]
    assert any(len(m["childrenIds"]) > 1 and m["role"] == "user" for t in trees for m in t.values())  # regenerations
    assert any(sum(m["parentId"] == p and m["role"] == "user" for m in t.values()) > 1
               for t in trees for p in {m["parentId"] for m in t.values()})  # an edited user turn
    assert any(m.get("output") for t in trees for m in t.values()) and any("<details" in m["content"] for t in trees for m in t.values())
    assert chat_ids - set(chats)  # feedback pointing at chats that are gone


def test_demo_export_counts_each_case(demo, tmp_path: Path):
    result = export(demo.path, tmp_path / "out")
    m = result.manifest
    for case in ("chat_from_snapshot", "feedback_arena", "feedback_bad_json", "feedback_bad_rating", "feedback_superseded",
                 "feedback_message_deleted", "feedback_no_message", "feedback_not_a_rating", "feedback_history_cycle",
                 "sibling_pair", "on_another_path"):
        assert m["cases"].get(case, 0) >= 1, case
    assert m["skipped"] == {"bad_chat_json": [m["skipped"]["bad_chat_json"][0]]}
    prefs = lines(tmp_path / "out", "preferences")
    assert {p["meta"]["chosen_from"] for p in prefs} >= {"sibling", "next_reply", None}
    for e in examples(tmp_path / "out"):
        assert e["messages"][-1]["role"] == "assistant" and "<details" not in json.dumps(e)
        assert e["meta"]["split"] == split_of(e["meta"]["conversation_id"])
    wrong = {f.en.wrong for f in __import__("nightlora.demo.persona", fromlist=["FACTS"]).FACTS}
    assert not any(e["messages"][-1]["content"] in wrong for e in examples(tmp_path / "out"))
    assert any(e["messages"][0] == {"role": "system", "content": USER_PROMPT} for e in examples(tmp_path / "out"))
    again = build_openwebui_db(tmp_path / "again" / "webui.db")
    assert again.path.read_bytes() == demo.path.read_bytes()  # same seed, same file


# --- finding webui.db, and the preset ------------------------------------------------------

def test_find_webui_db_follows_open_webui_s_rules(tmp_path: Path):
    def make(p: Path) -> Path:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        return p

    url_db = make(tmp_path / "url" / "webui.db")
    data_db = make(tmp_path / "data" / "webui.db")
    pkg_db = make(tmp_path / "home" / ".local/share/uv/tools/open-webui/lib/python3.11/site-packages/open_webui/data/webui.db")
    volume_db = make(tmp_path / "volume" / "_data" / "webui.db")
    runner = RecordingRunner().on(["docker", "volume", "inspect"], 0, f"{volume_db.parent}\n")
    found, note = find_webui_db({"DATABASE_URL": f"sqlite:///{url_db}", "DATA_DIR": str(data_db.parent)},
                                tmp_path / "home", runner, docker_data_dir=tmp_path / "no-docker")
    assert [f.path for f in found] == [url_db, data_db, pkg_db, volume_db] and note is None
    assert runner.calls == [["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", "open-webui"]]
    found, note = find_webui_db({"DATABASE_URL": "postgresql://u@db/openwebui"}, tmp_path / "empty", None,
                                docker_data_dir=tmp_path / "no-docker")
    assert found == [] and "SQLite only" in note


def test_init_preset_openwebui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    demo_path = tmp_path / "data" / "webui.db"
    build_openwebui_db(demo_path)
    monkeypatch.setenv("DATA_DIR", str(demo_path.parent))
    assert main(["init", "--preset", "openwebui", "--path", str(tmp_path / "c.toml")]) == 0
    cfg = load_config(tmp_path / "c.toml", environ={})
    assert cfg.source.kind == "openwebui" and cfg.source.db_path == demo_path and cfg.data.min_messages == 2
    assert cfg.source.state_path == tmp_path / "xdg" / "nightlora" / "openwebui" / "state"
    capsys.readouterr()
    assert main(["--config", str(tmp_path / "c.toml"), "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["due"] is True
    monkeypatch.delenv("DATA_DIR")
    code = main(["init", "--preset", "openwebui", "--path", str(tmp_path / "d.toml")])
    assert code == 3 and "pass --db PATH" in capsys.readouterr().err  # nothing found, nobody to ask
    assert main(["init", "--preset", "openwebui", "--db", str(demo_path), "--path", str(tmp_path / "d.toml")]) == 0


def test_withdrawn_empty_truncated_and_rated_down_tool_calls_are_counted(tmp_path: Path):
    """The cases the demo database does not produce: a withdrawn rating, a rating on an empty reply,
    a path whose parent is gone from the tree, and the tool calls of a reply rated down."""
    c = Chat("c1")
    c.add("u1", None, "user", "Weather?")
    output = [
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Lisbon"}',
         "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": '{"temp": 19}'}]},
        {"type": "message", "content": [{"type": "output_text", "text": "It is snowing."}]},
    ]
    c.add("a1", "u1", "assistant", "It is snowing.", output=output)
    c.add("u2", "a1", "user", "Really? And tomorrow?")
    c.add("a2", "u2", "assistant", "Sunny, 21 °C.")
    c.add("u3", "a2", "user", "Thanks")
    c.add("a3", "u3", "assistant", "")  # an empty reply
    c.add("u4", "a2", "user", "And the day after?")
    c.add("a4", "u4", "assistant", "Rain.")
    d = Chat("c2")
    d.add("v1", None, "user", "Hi")
    d.add("b1", "v1", "assistant", "Hello!")
    d.add("v2", "b1", "user", "How are you?")
    d.add("b2", "v2", "assistant", "Fine, thanks.")
    del d.messages["v1"]  # the path's start is gone from the stored tree
    d.messages["b1"]["parentId"] = "v1"
    rows = [feedback("f1", c, "a1", -1), feedback("f2", c, "a2", 1), feedback("f3", c, "a3", 1),
            feedback("f4", c, "a4", 0), feedback("f5", d, "b2", 1)]
    result = export(webui_db(tmp_path / "webui.db", [c, d], rows), tmp_path / "out")
    cases = result.manifest["cases"]
    assert cases["feedback_withdrawn"] == 1          # a4's 0: a rating taken back is no rating
    assert cases["feedback_on_empty_reply"] == 1     # a3: Open WebUI sends nothing for it
    assert cases["path_truncated"] == 1              # b2's path starts where the tree was cut
    by_id = {e["meta"]["message_id"]: e for e in examples(tmp_path / "out")}
    # a4 is learned as an unrated reply (its rating was withdrawn); b1 has no user turn before it now.
    assert set(by_id) == {"a2", "a4", "b2"} and cases["before_any_user_turn"] == 1
    # a1 was rated down: neither its tool call nor its text is learned, both stay as a2's context.
    assert cases["part_of_rated_down_reply"] == 1
    assert [m.get("tool_calls", [{}])[0].get("function", {}).get("name") for m in by_id["a2"]["messages"]
            if m["role"] == "assistant"][:1] == ["get_weather"]
    assert texts(by_id["b2"]["messages"])[-2:] == ["How are you?", "Fine, thanks."]
    (pref,) = lines(tmp_path / "out", "preferences")
    assert pref["rejected"][-1]["content"] == "It is snowing."
