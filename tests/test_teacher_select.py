"""Which contexts a teacher is asked about: the original's cleaning and de-duplication, the three
focuses, the split guarantee, and synthetic prompts only when the real ones run out."""

from __future__ import annotations

from nightlora.dataset.examples import conversation_examples
from nightlora.teachers.select import clean_user_text, select_prompts

SYSTEM = "You are Hanni."


def records(conv_id: int, turns: list[tuple[str, str]], ratings: dict[int, int], split: str = "train"):
    msgs = [{"role": r, "content": c} for r, c in turns]
    ex = conversation_examples(conv_id, msgs, ratings, SYSTEM, split=split)
    return ex.preferences, ex.examples


def test_cleaning_follows_the_original() -> None:
    assert clean_user_text("[Action result: timer set]") == (None, "action_result")
    assert clean_user_text("  [Current context]\nToday: Monday\nTime: 14:30\n\nRemind me at 5  ") == ("Remind me at 5", None)
    assert clean_user_text("[Current context]\nToday: Monday") == (None, "too_short")
    assert clean_user_text("Hi!") == (None, "too_short")
    assert clean_user_text("Thanks!") == ("Thanks!", None)


def test_negatives_are_the_thumbs_down_contexts_as_the_assistant_saw_them() -> None:
    prefs, examples = records(1, [
        ("user", "[Current context]\nTime: 14:30\n\nWhat's my cat's name?"), ("assistant", "Barsik."),
        ("user", "No, it's Murka."), ("assistant", "Sorry! Your cat is Murka."),
    ], {1: -1})
    sel = select_prompts(prefs, examples, focus="negatives", count=5, system=SYSTEM)
    (p,) = sel.prompts
    assert p.origin == "preference" and p.text == "What's my cat's name?"
    # the teacher sees what the assistant saw: the system prompt and the context block, not the cleaned line
    assert p.system == SYSTEM
    assert p.messages == ({"role": "user", "content": "[Current context]\nTime: 14:30\n\nWhat's my cat's name?"},)
    assert (p.conversation_id, p.message_index) == (1, 1)


def test_held_out_alternatives_and_tool_targets_are_not_asked() -> None:
    held = records(2, [("user", "Where do I live?"), ("assistant", "Paris.")], {1: -1}, split="test")[0]
    alt = records(3, [("user", "Where do I live?!"), ("assistant", "Paris."), ("assistant", "Almaty.")], {1: -1, 2: 1})[0]
    up = records(4, [("user", "How are you doing?"), ("assistant", "Fine!")], {1: 1})[1]
    tool = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Weather in Almaty?"},
                          {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function",
                                                                              "function": {"name": "w", "arguments": "{}"}}]}],
             "meta": {"source": "feedback", "split": "train", "rating": None, "tool_call": True}}]
    sel = select_prompts(held + alt, up + tool, focus="all", count=10, system=None)
    assert sel.prompts == []
    assert sel.skipped == {"held_out": 1, "has_chosen": 1, "rated_up": 1, "tool_call_target": 1}


def test_prompts_are_deduplicated_by_their_first_50_characters() -> None:
    stem = "Please tell me again what my daughter's name is, I keep forgetting"
    a = records(5, [("user", stem + " it"), ("assistant", "Masha.")], {1: -1})[0]
    b = records(6, [("user", stem.upper() + " again"), ("assistant", "Dasha.")], {1: -1})[0]
    c = records(7, [("user", "Set a reminder, please"), ("assistant", "Sure.\n```action\n{}\n```"),
                    ("user", "[Action result: reminder created]"), ("assistant", "Done.")], {3: -1})[0]
    sel = select_prompts(a + b + c, [], focus="negatives", count=10, system=None)
    assert [p.conversation_id for p in sel.prompts] == [5]
    assert sel.skipped == {"duplicate": 1, "action_result": 1}


def test_agentic_ranks_by_action_words_and_all_keeps_the_export_order() -> None:
    turns = [("user", "Hello there, Hanni"), ("assistant", "Hi!"),
             ("user", "Remind me to add milk to the shopping list"), ("assistant", "OK."),
             ("user", "Напомни купил ли я хлеб и добавь заметку"), ("assistant", "Хорошо."),
             ("user", "Show my calendar"), ("assistant", "Here.")]
    prefs, examples = records(8, turns, {})
    assert prefs == []
    agentic = select_prompts(prefs, examples, focus="agentic", count=2, system=None)
    assert [p.text for p in agentic.prompts] == ["Напомни купил ли я хлеб и добавь заметку",
                                                 "Remind me to add milk to the shopping list"]
    everything = select_prompts(prefs, examples, focus="all", count=2, system=None)
    assert [p.text for p in everything.prompts] == ["Hello there, Hanni", "Remind me to add milk to the shopping list"]
    # negatives never reads the training examples
    assert select_prompts(prefs, examples, focus="negatives", count=2, system=None).looked_at == 0


def test_synthetic_prompts_only_fill_what_the_real_ones_leave() -> None:
    prefs = records(9, [("user", "What's my job?"), ("assistant", "A pilot.")], {1: -1})[0]
    synthetic = ["What's my job?", "Set a timer for ten minutes", "Add eggs to my list"]
    sel = select_prompts(prefs, [], focus="negatives", count=2, system=SYSTEM, synthetic=synthetic)
    assert [(p.origin, p.text) for p in sel.prompts] == [("preference", "What's my job?"),
                                                         ("synthetic", "Set a timer for ten minutes")]
    assert sel.synthetic == 1
    (s,) = [p for p in sel.prompts if p.origin == "synthetic"]
    assert s.system == SYSTEM and s.messages == ({"role": "user", "content": "Set a timer for ten minutes"},)
    # enough real prompts: no synthetic one
    assert select_prompts(prefs, [], focus="negatives", count=1, system=SYSTEM, synthetic=synthetic).synthetic == 0


def test_a_regenerated_sibling_the_user_rated_up_is_not_replaced() -> None:
    # Open WebUI: the chosen reply of a pair is the user's thumbs-up regeneration (chosen_from "sibling").
    (pref,) = records(8, [("user", "Which city do I live in?"), ("assistant", "Paris.")], {1: -1})[0]
    sibling = {**pref, "chosen": [{"role": "assistant", "content": "Almaty."}],
               "meta": {**pref["meta"], "chosen_from": "sibling"}}
    sel = select_prompts([pref, sibling], [], focus="negatives", count=10, system=None)
    assert [p.text for p in sel.prompts] == ["Which city do I live in?"]  # only the pair without a chosen reply
    assert sel.skipped.get("has_chosen") == 1
