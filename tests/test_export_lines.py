"""The exporter's JSON lines are exactly json.dumps's, whatever the text, numbers and tool calls."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nightlora.sources.hanni.source import conversation_examples
from nightlora.dataset.encode import encode_record

SYSTEM = "You are Hanni. «Кратко»\u2028 \U0001f600"


def reference(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def records(messages: list[Any], feedback: dict[int, int] | None = None) -> list[dict[str, Any]]:
    result = conversation_examples(5, messages, feedback or {}, SYSTEM)
    assert not result.skip_reason, result.skip_reason
    return result.examples + result.preferences


def call(arguments: Any, name: str = "get_weather") -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}]}


def tool_chat(arguments: Any) -> list[Any]:
    return [
        {"role": "user", "content": "Weather?"},
        call(arguments),
        {"role": "tool", "tool_call_id": "c1", "content": "{\"temp_c\": 21.5}"},
        {"role": "assistant", "content": "Sunny."},
    ]


def assert_lines_match(recs: list[dict[str, Any]]) -> None:
    assert recs
    for record in recs:
        _, line = encode_record(record)
        assert line == reference(record)


# Control characters, quotes, backslashes, U+2028/2029, DEL, non-BMP and right-to-left text.
TRICKY = "\x00\x01\x1f\"\\/\b\f\n\r\t\x7f\u0085\u2028\u2029\ufeff\ufffe\U0001f600\u05d0 /no_think"


def test_every_kind_of_character_is_written_as_json_dumps_writes_it():
    text = "".join(chr(c) for c in range(0x20)) + TRICKY + "".join(chr(c) for c in range(0x80, 0x800, 7))
    assert_lines_match(records([["user", text], ["assistant", text], ["user", "?"], ["assistant", TRICKY]], {3: -1}))


@pytest.mark.parametrize("value", [1e-07, 1.5e-300, math.nan, -math.inf, -0.0, 2**70, [{"x": 1e-05}]])
def test_object_arguments_keep_json_dumps_numbers(value: Any):
    # orjson writes 1e-7 for 1e-07 and null for NaN: such records must still match.
    assert_lines_match(records(tool_chat({"key \u2028 \"quoted\"": value, "days": 2})))


def test_string_arguments_and_tool_messages_match():
    assert_lines_match(records(tool_chat('{"city": "Lisbon", "days": 2.50}'), {3: -1}))


def test_digest_covers_messages_and_tools_not_meta():
    first, second = records([["user", "a"], ["assistant", "b"], ["user", "c"], ["assistant", "d"]])
    digest, _ = encode_record(first)
    assert encode_record({**first, "meta": {**first["meta"], "conversation_id": 99}})[0] == digest
    assert encode_record(second)[0] != digest
    with_tools = records(tool_chat("{}"))[0]
    assert encode_record({**with_tools, "tools": []})[0] != encode_record(with_tools)[0]


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)  # surrogates are skipped rows
numbers = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
arguments = st.one_of(texts, st.dictionaries(texts, json_values, max_size=4))
message = st.one_of(
    st.tuples(st.sampled_from(["user", "assistant"]), texts).map(list),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool"]), "content": texts},
                          optional={"name": texts}),
    st.builds(call, arguments, st.sampled_from(["f", "g", "ö"])),
)
chat = st.lists(message, max_size=8).map(lambda m: [["user", "hello"], ["assistant", "hi"], *m])


@settings(max_examples=300, deadline=None)
@given(chat, st.dictionaries(st.integers(0, 10), st.sampled_from([1, -1, 0]), max_size=4))
def test_lines_of_random_conversations_are_json_dumps_lines(messages: list[Any], feedback: dict[int, int]):
    result = conversation_examples(5, messages, feedback, SYSTEM)
    for record in result.examples + result.preferences:
        assert encode_record(record)[1] == reference(record)
