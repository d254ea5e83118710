"""The export's per-conversation rules, one by one, on the pure function (no SQLite)."""

from __future__ import annotations

import json

import pytest

from nightlora.sources.hanni.source import conversation_examples
from nightlora.dataset.messages import BadConversation
from nightlora.sources.hanni.messages import parse_messages

SYSTEM = "You are Hanni."


def run(messages, feedback=None, **kw):
    return conversation_examples(7, messages, feedback or {}, SYSTEM, **kw)


def targets(result):
    return [e["meta"]["message_index"] for e in result.examples]


PAIRS = [
    ["user", "Hi"],
    ["assistant", "Hello!"],
    ["user", "My cat is Murka."],
    ["assistant", "Got it."],
]


def test_every_assistant_turn_is_one_example_with_all_turns_before_it():
    r = run(PAIRS)
    assert targets(r) == [1, 3]
    first, second = r.examples
    assert first["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert second["messages"][1:] == [{"role": role, "content": c} for role, c in PAIRS]
    assert first["meta"] == {
        "conversation_id": 7, "message_index": 1, "rating": None, "source": "feedback",
        "split": "train", "tool_call": False,
    }


def test_object_format_with_null_content_tool_calls_and_tool_results():
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lisbon", "days": 2}'}}
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": '{"temp": 19}'},
        {"role": "assistant", "content": "19 °C."},
    ]
    r = run(msgs)
    assert r.skip_reason is None and targets(r) == [1, 3]
    call_example, reply_example = r.examples
    assert call_example["messages"][-1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert call_example["meta"]["tool_call"] is True
    assert reply_example["messages"][-2] == {"role": "tool", "content": '{"temp": 19}', "tool_call_id": "c1", "name": "get_weather"}
    assert reply_example["tools"] == [{
        "type": "function",
        "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}},
    }]
    assert "tools" in call_example


def test_examples_without_tool_calls_declare_no_tools():
    assert all("tools" not in e for e in run(PAIRS).examples)


def test_user_and_tool_messages_are_never_targets():
    msgs = PAIRS + [["user", "Bye"]]
    r = run(msgs)
    assert all(e["messages"][-1]["role"] == "assistant" for e in r.examples)
    assert targets(r) == [1, 3]


def test_rated_down_turn_is_never_a_target_and_becomes_a_preference_with_the_next_reply():
    msgs = [
        ["user", "What's my cat called?"],
        ["assistant", "Barsik."],
        ["user", "No, it's Murka."],
        ["assistant", "Sorry: Murka."],
    ]
    r = run(msgs, {1: -1})
    assert targets(r) == [3]
    # The rated-down reply stays in the later example's context: the user saw it.
    assert r.examples[0]["messages"][2] == {"role": "assistant", "content": "Barsik."}
    (pref,) = r.preferences
    assert pref["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What's my cat called?"}]
    assert pref["rejected"] == [{"role": "assistant", "content": "Barsik."}]
    assert pref["chosen"] == [{"role": "assistant", "content": "Sorry: Murka."}]
    assert pref["meta"]["chosen_from"] == "next_reply" and pref["meta"]["chosen_index"] == 3
    assert pref["meta"]["rating"] == -1 and pref["meta"]["message_index"] == 1


def test_a_directly_following_up_rated_alternative_is_preferred_as_chosen():
    msgs = [["user", "Q"], ["assistant", "bad"], ["assistant", "good"], ["user", "again"], ["assistant", "later"]]
    r = run(msgs, {1: -1, 2: 1})
    (pref,) = r.preferences
    assert pref["chosen"] == [{"role": "assistant", "content": "good"}] and pref["meta"]["chosen_from"] == "alternative"
    assert targets(r) == [2, 4]


def test_no_chosen_when_nothing_follows_or_the_next_reply_is_rated_down_too():
    last = run([["user", "Q"], ["assistant", "A"], ["user", "Q2"], ["assistant", "bad"]], {3: -1})
    assert last.preferences[0]["chosen"] is None and last.preferences[0]["meta"]["chosen_from"] is None
    both = run([["user", "Q"], ["assistant", "bad"], ["user", "again"], ["assistant", "worse"]], {1: -1, 3: -1})
    assert [p["chosen"] for p in both.preferences] == [None, None]
    assert targets(both) == []


def test_rating_zero_is_unrated_and_one_is_recorded():
    r = run(PAIRS, {1: 0, 3: 1})
    assert [e["meta"]["rating"] for e in r.examples] == [None, 1]


@pytest.mark.parametrize("text, expected", [
    ("Hi /no_think", "Hi"),
    ("Hi /no_think /no_think", "Hi /no_think"),
    ("I think so", "I think so"),
    ("no_think", "no_think"),
    ("Hi/no_think", "Hi/no_think"),
    ("Hi /no_think ", "Hi /no_think "),
    ("/no_think", "/no_think"),
])
def test_no_think_is_removed_only_as_a_trailing_suffix(text, expected):
    r = run([{"role": "user", "content": text}, {"role": "assistant", "content": "think"}, ["user", "x"], ["assistant", "y"]])
    assert r.examples[0]["messages"][1]["content"] == expected
    assert r.examples[0]["messages"][2]["content"] == "think"


