"""Hostile input, property-based: databases of both sources with random JSON shapes, wrong types
in every column, missing tables and columns, invalid UTF-8, NUL bytes, lone surrogates, nesting
thousands deep, huge messages, feedback pointing nowhere; configs that are broken in every way;
a full disk for real (RLIMIT_FSIZE on the child).

The contract: a counted skip with its reason, or a one-line error with a distinct exit code;
never a traceback, a hang or a half-written dataset where the next stage reads.  Most cases
run in process (fast); a handful go through the real CLI for the one-line-error contract.
test_export_properties.py checks the exporter's rules on well-formed and garbage messages;
this file is about what no app writes.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nightlora.config import load_config
from nightlora.demo.database import build_demo_db
from nightlora.demo.openwebui import build_openwebui_db
from nightlora.errors import NightloraError
from nightlora.sources.hanni import db as hanni_db
from nightlora.sources.hanni.source import export_db
from nightlora.sources.openwebui.config import OpenWebUISourceConfig
from nightlora.sources.openwebui.source import OpenWebUISource
from nightlora.dataset.system_prompt import load_system_prompt
from nightlora.dataset.writer import export_dataset

NIGHTLORA = [sys.executable, "-m", "nightlora"]
FAST = settings(max_examples=int(os.environ.get("NIGHTLORA_HOSTILE_EXAMPLES", 40)), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])

# --- what goes into a column -----------------------------------------------------------

def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def nested_args(depth: int) -> str:
    """A valid conversation whose one tool call's arguments are an object ``depth`` levels deep."""
    args = '{"a":' * depth + "1" + "}" * depth
    return ('[{"role":"user","content":"hi"},{"role":"assistant","content":null,"tool_calls":[{"type":"function",'
            '"function":{"name":"f","arguments":' + args + '}}]},{"role":"tool","content":"ok"},'
            '{"role":"assistant","content":"done"}]')


SURROGATE = '[{"role":"user","content":"a\\ud800b"},{"role":"assistant","content":"x\\udfff"}]'
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=6),
                         st.sampled_from(["\ud800", "a\x00b", "</details>", '<details type="tool_calls" result="r">']))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                                 st.dictionaries(st.text(max_size=4), kids, max_size=3)),
                           max_leaves=12)
roles = st.sampled_from(["user", "assistant", "tool", "system", "", "USER", None, 1])


@st.composite
def message_like(draw: st.DrawFn) -> Any:
    """A message that is almost right: the right keys with wrong values, or the right values in odd places."""
    msg: dict[str, Any] = {"role": draw(roles), "content": draw(st.one_of(st.text(max_size=10), json_values))}
    if draw(st.booleans()):
        msg["tool_calls"] = draw(st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"type": st.just("function"), "function": st.fixed_dictionaries(
                {"name": st.one_of(st.text(max_size=3), json_values), "arguments": json_values})}), max_size=2)))
    if draw(st.booleans()):
        msg[draw(st.sampled_from(["tool_call_id", "name", "proactive", "id"]))] = draw(json_values)
    return msg


messages_text = st.one_of(
    json_values.map(json.dumps),                                           # any JSON shape at all
    st.lists(st.one_of(message_like(), json_values), max_size=6).map(json.dumps),
    st.lists(st.tuples(roles, st.one_of(st.text(max_size=8), json_values)).map(list), max_size=6).map(json.dumps),
    st.sampled_from([nested(900), nested(5000), nested(100_000), nested_args(300), nested_args(3000),
                     SURROGATE, '[["user", "a\\u0000b"], ["assistant", "c\\u0000"]]', "[NaN, Infinity]",
                     '[{"role": "user", "content": 1e999}]', "", "null", "[", '"\\ud800"']),
    st.text(max_size=20),                                                  # not JSON
)
column_value = st.one_of(st.none(), st.integers(-3, 40), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=5),
                         st.binary(max_size=5), st.sampled_from(["1", "-1", "x", "", "NaN", "1.0"]))
messages_column = st.one_of(messages_text, messages_text.map(str.encode), st.binary(max_size=40),
                            st.just(b'[["user","\xff\xfe"],["assistant","ok"]]'), st.none(), st.integers(-9, 9))

