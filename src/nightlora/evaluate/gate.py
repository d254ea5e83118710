"""What a candidate adapter must pass before it goes live: the promotion rule, and its reasons.

Pure: it reads the scores of the base model, the live adapter (when there is one) and the
candidate (evaluate/scores.py) and the ``[eval]`` settings, and says yes or no, rule by rule:

1. finite      training did not diverge: every training loss and the test loss are numbers.
2. learned     the candidate's loss on the user's held-out replies is lower than the live
               model's (the live adapter, or the base model when none is live) by more than
               ``tie_tolerance`` (relative); within the tolerance it is a tie, which passes
               only if the candidate answers more probe questions or prefers more of the
               held-out chosen replies than the live model.
3. general     its loss on the base model's own answers to held-out general prompts is at most
               ``max_general_increase`` (relative) above the base model's: it still answers
               everything else as the base model does.
4. smoke       its replies to a few held-out prompts are no worse than the base model's: not
               empty, ended by the model itself, not looping.

Everything passes: the candidate goes live.  Anything fails: the run ends "rejected", the
live adapter stays, and the feedback is left for the next night.  (When the candidate was
trained with DPO/KTO after SFT and fails, the evaluate stage judges the SFT adapter without that
stage by the same rule: learning from thumbs-down may not buy its way past the rule.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from nightlora.errors import EvaluationError
from nightlora.evaluate.scores import ModelScores
from nightlora.train.base import TrainMetrics


def check_promotable(metrics: TrainMetrics) -> None:
    """Raise EvaluationError when training diverged (no finite test loss): such an adapter is never judged."""
    if metrics.test_loss is not None and not math.isfinite(metrics.test_loss):
        raise EvaluationError(f"test loss is {metrics.test_loss}: training diverged; the adapter is not deployed")
    bad = [step for step, loss in metrics.train_loss if not math.isfinite(loss)]
    if bad:
        raise EvaluationError(f"train loss was not finite at step {bad[0]}; the adapter is not deployed")


@dataclass(frozen=True)
class Rule:
    name: str
    passed: bool
    detail: str


@dataclass
class Decision:
    promote: bool
    rules: list[Rule] = field(default_factory=list)
    compared_with: str = "base"   # the model the candidate had to beat: "live" or "base"
    # Set when the candidate is the SFT adapter without its preference stage (stages/evaluate.py): why.
    note: str | None = None

    @property
    def failed(self) -> list[Rule]:
        return [r for r in self.rules if not r.passed]

    def summary(self) -> str:
        note = f" ({self.note})" if self.note else ""
        if self.promote:
            return f"promoted{note}: " + "; ".join(r.detail for r in self.rules)
        return f"rejected{note}: " + "; ".join(f"{r.name}: {r.detail}" for r in self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "compared_with": self.compared_with, "summary": self.summary(),
                "rules": [asdict(r) for r in self.rules], "note": self.note}


def _pct(new: float, old: float) -> str:
    return f"{100 * (new / old - 1):+.1f} %" if old else "n/a"


def _better(cand: float | None, ref: float | None) -> bool:
    return cand is not None and (ref is None or cand > ref)


def decide(base: ModelScores, live: ModelScores | None, cand: ModelScores, *, tie_tolerance: float,
           max_general_increase: float) -> Decision:
    ref = live if live is not None else base
    rules: list[Rule] = []

    finite = cand.finite and (cand.general_loss is None or math.isfinite(cand.general_loss))
    rules.append(Rule("finite", finite, "losses are finite" if finite else "a loss is not a number (diverged)"))

    if cand.test_loss is None or ref.test_loss is None:
        rules.append(Rule("learned", False, "no held-out replies of the user to judge the adapter by"))
    else:
        c, r = cand.test_loss, ref.test_loss
        if c < r * (1 - tie_tolerance):
            rules.append(Rule("learned", True, f"held-out loss {c:.3f} vs {ref.name} {r:.3f} ({_pct(c, r)})"))
        elif c <= r * (1 + tie_tolerance):
            probe_up = _better(cand.probe_correct, ref.probe_correct) if cand.probe_total else False
            pref_up = _better(cand.preference_accuracy, ref.preference_accuracy) if cand.preference_pairs else False
            why = "probe" if probe_up else "preference accuracy" if pref_up else None
            rules.append(Rule("learned", why is not None,
                              f"held-out loss {c:.3f} ties {ref.name} {r:.3f} ({_pct(c, r)})"
                              + (f", with a better {why}" if why else " and nothing else improved")))
        else:
            rules.append(Rule("learned", False, f"held-out loss {c:.3f} is worse than {ref.name} {r:.3f} ({_pct(c, r)})"))

    if cand.general_loss is None or base.general_loss is None:
        rules.append(Rule("general", True, "no general prompts to check (none held out)"))
    else:
        limit = base.general_loss * (1 + max_general_increase)
        ok = cand.general_loss <= limit
        rules.append(Rule("general", ok, f"general loss {cand.general_loss:.3f} vs base {base.general_loss:.3f} "
                                         f"({_pct(cand.general_loss, base.general_loss)}; at most "
                                         f"{100 * max_general_increase:+.1f} %)"))

    new_failures = cand.smoke_failures - base.smoke_failures
    if cand.smoke_problems:
        rules.append(Rule("smoke", new_failures <= 0,
                          f"{cand.smoke_failures} of {len(cand.smoke_problems)} replies with a problem "
                          f"(base model: {base.smoke_failures})"))
    return Decision(all(r.passed for r in rules), rules, ref.name)
