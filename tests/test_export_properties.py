"""Property tests: random message structures, random ratings, garbage rows.

The oracle below reads the raw rows itself (not through the exporter's parser), so it
checks the exporter's rules rather than restating its code.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nightlora.demo.database import write_hanni_db
from nightlora.sources.hanni.source import export_db as export_dataset
from nightlora.sources.hanni.source import conversation_examples
from nightlora.dataset.split import split_of

SYSTEM = "System prompt."
META_KEYS = {"conversation_id", "message_index", "rating", "source", "split"}

SPECIAL_TEXT = [
    "[Action result: ok]", "```action\n{\"type\": \"x\"}\n```", "think", "I think so", " /no_think",
    "/no_think", "a /no_think", "a /no_think /no_think", "", "  ", "Привет", "[Action result: x] /no_think",
]
texts = st.one_of(st.text(max_size=20), st.sampled_from(SPECIAL_TEXT), st.text(max_size=8).map(lambda t: t + " /no_think"))
garbage = st.one_of(st.none(), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2), st.text(max_size=3))
roles = st.sampled_from(["user", "assistant", "assistant", "tool", "system"])
arguments = st.one_of(
    st.just('{"city": "Lisbon", "days": 2}'), st.text(max_size=8),
    st.dictionaries(st.sampled_from(["a", "b"]), st.one_of(st.integers(), st.text(max_size=3), st.none(), st.booleans())),
)
tool_call = st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]), "arguments": arguments})},
    optional={"id": st.text(max_size=4)},
)


@st.composite
def object_message(draw: st.DrawFn, valid: bool) -> Any:
    msg: dict[str, Any] = {"role": draw(roles if valid else st.one_of(roles, garbage))}
    if valid and msg["role"] == "assistant" and draw(st.booleans()):
        msg["tool_calls"] = draw(st.lists(tool_call, min_size=1, max_size=2))
        msg["content"] = draw(st.one_of(st.none(), texts))
    else:
        msg["content"] = draw(texts if valid else st.one_of(texts, garbage))
    if msg["role"] == "tool" and draw(st.booleans()):
        msg["tool_call_id"] = draw(st.text(max_size=4))
    if draw(st.booleans()):
        msg["name"] = draw(st.text(max_size=4))
    if not valid and draw(st.booleans()):
        msg["tool_calls"] = draw(st.one_of(garbage, st.lists(st.one_of(tool_call, garbage), max_size=2)))
    return msg


pair_message = st.tuples(st.sampled_from(["user", "assistant", "assistant", "system"]), texts).map(list)
valid_message = st.one_of(object_message(True), pair_message)
any_message = st.one_of(valid_message, valid_message, valid_message, valid_message, object_message(False),
                        st.tuples(garbage, texts).map(list), garbage)
conversation = st.one_of(
    st.lists(valid_message, max_size=10), st.lists(valid_message, max_size=10),
    st.lists(any_message, max_size=10), garbage, st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
feedback_maps = st.dictionaries(
    st.one_of(st.integers(-2, 12), st.none()), st.sampled_from([1, 1, -1, -1, 0, 2, "x", None]), max_size=6
)


def _raw_role(item: Any) -> Any:
    return item.get("role") if isinstance(item, dict) else item[0]


def _raw_content(item: Any) -> str:
    c = item.get("content") if isinstance(item, dict) else item[1]
    c = "" if c is None else c
    return c[: -len(" /no_think")] if c.endswith(" /no_think") else c


def _learnable(item: Any) -> bool:
    return _raw_role(item) == "assistant" and (bool(_raw_content(item).strip()) or bool(isinstance(item, dict) and item.get("tool_calls")))


def _check_message(out: dict[str, Any], item: Any) -> None:
    assert out["role"] == _raw_role(item)
    assert out["content"] == _raw_content(item)  # no text altered but the /no_think suffix
    if isinstance(item, dict) and item.get("tool_calls"):
        assert [c["function"] for c in out["tool_calls"]] == [
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in item["tool_calls"]
        ]
    assert set(out) <= {"role", "content", "tool_calls", "tool_call_id", "name"}


def _check_context(messages: list[dict[str, Any]], raw: list[Any], upto: int) -> None:
    assert messages[0] == {"role": "system", "content": SYSTEM}
    expected = [item for item in raw[:upto] if _raw_role(item) != "system"]
    assert len(messages) - 1 == len(expected)
    for out, item in zip(messages[1:], expected):
        _check_message(out, item)


@settings(max_examples=200, deadline=None)
@given(conversation, feedback_maps, st.integers(0, 5))
def test_examples_follow_the_rules_on_any_input(raw: Any, feedback: dict[Any, Any], min_messages: int):
    # proactive_targets: the rules below hold for every assistant turn, including one that opens
    # a conversation (Hanni's proactive messages, context only by default: test_proactive.py).
    result = conversation_examples(3, raw, feedback, SYSTEM, split="valid", min_messages=min_messages,
                                   proactive_targets=True)
    if result.skip_reason or result.too_short:
        assert not result.examples and not result.preferences
        return
    valid_rating = {i: r for i, r in feedback.items() if r in (-1, 0, 1) and not isinstance(r, bool)}
    for example in result.examples:
        meta = example["meta"]
        assert META_KEYS <= set(meta) and meta["source"] == "feedback" and meta["split"] == "valid"
        index = meta["message_index"]
        target = example["messages"][-1]
        assert target["role"] == "assistant" and _raw_role(raw[index]) == "assistant"
        assert valid_rating.get(index) != -1  # a rated-down turn is never a target
        assert meta["rating"] == (valid_rating.get(index) or None)
        _check_context(example["messages"][:-1], raw, index)
        _check_message(target, raw[index])
        assert ("tools" in example) == any("tool_calls" in m for m in example["messages"])
    for pref in result.preferences:
        index = pref["meta"]["message_index"]
        assert valid_rating.get(index) == -1 and pref["meta"]["rating"] == -1
        _check_context(pref["prompt"], raw, index)
        _check_message(pref["rejected"][0], raw[index])
        if pref["chosen"] is not None:
            chosen_index = pref["meta"]["chosen_index"]
            assert chosen_index > index and valid_rating.get(chosen_index) != -1
            _check_message(pref["chosen"][0], raw[chosen_index])
    targets = {e["meta"]["message_index"] for e in result.examples} | {p["meta"]["message_index"] for p in result.preferences}
    assert targets == {i for i, item in enumerate(raw) if _learnable(item)}


# --- whole exports of random databases -------------------------------------------------

def _row_text(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw
    return json.dumps(raw, ensure_ascii=False)


db_conversation = st.one_of(
    st.lists(valid_message, min_size=2, max_size=8), st.lists(valid_message, min_size=2, max_size=8),
    conversation, st.binary(max_size=10), st.just(b'[["user", "\xff"]]'),
)
started = st.sampled_from(["2025-01-01T10:00:00", "2025-01-02T10:00:00", "2024-12-31T23:00:00", None])


def _db_state(path: Path) -> tuple[str, list[Any]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = [list(conn.execute(f"SELECT * FROM {t} ORDER BY id")) for t in ("conversations", "message_feedback", "flywheel_cycles")]
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest(), rows


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(db_conversation, started), max_size=12), st.data())
def test_export_of_random_databases(convs: list[tuple[Any, Any]], data: st.DataObject):
    conv_rows = [(cid, when, when, None, 0, _row_text(raw)) for cid, (raw, when) in enumerate(convs, 1)]
    feedback = data.draw(st.lists(
        st.tuples(st.integers(0, len(convs) + 1), st.integers(-1, 9), st.sampled_from([1, -1, 0, 2]),
                  st.just("t"), st.sampled_from([0, 0, 1])),
        max_size=15, unique_by=lambda r: (r[0], r[1]),
    ))
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "hanni.db"
        write_hanni_db(db, conv_rows, feedback)
        before = _db_state(db)
        result = export_dataset(db, Path(tmp) / "out", None, min_messages=2)
        assert _db_state(db) == before  # export never writes to the database

        out = Path(tmp) / "out"
        bodies = set()
        for split in ("train", "valid", "test"):
            path = out / f"{split}.jsonl"
            assert path.exists() == (result.counts[split] > 0)
            if not path.exists():
                continue
            lines = path.read_bytes().split(b"\n")[:-1]  # not splitlines(): U+2028 may sit inside a string
            assert len(lines) == result.counts[split]
            for line in lines:
                record = json.loads(line)
                assert line == json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
                assert record["messages"][-1]["role"] == "assistant"
                assert split_of(record["meta"]["conversation_id"]) == split == record["meta"]["split"]
                body = json.dumps({k: v for k, v in record.items() if k != "meta"}, sort_keys=True)
                assert body not in bodies  # identical examples kept once
                bodies.add(body)
        for path in out.iterdir():
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert not path.name.endswith(".tmp")
        manifest = json.loads((out / "manifest.json").read_text())
        ids = {row[0] for row in conv_rows}
        assert all(set(v) <= ids for v in manifest["skipped"].values())
        stats = manifest["conversations"]
        assert stats["total"] == len(convs)
        assert stats["exported"] + stats["too_short"] + stats["skipped"] == stats["total"]
        unexported = sum(1 for r in feedback if r[4] == 0)
        assert manifest["feedback"]["seen"]["count"] == unexported
        assert manifest["feedback"]["high_water"] == (len(feedback) or None)
