"""The promotion rule: which candidates go live, with their reasons (pure: scores in, decision out)."""

from __future__ import annotations

import math

import pytest

from nightlora.evaluate.gate import decide
from nightlora.evaluate.scores import ModelScores
from nightlora.evaluate.smoke import loops, problem
from nightlora.train.scoring import Generated

RULE = {"tie_tolerance": 0.01, "max_general_increase": 0.05}


def scores(name: str, test: float | None, general: float | None = 1.0, *, probe: int | None = None,
           pref: float | None = None, smoke: tuple = (None, None)) -> ModelScores:
    s = ModelScores(name, None if name == "base" else name, test_loss=test, test_targets=10 if test else 0,
                    general_loss=general, smoke_problems=list(smoke))
    if probe is not None:
        s.probe_correct, s.probe_total = probe, 10
    if pref is not None:
        s.preference_accuracy, s.preference_pairs = pref, 4
    return s


def rules(decision) -> dict[str, bool]:
    return {r.name: r.passed for r in decision.rules}


def test_a_candidate_that_learned_without_forgetting_is_promoted():
    d = decide(scores("base", 2.0), None, scores("candidate", 1.2, 1.04), **RULE)
    assert d.promote and d.compared_with == "base"
    assert rules(d) == {"finite": True, "learned": True, "general": True, "smoke": True}
    assert "-40.0 %" in d.summary() and "+4.0 %" in d.summary()


def test_it_must_beat_the_live_adapter_not_only_the_base_model():
    live = scores("live", 1.0, 1.02)
    d = decide(scores("base", 2.0), live, scores("candidate", 1.2, 1.01), **RULE)
    assert not d.promote and d.compared_with == "live"
    assert rules(d)["learned"] is False and "worse than live" in d.summary()


def test_a_tie_passes_only_with_a_better_probe_or_preference_accuracy():
    base, live = scores("base", 2.0, probe=1, pref=0.5), scores("live", 1.0, probe=6, pref=0.75)
    tie = 1.0 * (1 + 0.005)
    assert not decide(base, live, scores("candidate", tie, probe=6, pref=0.75), **RULE).promote
    assert decide(base, live, scores("candidate", tie, probe=8, pref=0.75), **RULE).promote
    d = decide(base, live, scores("candidate", tie, probe=5, pref=1.0), **RULE)
    assert d.promote and "preference accuracy" in d.summary()


def test_forgetting_general_behaviour_is_rejected_however_much_it_learned():
    d = decide(scores("base", 2.0, 1.0), None, scores("candidate", 0.3, 1.051), **RULE)
    assert not d.promote and rules(d) == {"finite": True, "learned": True, "general": False, "smoke": True}
    assert "at most +5.0 %" in d.summary()


def test_replies_worse_than_the_base_models_are_rejected():
    base = scores("base", 2.0, smoke=(None, "did not stop"))
    assert decide(base, None, scores("candidate", 1.0, smoke=("did not stop", None)), **RULE).promote  # no new failure
    d = decide(base, None, scores("candidate", 1.0, smoke=("repeats itself", "did not stop")), **RULE)
    assert not d.promote and rules(d)["smoke"] is False


def test_diverged_or_unjudgeable_candidates_are_rejected():
    assert rules(decide(scores("base", 2.0), None, scores("candidate", math.nan), **RULE))["finite"] is False
    d = decide(scores("base", None), None, scores("candidate", None), **RULE)
    assert not d.promote and "no held-out replies" in d.summary()


@pytest.mark.parametrize("text, stopped, expected", [
    ("Your cat is called Murka.", True, None),
    ("", True, "empty reply"),
    ("   ", True, "empty reply"),
    ("Your cat is called", False, "did not stop"),
    ("I'm so sorry to hear that. I'm so sorry to hear that. I'm so sorry to hear that.", True, "repeats itself"),
])
def test_smoke_problems(text, stopped, expected):
    assert problem(Generated(text, 5, stopped)) == expected


def test_a_reply_that_mentions_a_phrase_twice_is_not_a_loop():
    assert not loops("The capital of France is Paris. Paris is the capital of France.")
