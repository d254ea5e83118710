"""The general set's replay selection (pure): which of the base model's answers a night replays."""

from __future__ import annotations

from nightlora.evaluate.general import GeneralAnswer, held_out_examples, replay_available, replay_examples

ANSWERS = [
    GeneralAnswer("finished one", "An answer.", stopped=True, held_out=False),
    GeneralAnswer("cut one", "A long answer that went on past the token", stopped=False, held_out=False),
    GeneralAnswer("held out", "Kept for the guard.", stopped=True, held_out=True),
    GeneralAnswer("held out and cut", "Kept for the guard, cut", stopped=False, held_out=True),
    GeneralAnswer("empty", "  ", stopped=True, held_out=False),
    GeneralAnswer("finished two", "Another answer.", stopped=True, held_out=False),
]


def prompts(examples: list[dict]) -> list[str]:
    return [e["messages"][1]["content"] for e in examples]


def test_replay_learned_as_tokens_takes_only_answers_the_base_model_finished():
    assert replay_available(ANSWERS) == 2
    assert prompts(replay_examples(ANSWERS, "sys", 10)) == ["finished one", "finished two"]


def test_replay_learned_by_kl_also_takes_cut_answers_after_the_finished_ones():
    # Under KL every answer position's target is the base model's own distribution, which goes on at
    # the cut: a cut answer teaches no early stop there, so it is replay too.
    assert replay_available(ANSWERS, unfinished=True) == 3
    assert prompts(replay_examples(ANSWERS, "sys", 10, unfinished=True)) == ["finished one", "finished two", "cut one"]
    assert prompts(replay_examples(ANSWERS, "sys", 2, unfinished=True)) == ["finished one", "finished two"]


def test_a_held_out_prompt_is_never_replayed_and_is_the_guard():
    for unfinished in (False, True):
        assert not {"held out", "held out and cut"} & set(prompts(replay_examples(ANSWERS, "sys", 10, unfinished=unfinished)))
    assert prompts(held_out_examples(ANSWERS, "sys")) == ["held out", "held out and cut"]
    assert all(e["meta"]["source"] == "replay" for e in replay_examples(ANSWERS, "sys", 10, unfinished=True))