LOOSE_HANNI = """
CREATE TABLE conversations (id, started_at, ended_at, summary, message_count, messages);
CREATE TABLE message_feedback (id, conversation_id, message_index, rating, created_at, exported);
"""


def write_loose_hanni(path: Path, convs: list[tuple], feedback: list[tuple], typed: bool) -> None:
    """A Hanni-shaped database: ``typed`` with the app's INTEGER PRIMARY KEYs, else columns without
    types (another tool's copy: text ids, NULL ids, duplicates all possible)."""
    conn = sqlite3.connect(path)
    conn.executescript(hanni_db.SCHEMA_SQL.replace("UNIQUE(conversation_id, message_index)", "extra")
                       .replace(",\n    extra", "") if typed else LOOSE_HANNI)
    if typed:
        convs = [c for c in convs if isinstance(c[0], int)]
        convs = list({c[0]: c for c in convs}.values())
        feedback = list({f[0]: f for f in feedback if isinstance(f[0], int)}.values())
    conn.executemany("INSERT INTO conversations VALUES (?, ?, NULL, NULL, NULL, ?)", convs)
    conn.executemany("INSERT INTO message_feedback VALUES (?, ?, ?, ?, 't', ?)", feedback)
    conn.commit()
    conn.close()


def check_export(out: Path, result: Any) -> None:
    """A finished export: every file complete JSON lines, owner-only, no temp left, counts add up."""
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for name in ("train", "valid", "test", "preferences"):
        path = out / f"{name}.jsonl"
        if path.exists():
            lines = path.read_bytes().split(b"\n")
            assert lines[-1] == b""
            assert len(lines) - 1 == manifest["counts"][name]
            for line in lines[:-1]:
                json.loads(line)  # valid JSON, valid UTF-8
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())
    c = manifest["conversations"]
    assert c["exported"] + c["too_short"] + c["skipped"] == c["total"]
    assert sum(len(v) for k, v in manifest["skipped"].items() if not k.startswith("feedback_")) >= c["skipped"] - 0


TALLY: dict[str, int] = {}


def count(kind: str) -> None:
    TALLY[kind] = TALLY.get(kind, 0) + 1


@FAST
@given(convs=st.lists(st.tuples(column_value, column_value, messages_column), max_size=6),
       feedback=st.lists(st.tuples(column_value, column_value, column_value, column_value, column_value), max_size=8),
       typed=st.booleans())