def test_conversation_with_fewer_than_two_real_messages_is_skipped():
    block = "Sure.\n```action\n{\"type\": \"timer\"}\n```"
    msgs = [["user", "[Action result: done]"], ["assistant", block], ["user", "Hello"], ["assistant", block]]
    assert run(msgs).skip_reason == "too_few_real_messages"
    # One more real message on each side makes it exportable; action turns are still targets.
    ok = run(msgs + [["assistant", "Done."]])
    assert ok.skip_reason is None and targets(ok) == [1, 3, 4]


def test_actions_are_kept_verbatim_as_context_and_targets():
    block = "```action\n{\"type\": \"reminder\"}\n```"
    msgs = [["user", "Remind me"], ["assistant", block], ["user", "[Action result: ok]"], ["assistant", "Done."]]
    r = run(msgs)
    assert [m["content"] for m in r.examples[1]["messages"][1:]] == [m[1] for m in msgs]


def test_too_short_conversations_are_left_out_but_not_skipped():
    r = run(PAIRS, min_messages=5)
    assert r.too_short and r.skip_reason is None and not r.examples


@pytest.mark.parametrize("parsed, reason", [
    ({"role": "user"}, "not_a_list"),
    ("text", "not_a_list"),
    ([["user", "a"], 5], "bad_message"),
    ([["user", "a", "b"]], "bad_message"),
    ([["narrator", "a"], ["assistant", "b"]], "bad_role"),
    ([{"role": None, "content": "a"}], "bad_role"),
    ([["tool", "a"]], "bad_role"),
    ([["user", 42], ["assistant", "b"]], "bad_content"),
    ([{"role": "user", "content": None}], "bad_content"),
    ([{"role": "assistant", "content": None}], "bad_content"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "bad_content"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}], "bad_tool_calls"),
    ([{"role": "assistant", "content": None, "tool_calls": "f()"}], "bad_tool_calls"),
    ([{"role": "user", "content": "a", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
     "bad_tool_calls"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": []}}]}], "bad_tool_calls"),
    ([{"role": "tool", "content": "a", "tool_call_id": 5}], "bad_tool_result"),
    ([{"role": "user", "content": "\ud800"}], "bad_text"),
])
def test_unexpected_structures_are_skipped_with_a_reason(parsed, reason):
    r = run(parsed)
    assert r.skip_reason == reason and not r.examples and not r.preferences


@pytest.mark.parametrize("raw, reason", [
    (b'[["user", "cut', "bad_json"),
    (b'["user", "\xff"]', "bad_encoding"),
    (None, "no_messages"),
    (b"[" * 100000, "bad_json"),
])
def test_unparsable_rows_raise_a_reasoned_error(raw, reason):
    with pytest.raises(BadConversation) as e:
        parse_messages(raw)
    assert e.value.reason == reason


def test_bad_feedback_is_reported_and_ignored():
    r = run(PAIRS, {0: 1, 9: -1, -1: 1, 3: 5, None: 1, 1: -1})
    assert sorted(r.feedback_problems) == sorted([
        "feedback_on_non_assistant", "feedback_index_out_of_range", "feedback_index_out_of_range",
        "feedback_bad_rating", "feedback_index_out_of_range",
    ])
    assert targets(r) == [3] and len(r.preferences) == 1


def test_stored_system_messages_are_replaced_by_the_configured_prompt_and_keep_their_index():
    msgs = [["system", "old prompt"], ["user", "Hi"], ["assistant", "Hello"], ["user", "Q"], ["assistant", "A"]]
    r = run(msgs, {2: 1})
    assert targets(r) == [2, 4]
    assert [m["content"] for m in r.examples[1]["messages"]] == [SYSTEM, "Hi", "Hello", "Q", "A"]
    assert r.examples[0]["meta"]["rating"] == 1


def test_empty_assistant_turns_are_context_not_targets():
    r = run([["user", "a"], ["assistant", "  "], ["user", "b"], ["assistant", "c"]])
    assert targets(r) == [3]
    assert r.examples[0]["messages"][2] == {"role": "assistant", "content": "  "}


def test_empty_or_null_optional_fields_are_absent():
    msgs = [
        {"role": "user", "content": "Hi", "tool_calls": [], "name": None},
        {"role": "assistant", "content": "Hello", "tool_calls": None},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": None, "function": {"name": "f", "arguments": "{}"}}]},
    ]
    r = run(msgs)
    assert r.examples[0]["messages"][1:] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert r.examples[1]["messages"][-1]["tool_calls"] == [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]


def test_extra_keys_are_dropped_and_dict_arguments_are_kept():
    msgs = [
        {"role": "user", "content": "Remind me", "timestamp": 123, "id": "m1"},
        {"role": "assistant", "content": "Ok", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "remind", "arguments": {"at": "18:00", "loud": True}}}]},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "Anytime"},
    ]
    r = run(msgs)
    assert r.examples[0]["messages"][1] == {"role": "user", "content": "Remind me"}
    assert r.examples[0]["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"at": "18:00", "loud": True}
    props = r.examples[0]["tools"][0]["function"]["parameters"]["properties"]
    assert props == {"at": {"type": "string"}, "loud": {"type": "boolean"}}


def test_examples_serialize_to_json():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "not json"}}
    r = run([{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "content": "r"}, {"role": "assistant", "content": "y"}])
    for e in r.examples:
        assert json.loads(json.dumps(e)) == e
    assert r.examples[0]["tools"][0]["function"]["parameters"]["properties"] == {}
