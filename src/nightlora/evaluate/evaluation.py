"""Ask the base model, the live adapter and the candidate the same things, in the training framework.

No server: the backend's Scorer (train/scoring.py) loads the base model once and each adapter
on top of it.  Every model gets the same examples with the same tokenization and mask as
training, so the losses compare like for like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from nightlora.evaluate import general
from nightlora.evaluate.probe import answer_matches
from nightlora.evaluate.scores import ModelScores, mean
from nightlora.evaluate.smoke import problem
from nightlora.paths import PREFERENCES
from nightlora.train.scoring import Scorer

PROBE_TOKENS = 32
SMOKE_TOKENS = 96


@dataclass
class EvalData:
    system: str
    test: list[dict]                      # the user's held-out examples (test split, else valid)
    test_split: str                       # which split they are
    general: list[dict]                   # held-out general prompts with the base model's answers
    pairs: list[dict]                     # held-out preference records with a chosen reply
    probe: list[dict] = field(default_factory=list)  # {"question", "answer"}
    smoke: list[dict] = field(default_factory=list)  # chats to reply to (held-out contexts)
    max_seq_length: int = 2048


def held_out_pairs(dataset_dir: Path) -> list[dict]:
    path = Path(dataset_dir) / PREFERENCES
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r.get("chosen") and (r.get("meta") or {}).get("split") in ("valid", "test")]


def smoke_chats(examples: Sequence[dict], count: int) -> list[dict]:
    """The contexts of a few held-out examples that end on a user message (what the app would ask)."""
    out, seen = [], set()
    for e in examples:
        context = e["messages"][:-1]
        if context and context[-1].get("role") == "user" and context[-1]["content"] not in seen:
            seen.add(context[-1]["content"])
            out.append({"messages": context, "tools": e.get("tools")})
        if len(out) >= count:
            break
    return out


def build_data(splits: dict[str, list[dict]], dataset_dir: Path, system: str, answers: Sequence[general.GeneralAnswer],
               probe: list[dict], *, smoke_prompts: int, max_seq_length: int) -> EvalData:
    test_split = "test" if splits.get("test") else "valid"
    test = splits.get(test_split) or []
    return EvalData(system, test, test_split, general.held_out_examples(answers, system), held_out_pairs(dataset_dir),
                    probe, smoke_chats(test, smoke_prompts), max_seq_length)


def score(scorer: Scorer, name: str, adapter: Path | None, label: str | None, data: EvalData) -> ModelScores:
    scorer.use(adapter)
    s = ModelScores(name, label)
    if data.test:
        pairs = scorer.losses(data.test, data.max_seq_length)
        s.test_loss, s.test_targets = mean(pairs), sum(n for _, n in pairs)
    if data.general:
        s.general_loss = mean(scorer.losses(data.general, data.max_seq_length))
    if data.pairs:
        chosen = scorer.losses([{"messages": p["prompt"] + p["chosen"], "tools": p.get("tools")} for p in data.pairs],
                               data.max_seq_length)
        rejected = scorer.losses([{"messages": p["prompt"] + p["rejected"], "tools": p.get("tools")} for p in data.pairs],
                                 data.max_seq_length)
        # Per token, so that a longer reply is not less likely just for its length.
        wins = [cs / cn < rs / rn for (cs, cn), (rs, rn) in zip(chosen, rejected) if cn and rn]
        s.preference_pairs = len(wins)
        s.preference_accuracy = sum(wins) / len(wins) if wins else None
    if data.probe:
        replies = scorer.generate([general.chat(data.system, p["question"]) for p in data.probe], PROBE_TOKENS)
        s.probe_replies = [g.text for g in replies]
        s.probe_correct = sum(answer_matches(p["answer"], g.text) for p, g in zip(data.probe, replies))
        s.probe_total = len(data.probe)
    if data.smoke:
        replies = scorer.generate(data.smoke, SMOKE_TOKENS)
        s.smoke_replies = [g.text for g in replies]
        s.smoke_problems = [problem(g) for g in replies]
    return s


def evaluate(scorer: Scorer, data: EvalData, models: Sequence[tuple[str, Path | None, str | None]],
             log: Callable[[str], None] = lambda msg: None) -> dict[str, ModelScores]:
    """Scores of each (name, adapter folder in the scorer's format or None, label)."""
    out = {}
    for name, adapter, label in models:
        log(f"evaluating the {name} model" + (f" ({label})" if label else ""))
        out[name] = score(scorer, name, adapter, label, data)
    return out