def test_hanni_databases_with_anything_in_any_column(convs: list[tuple], feedback: list[tuple], typed: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db, out = Path(tmp) / "hanni.db", Path(tmp) / "out"
        write_loose_hanni(db, convs, feedback, typed)
        before = db.read_bytes()
        try:
            counts = hanni_db.feedback_counts(db, 1)
            result = export_db(db, out, None, min_messages=2)
        except NightloraError as e:  # a one-line error the CLI shows with its exit code
            assert "\n" not in str(e) and e.exit_code in (4, 5)
            count("hanni: one-line error")
            return
        assert db.read_bytes() == before  # reading never writes
        check_export(out, result)
        assert counts.total >= 0
        count("hanni: exported")
        try:
            hanni_db.mark_exported(db, result.manifest["feedback"]["seen"] and
                                   __import__("nightlora.dataset.manifest", fromlist=["read_seen"]).read_seen(out / "manifest.json"))
        except NightloraError as e:
            assert "\n" not in str(e)


HANNI_COLUMNS = {"conversations": ["id", "started_at", "ended_at", "summary", "message_count", "messages", "category"],
                 "message_feedback": ["id", "conversation_id", "message_index", "rating", "created_at", "exported",
                                      "updated_at", "device"]}


@FAST
@given(keep=st.fixed_dictionaries({t: st.one_of(st.none(), st.sets(st.sampled_from(cols))) for t, cols in HANNI_COLUMNS.items()}),
       extra_tables=st.lists(st.sampled_from(["flywheel_cycles", "sync_tombstones", "future_table"]), unique=True))
def test_hanni_schemas_of_other_versions(keep: dict[str, set[str] | None], extra_tables: list[str]) -> None:
    """Tables missing, columns missing or added, tables nobody knows: exported, or one line naming what is missing."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "hanni.db"
        conn = sqlite3.connect(db)
        for table, cols in keep.items():
            if cols is not None and cols:
                conn.execute(f"CREATE TABLE {table} ({', '.join(sorted(cols))})")
                row = {"id": 1, "conversation_id": 1, "message_index": 1, "rating": 1, "exported": 0,
                       "messages": json.dumps([["user", "hi"], ["assistant", "hello"]]), "started_at": "2025"}
                names = sorted(cols)
                conn.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                             [row.get(n, "x") for n in names])
        for t in extra_tables:
            conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, what)")
        conn.commit()
        conn.close()
        before = db.read_bytes()
        try:
            result = export_db(db, Path(tmp) / "out", None, min_messages=2)
        except NightloraError as e:
            message = str(e)
            assert e.exit_code == 4 and "\n" not in message
            for table, cols in keep.items():  # every missing table and column is named, at once
                if not cols:
                    assert f"no {table} table" in message, (message, keep)
                else:
                    for c in hanni_db.REQUIRED_COLUMNS[table] - set(cols):
                        assert c in message, (message, keep)
            count("hanni schema: one-line error naming what is missing")
        else:
            check_export(Path(tmp) / "out", result)
            count("hanni schema: exported")
        assert db.read_bytes() == before  # reading never alters the app's schema


# --- Open WebUI ---------------------------------------------------------------------------

@st.composite
def owui_history(draw: st.DrawFn) -> Any:
    """A chat's history.messages: a tree of random shape, with cycles, dangling parents, odd types."""
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=5, unique=True))
    messages: dict[str, Any] = {}
    for mid in ids:
        msg: dict[str, Any] = {"id": mid, "role": draw(st.sampled_from(["user", "assistant", "assistant", "system", 3, None])),
                               "content": draw(st.one_of(st.text(max_size=8), json_values)),
                               "parentId": draw(st.one_of(st.sampled_from([*ids, None, "zz"]), json_values))}
        if draw(st.booleans()):
            msg["output"] = draw(st.one_of(json_values, st.lists(st.fixed_dictionaries({
                "type": st.sampled_from(["message", "function_call", "function_call_output", "open_webui:code_interpreter"]),
                "call_id": st.one_of(st.just("c1"), json_values), "status": st.just("completed"),
                "name": st.one_of(st.just("f"), json_values), "arguments": json_values,
                "output": json_values, "content": json_values, "code": json_values}), max_size=3)))
        if draw(st.booleans()):
            msg[draw(st.sampled_from(["timestamp", "model", "selectedModelId", "childrenIds"]))] = draw(json_values)
        messages[mid] = draw(st.one_of(st.just(msg), json_values)) if draw(st.integers(0, 5)) == 0 else msg
    return messages


@st.composite
def owui_feedback(draw: st.DrawFn) -> tuple:
    data = draw(st.one_of(st.fixed_dictionaries({"rating": st.one_of(st.sampled_from([1, -1, 0, 2, "1", "x", True]), json_values)},
                                                optional={"model_id": json_values}), json_values))
    meta = draw(st.one_of(st.fixed_dictionaries({"chat_id": st.sampled_from(["c1", "c2", "gone"]),
                                                 "message_id": st.one_of(st.sampled_from(["a", "b", "c", "zz"]), json_values)},
                                                optional={"arena": json_values}), json_values))
    enc = draw(st.sampled_from(["json", "json", "bytes", "garbage"]))
    as_col = (lambda v: json.dumps(v)) if enc == "json" else (lambda v: json.dumps(v).encode()) if enc == "bytes" \
        else (lambda v: draw(st.one_of(st.binary(max_size=6), st.text(max_size=6), st.integers(-2**63, 2**63 - 1))))
    return (draw(st.one_of(st.text(max_size=4), st.integers(-2**63, 2**63 - 1), st.none())), as_col(data), as_col(meta),
            draw(st.one_of(st.integers(0, 5), st.none(), st.text(max_size=2), st.floats())),
            draw(st.sampled_from(["rating", "rating", "comment", None])))


@FAST
@given(chats=st.dictionaries(st.sampled_from(["c1", "c2"]), st.one_of(
    owui_history().map(lambda m: json.dumps({"history": {"messages": m, "currentId": "a"}})),
    json_values.map(json.dumps), st.binary(max_size=10), st.just(SURROGATE)), max_size=2),
    feedback=st.lists(owui_feedback(), max_size=6))
