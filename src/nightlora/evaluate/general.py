"""The general set: instructions that are not about the user, with the base model's own answers.

Shipped with the tool (general_prompts.jsonl, English and Russian).  Every fourth prompt is
held out: the candidate's loss on the base model's answers to those is the forgetting
guard (a LoRA that learned the user's facts but forgot how to answer anything else raises
it).  The other prompts are self-replay: the base model's own answers to them, mixed into
training, anchor the adapter to the base model's behaviour without any outside data.

The answers are the base model's greedy replies, with the app's system prompt, generated
once per base model (and system prompt) and cached in the state dir.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from nightlora.platform.fsutil import atomic_write_json, private_dir
from nightlora.train.scoring import Scorer

PROMPTS_FILE = "general_prompts.jsonl"
HOLD_OUT_EVERY = 4
ANSWER_TOKENS = 48
FORMAT = 1


@dataclass(frozen=True)
class GeneralAnswer:
    prompt: str
    answer: str
    stopped: bool  # the base model ended its answer itself (not cut at ANSWER_TOKENS)
    held_out: bool


def prompts() -> list[str]:
    text = resources.files("nightlora.evaluate").joinpath(PROMPTS_FILE).read_text(encoding="utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def is_held_out(index: int) -> bool:
    return index % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1


def chat(system: str, prompt: str, answer: str | None = None, source: str = "general") -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages, "meta": {"source": source}}


def cache_file(cache_dir: Path, model_fingerprint: str, system: str) -> Path:
    key = hashlib.sha256(json.dumps([FORMAT, model_fingerprint, system, prompts(), ANSWER_TOKENS]).encode()).hexdigest()
    return Path(cache_dir) / f"general-{key[:20]}.json"


def base_answers(
    scorer: Callable[[], Scorer],
    system: str,
    cache_dir: Path,
    model_fingerprint: str,
    *,
    log: Callable[[str], None] = lambda msg: None,
) -> list[GeneralAnswer]:
    """The base model's answers to every general prompt: from the cache, or generated now (once).

    ``scorer`` makes the backend's scorer of the base model; it is called only on a cache miss."""
    path = cache_file(cache_dir, model_fingerprint, system)
    ps = prompts()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if [c["prompt"] for c in cached["answers"]] == ps:
            return [GeneralAnswer(c["prompt"], c["answer"], c["stopped"], is_held_out(i))
                    for i, c in enumerate(cached["answers"])]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log(f"asking the base model the {len(ps)} general prompts once (cached for later nights)")
    s = scorer()
    try:
        s.use(None)
        gens = s.generate([chat(system, p) for p in ps], ANSWER_TOKENS)
    finally:
        s.close()
    answers = [GeneralAnswer(p, g.text, g.stopped, is_held_out(i)) for i, (p, g) in enumerate(zip(ps, gens))]
    private_dir(Path(cache_dir))
    atomic_write_json(path, {"format": FORMAT, "model": model_fingerprint, "answers": [
        {"prompt": a.prompt, "answer": a.answer, "stopped": a.stopped} for a in answers]})
    return answers


def _usable(answers: Sequence[GeneralAnswer], unfinished: bool) -> list[GeneralAnswer]:
    """Replay answers, never a held-out prompt's; finished ones first.

    An answer cut at ANSWER_TOKENS is usable only when replay is learned by KL to the base
    model (``unfinished``): there every answer position's target is the base model's own
    next-token distribution, which at the cut still goes on, so nothing teaches the adapter to
    stop there.  Learned as tokens (cross-entropy) it would teach exactly that."""
    pool = [a for a in answers if not a.held_out and a.answer.strip()]
    return [a for a in pool if a.stopped] + ([a for a in pool if not a.stopped] if unfinished else [])


def replay_examples(answers: Sequence[GeneralAnswer], system: str, count: int, *, unfinished: bool = False) -> list[dict]:
    """``count`` self-replay examples (see _usable for which answers)."""
    return [chat(system, a.prompt, a.answer, source="replay") for a in _usable(answers, unfinished)[:count]]


def held_out_examples(answers: Sequence[GeneralAnswer], system: str) -> list[dict]:
    return [chat(system, a.prompt, a.answer) for a in answers if a.held_out and a.answer.strip()]


def replay_available(answers: Sequence[GeneralAnswer], *, unfinished: bool = False) -> int:
    return len(_usable(answers, unfinished))
