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