def test_open_webui_databases_with_anything_in_their_json(chats: dict[str, Any], feedback: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db, out = Path(tmp) / "webui.db", Path(tmp) / "out"
        conn = sqlite3.connect(db)
        conn.executescript('CREATE TABLE "user" (id, settings); CREATE TABLE chat (id, user_id, chat, created_at);'
                           "CREATE TABLE feedback (id, user_id, type, data, meta, snapshot, created_at, updated_at);")
        conn.executemany("INSERT INTO chat VALUES (?, 'u', ?, 1)", list(chats.items()))
        conn.executemany("INSERT INTO feedback VALUES (?, 'u', ?, ?, ?, NULL, 1, ?)",
                         [(fid, kind, data, meta, upd) for fid, data, meta, upd, kind in feedback])
        conn.commit()
        conn.close()
        source = OpenWebUISource(OpenWebUISourceConfig(kind="openwebui", db=db, data_dir=Path(tmp)))
        try:
            result = export_dataset(source, out, load_system_prompt(None)[0], min_messages=2)
        except NightloraError as e:
            assert "\n" not in str(e) and e.exit_code in (4, 5)
            count("openwebui: one-line error")
            return
        check_export(out, result)
        count("openwebui: exported")


# --- Open WebUI: one hostile reply in an otherwise valid chat (what the random trees rarely reach) ---

def _call(call_id: Any = "c1", arguments: Any = "{}", name: Any = "f") -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "status": "completed", "name": name, "arguments": arguments}


def _result(output: Any, call_id: Any = "c1") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


HOSTILE_REPLIES = {
    "call id is a list": {"output": [_call(["x"]), _result("ok", ["x"])]},
    "call id is an object": {"output": [_call({"a": 1}), _result("ok", {"a": 1})]},
    "message content is a number": {"output": [{"type": "message", "content": 5}]},
    "tool output is a number": {"output": [_call(), _result(5)]},
    "tool output with a lone surrogate": {"output": [_call(), _result("\udc00")]},
    "arguments object with a lone surrogate": {"output": [_call(arguments={"a": "\ud800"}), _result("ok")]},
    "arguments text with a lone surrogate": {"output": [_call(arguments="\ud800"), _result("ok")]},
    "arguments nested 600 deep": {"output": [_call(arguments=json.loads('{"a":' * 600 + "1" + "}" * 600)), _result("ok")]},
    "arguments a number": {"output": [_call(arguments=7), _result("ok")]},
    "code output with a lone surrogate": {"output": [{"type": "open_webui:code_interpreter", "code": "x", "output": "\ud800"}]},
    "content with a lone surrogate": {"content": "a\ud800"},
    "content parts not text": {"content": [{"type": "text", "text": 5}]},
    "content a NUL byte": {"content": "a\x00b"},
    "content 12 MB": {"content": "x" * (12 << 20)},
    "timestamp beyond a float": {"content": "ok", "timestamp": 10 ** 400},
    "role a list": {"role": ["assistant"], "content": "x"},
    "details without end, many": {"content": '<details type="tool_calls">' * 20_000},
}


def owui_db_with(tmp: Path, reply: dict[str, Any]) -> Path:
    messages = {
        "u": {"id": "u", "role": "user", "content": "hello", "parentId": None, "timestamp": 1},
        "a": {"id": "a", "role": "assistant", "content": "", "parentId": "u", "timestamp": 2, **reply},
        "u2": {"id": "u2", "role": "user", "content": "more", "parentId": "a", "timestamp": 3},
        "b": {"id": "b", "role": "assistant", "content": "fine", "parentId": "u2", "timestamp": 4},
    }
    db = tmp / "webui.db"
    conn = sqlite3.connect(db)
    conn.executescript('CREATE TABLE "user" (id, settings); CREATE TABLE chat (id, user_id, chat, created_at);'
                       "CREATE TABLE feedback (id, user_id, type, data, meta, snapshot, created_at, updated_at);")
    # json.dumps keeps lone surrogates as \\u escapes, as a JSON column may hold them
    conn.execute("INSERT INTO chat VALUES ('c1', 'u', ?, 1)", (json.dumps({"history": {"messages": messages, "currentId": "b"}}),))
    for i, mid in enumerate(("a", "b")):
        conn.execute("INSERT INTO feedback VALUES (?, 'u', 'rating', ?, ?, NULL, 1, ?)",
                     (f"f{i}", json.dumps({"rating": 1}), json.dumps({"chat_id": "c1", "message_id": mid}), i))
    conn.commit()
    conn.close()
    return db


@pytest.mark.parametrize("case", list(HOSTILE_REPLIES))
def test_open_webui_hostile_replies_are_skipped_or_exported_never_a_crash(tmp_path: Path, case: str) -> None:
    reply = {"role": "assistant", **HOSTILE_REPLIES[case]}
    db = owui_db_with(tmp_path, reply)
    source = OpenWebUISource(OpenWebUISourceConfig(kind="openwebui", db=db, data_dir=tmp_path))
    import time

    t0 = time.monotonic()
    result = export_dataset(source, tmp_path / "out", load_system_prompt(None)[0], min_messages=2)
    assert time.monotonic() - t0 < 20, "no pathological slowness"
    check_export(tmp_path / "out", result)
    m = result.manifest
    # either the reply made it (converted) or the conversation is skipped with a reason
    assert m["conversations"]["exported"] + m["conversations"]["skipped"] + m["conversations"]["too_short"] >= 1
    if m["conversations"]["skipped"]:
        assert any(m["skipped"].values())


# --- through the real CLI: the one-line-error contract ----------------------------------------

def cli(*args: str, cwd: Path, env_extra: dict[str, str] | None = None, timeout: float = 60,
        preexec=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLORA_")}
    env.update(HOME=str(cwd), XDG_CONFIG_HOME=str(cwd / "xdg"), **(env_extra or {}))
    return subprocess.run([*NIGHTLORA, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout, preexec_fn=preexec)


def one_line(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert r.returncode == code, (r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-1500:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nightlora: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


HOSTILE_ROWS = {  # id -> the messages column, written as is (bytes stay bytes)
    1: json.dumps([["user", "x" * (24 << 20)], ["assistant", "a reply to a huge message"]]),
    2: nested(100_000),
    3: nested_args(5000),
    4: SURROGATE,
    5: b'[["user","\xff\xfe"],["assistant","ok"]]',
    6: '[["user", "nul \\u0000 inside"], ["assistant", "fine\\u0000"]]',
    7: "[NaN]",
    8: None,
    9: json.dumps({"role": "user"}),
    10: json.dumps([["user", "hi"], ["assistant", "hello"], ["user", "bye"], ["assistant", "ciao"]]),
}


def test_hostile_rows_through_the_cli_are_counted_skips(tmp_path: Path) -> None:
    db = tmp_path / "hanni.db"
    write_loose_hanni(db, [(cid, "2025-01-01", raw) for cid, raw in HOSTILE_ROWS.items()],
                      [(1, 1, 1, 1, 0), (2, 10, 1, 1, 0), (3, 10, 3, -1, 0), (4, 10, 99, 1, 0), (5, 10, -1, "x", 0),
                       (6, 4, 1, 5, 0), (7, 77, 1, 1, 0)], typed=True)
    r = cli("export", "--db", str(db), "--out", str(tmp_path / "out"), "--min-messages", "2", "--json", cwd=tmp_path,
            timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    skipped = manifest["skipped"]
    for reason, cid in (("bad_json", 2), ("bad_json", 3), ("bad_text", 4), ("bad_encoding", 5), ("no_messages", 8),
                        ("not_a_list", 9)):
        assert cid in skipped.get(reason, []), (reason, cid, skipped)
    assert manifest["counts"]["train"] + manifest["counts"]["valid"] + manifest["counts"]["test"] >= 2
    assert manifest["feedback"]["orphans"] == 1  # feedback 7 points at a conversation that does not exist
    assert any(k.startswith("feedback_") for k in skipped), skipped  # index 99, index -1, rating "x", rating 5
    check_export(tmp_path / "out", None)


def _db_case(tmp: Path, case: str) -> Path:
    db = tmp / "hanni.db"
    if case == "not sqlite":
        db.write_bytes(os.urandom(4096))
    elif case == "empty file":
        db.write_bytes(b"")
    elif case == "a folder":
        db.mkdir()
    elif case == "a FIFO":
        os.mkfifo(db)
    elif case in ("no feedback table", "feedback lacks exported", "conversations lacks messages"):
        conn = sqlite3.connect(db)
        conn.executescript(hanni_db.SCHEMA_SQL)
        if case == "no feedback table":
            conn.execute("DROP TABLE message_feedback")
        elif case == "feedback lacks exported":
            conn.execute("ALTER TABLE message_feedback DROP COLUMN exported")
        else:
            conn.execute("ALTER TABLE conversations DROP COLUMN messages")
        conn.commit()
        conn.close()
    elif case == "truncated":
        build_demo_db(db, conversations=20)
        db.write_bytes(db.read_bytes()[:3000])
    return db


DB_CASES = ["not sqlite", "empty file", "a folder", "a FIFO", "no feedback table", "conversations lacks messages",
            "truncated"]  # "exported" missing is read: test_app_versions.py


@pytest.mark.parametrize("case", DB_CASES)
def test_broken_databases_are_one_line_source_errors(tmp_path: Path, case: str) -> None:
    db = _db_case(tmp_path, case)
    for attempt in (lambda: hanni_db.feedback_counts(db, 1), lambda: export_db(db, tmp_path / "out", None)):
        with pytest.raises(NightloraError) as e:
            attempt()
        assert e.value.exit_code == 4 and str(db) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("case", ["a FIFO", "not sqlite"])
def test_broken_databases_through_the_cli(tmp_path: Path, case: str) -> None:
    db = _db_case(tmp_path, case)
    one_line(cli("check", "--db", str(db), cwd=tmp_path, timeout=30), 4, str(db))
    one_line(cli("export", "--db", str(db), "--out", str(tmp_path / "out"), cwd=tmp_path, timeout=30), 4, str(db))


# --- configs ------------------------------------------------------------------------------------

toml_keys = st.sampled_from(["data.min_feedback", "data.min_messages", "data.split", "train.epochs", "train.iters",
                             "train.backend", "target.kind", "target.port", "source.data_dir", "schedule.at",
                             "eval.gate", "nosuch.key", "train.lora_rank", "teacher.enabled"])
toml_values = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(), st.text(max_size=6),
                        st.lists(st.integers(-5, 200), max_size=4), st.just("inf"), st.just("a\x00b"))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


@FAST
@given(st.one_of(
    st.dictionaries(toml_keys, toml_values, max_size=4).map(
        lambda d: "".join(f"[{k.split('.')[0]}]\n{k.split('.')[1]} = {_toml_value(v)}\n" for k, v in d.items()).encode()),
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"[data\n", b"[data]\nmin_feedback = \xff\n", b"a = " + b"[" * 5000, b"\x00", b"[[data]]\n",
                     b"data = 5\n", b"[target]\nkind = []\n", b"[teacher]\nkind = {}\n",  # a kind that is no name
                     b"[train]\nepochs = inf\n", b"[train]\nepochs = 1e308\n", b'[source]\ndata_dir = "\\u0000"\n']),
))
def test_any_config_file_is_a_config_or_a_one_line_config_error(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nightlora.toml"
        path.write_bytes(text)
        try:
            load_config(path, environ={})
            count("config: valid")
        except NightloraError as e:
            assert e.exit_code == 3 and "\n" not in str(e)
            count("config: one-line error")


CONFIG_CASES = {
    "a folder": lambda p: p.mkdir(),
    "a FIFO": lambda p: os.mkfifo(p),
    "invalid UTF-8": lambda p: p.write_bytes(b"[data]\nmin_feedback = 3 # \xff\xfe\n"),
    "a NUL byte": lambda p: p.write_bytes(b"[data]\nmin_feedback = 3\x00\n"),
    "syntax error": lambda p: p.write_text("[data\nmin_feedback = 3\n"),
    "wrong types": lambda p: p.write_text('[data]\nmin_feedback = "many"\nsplit = 5\n[train]\nepochs = "inf"\n'),
    "impossible values": lambda p: p.write_text("[data]\nmin_feedback = -1\nsplit = [200, 0, 0]\n[target]\nport = 70000\n"),
    "NUL in a path value": lambda p: p.write_text('[source]\ndata_dir = "/tmp/a\\u0000b"\n'),
    "a symlink loop": lambda p: p.symlink_to(p),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_broken_config_files_are_one_line_errors_and_never_hang(tmp_path: Path, case: str) -> None:
    path = tmp_path / "nightlora.toml"
    CONFIG_CASES[case](path)
    with pytest.raises(NightloraError) as e:
        load_config(path, environ={})  # a FIFO must not block the read
    assert e.value.exit_code == 3 and str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["a FIFO", "a folder", "invalid UTF-8"])
def test_broken_config_files_through_the_cli(tmp_path: Path, case: str) -> None:
    path = tmp_path / "nightlora.toml"
    CONFIG_CASES[case](path)
    one_line(cli("-c", str(path), "check", cwd=tmp_path, timeout=20), 3, str(path))
    if case == "a FIFO":
        one_line(cli("check", cwd=tmp_path, env_extra={"NIGHTLORA_CONFIG": str(path)}, timeout=20), 3, str(path))


def test_nightlora_debug_0_is_off(tmp_path: Path) -> None:
    path = tmp_path / "nightlora.toml"
    path.write_text("[data\n")
    one_line(cli("-c", str(path), "check", cwd=tmp_path, env_extra={"NIGHTLORA_DEBUG": "0"}), 3)
    r = cli("-c", str(path), "check", cwd=tmp_path, env_extra={"NIGHTLORA_DEBUG": "1"})
    assert r.returncode == 3 and "Traceback" in r.stderr


# --- a full disk, for real ---------------------------------------------------------------------

def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_full_disk_during_export_is_one_line_and_leaves_no_dataset(tmp_path: Path) -> None:
    db = tmp_path / "hanni.db"
    build_demo_db(db, conversations=40)
    out = tmp_path / "out"
    args = ("export", "--db", str(db), "--out", str(out), "--min-messages", "2")
    # a complete earlier export in the same folder: after a failure, none of its files may pose as the new one's
    assert cli(*args, cwd=tmp_path).returncode == 0
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    assert sizes["train.jsonl"] > 40_000, sizes
    r = cli(*args, cwd=tmp_path, preexec=_limit_file_size(sizes["train.jsonl"] // 2))
    one_line(r, 5, "File too large")
    left = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in left and "train.jsonl" not in left, left
    assert not [n for n in left if n.endswith(".tmp")], left
    # the next stage finds no dataset there, and says so in one line
    one_line(cli("train", "--data", str(out), "--dry-run", cwd=tmp_path), 6, str(out))

    # the manifest is what cannot be written: many skipped ids make it the largest file
    junk = tmp_path / "junk.db"
    write_loose_hanni(junk, [(i, "2025", "not json") for i in range(1, 4000)] + [(5000, "2025", HOSTILE_ROWS[10])],
                      [(1, 5000, 1, 1, 0), (2, 5000, 3, 1, 0)], typed=True)
    jargs = ("export", "--db", str(junk), "--out", str(out), "--min-messages", "2")
    r = cli(*jargs, cwd=tmp_path, preexec=_limit_file_size(8192))
    one_line(r, 5, "manifest.json")
    assert sorted(p.name for p in out.iterdir()) == [], sorted(p.name for p in out.iterdir())
    # the cause gone, a rerun succeeds
    assert cli(*jargs, cwd=tmp_path).returncode == 0
    assert json.loads((out / "manifest.json").read_text())["conversations"]["skipped"] == 3999


@pytest.fixture(scope="module", autouse=True)
def _report_tally():
    yield
    if TALLY:
        print("\nhostile-input outcomes:", ", ".join(f"{k}: {v}" for k, v in sorted(TALLY.items())))


@pytest.mark.parametrize("name", ["train.jsonl"])
def test_an_output_folder_whose_files_are_the_database_is_refused(tmp_path: Path, name: str) -> None:
    db = tmp_path / name  # the app's database, named like one of the export's files
    build_demo_db(db, conversations=20)
    before = db.read_bytes()
    one_line(cli("export", "--db", str(db), "--out", str(tmp_path), cwd=tmp_path), 5, "would overwrite the database")
    assert db.read_bytes() == before
    # an output path under a file: one line too
    one_line(cli("export", "--db", str(db), "--out", str(db / "sub"), cwd=tmp_path), 5, str(db / "sub"))


# --- the tool's own files edited by hand or by another tool --------------------------------------

CRON_LINES = {
    "commented out": ("# 0 3 * * * /py -m nightlora run # nightlora nightly", False, None),
    "@daily": ("@daily /py -m nightlora run # nightlora nightly", True, "@daily"),
    "ranges and steps": ("*/15 1-3 * * * /py -m nightlora run # nightlora nightly", True, "*/15 1-3 * * *"),
    "plain": ("5 3 * * * /py -m nightlora run # nightlora nightly", True, "03:05"),
}


@pytest.mark.parametrize("case", list(CRON_LINES))
def test_crontab_lines_edited_by_hand(tmp_path: Path, case: str) -> None:
    from nightlora.schedule import CronSchedule
    from server_fixtures import RecordingRunner

    line, installed, at = CRON_LINES[case]
    st = CronSchedule(["/py"], tmp_path, RecordingRunner().on(["crontab", "-l"], 0, f"MAILTO=x\n{line}\n")).status()
    assert (st.installed, st.at) == (installed, at)


@pytest.mark.parametrize("case", ["not UTF-8", "a folder", "a FIFO"])
def test_a_systemd_timer_file_that_cannot_be_read(tmp_path: Path, case: str) -> None:
    from nightlora.schedule import SystemdSchedule
    from server_fixtures import RecordingRunner

    s = SystemdSchedule(["/py"], RecordingRunner(), unit_dir=tmp_path)
    {"not UTF-8": lambda p: p.write_bytes(b"[Timer]\nOnCalendar=\xff\n"), "a folder": lambda p: p.mkdir(),
     "a FIFO": lambda p: os.mkfifo(p)}[case](s.timer_path)
    st = s.status()
    assert st.installed and st.at is None and "schedule install" in st.notes[0]


VERSION_JSON = ['{"data_counts": [1, 2]}', '{"data_counts": {"a": "x", "b": true}, "created_at": 5, "base_model": 7, '
                '"eval_score": "high", "rejected": 3, "run_id": "x"}', "[1]", '"x"', "\xff", "[" * 5000, "FIFO"]


@pytest.mark.parametrize("text", VERSION_JSON, ids=range(len(VERSION_JSON)))
def test_version_json_with_wrong_types_is_read_as_unknown(tmp_path: Path, text: str) -> None:
    from nightlora.state.store import AdapterStore

    v = tmp_path / "v0001"
    v.mkdir()
    (v / "adapters.safetensors").write_bytes(b"x")
    (v / "adapter_config.json").write_text("{}")
    if text == "FIFO":
        os.mkfifo(v / "version.json")
    else:
        (v / "version.json").write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff" else b"\xff")
    store = AdapterStore(tmp_path)
    store.set_current("v0001")
    (got,) = store.list()
    assert got.created_at is None or isinstance(got.created_at, str)
    assert all(isinstance(n, int) for n in got.data_counts.values()) and got.eval_score is None
    assert json.dumps(got.to_dict())  # what `nightlora adapters --json` prints


TRAIN_LINES = {
    "not UTF-8": (b"\xff\xfe\n", "not UTF-8"),
    "nested too deep": (b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    "lone surrogate": (b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}\n',
                       "surrogate"),
    "content a number": (b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}\n',
                         "text content"),
    "messages a number": (b'{"messages": 5}\n', "messages"),
}


@pytest.mark.parametrize("case", list(TRAIN_LINES))
def test_training_data_that_is_not_what_export_writes(tmp_path: Path, case: str) -> None:
    from nightlora.errors import TrainError
    from nightlora.train.splits import read_splits

    raw, words = TRAIN_LINES[case]
    (tmp_path / "train.jsonl").write_bytes(raw)
    with pytest.raises(TrainError, match=words) as e:
        read_splits(tmp_path)
    assert "train.jsonl:1" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_infinite_numbers_in_the_config_are_refused(value: str) -> None:
    from nightlora.errors import ConfigError

    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, environ={}, overrides={"train.epochs": float(value)})


def test_init_where_no_file_can_be_written(tmp_path: Path) -> None:
    (tmp_path / "a file").write_text("")
    one_line(cli("init", "--path", str(tmp_path / "a file" / "nightlora.toml"), cwd=tmp_path), 3, "cannot write")
