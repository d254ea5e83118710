"""Does a night teach the assistant what its user taught it, without breaking it? (a benchmark, not a test)

    .venv/bin/python bench/learning.py [--persona demo|nadia|both] [--conversations N] [--dir DIR]

For each persona it builds the app's database, runs one `nightlora run` with the product's
default choices (only the model and the data folder are configured; the target is "none", so
no server is needed), and prints what the evaluation measured in process, before anything went
live: the held-out fact questions answered by the base model and the candidate, the loss on the
user's held-out replies, the general loss (the base model's own answers to held-out general
prompts), preference accuracy on held-out thumbs-down pairs, the decision, and the night's time.
Then two more readings: the same probe asked of the base model right after the user told it
every fact in that chat ("told in context"), and the persona's earlier, harder questions (most
ask for an inference on top of the fact) asked of the base model and the candidate.

Personas: "demo" is the demo's (src/nightlora/demo/); "nadia" (bench/personas/nadia.py) was
written apart from it, and no test or default is tuned to it.
Goal (issue 8): probe <= 1/10 -> >= 8/10, general loss +5 % at most, preference accuracy >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nightlora.cli.wiring import build_deps  # noqa: E402
from nightlora.config import load_config  # noqa: E402
from nightlora.config_section import toml_str  # noqa: E402
from nightlora.demo.database import build_demo_db  # noqa: E402
from nightlora.models import prepare_model  # noqa: E402
from nightlora.paths import StatePaths  # noqa: E402
from nightlora.pipeline.nightly import run_nightly  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / ".cache" / "models"


def build(persona: str, db: Path, conversations: int) -> None:
    if persona == "demo":
        build_demo_db(db, conversations=conversations)
    else:
        from personas import nadia

        nadia.build(db, conversations=conversations)


def persona_facts(persona: str):
    if persona == "demo":
        from nightlora.demo.persona import FACTS, SYSTEM_PROMPT

        return SYSTEM_PROMPT, FACTS, [f.en.tell[0] for f in FACTS]
    from personas import nadia

    return nadia.SYSTEM, nadia.FACTS, [f.tell[0] for f in nadia.FACTS]


def side_probes(persona: str, data: Path, candidate: Path | None) -> dict:
    """Two readings of the probe beside the evaluate stage's own.

    "told in context": the probe asked of the base model right after the user told it every
    fact in the same chat.  Not a bound on what training can reach (a 135M model recalls little
    from a paragraph of facts), but a reading of the questions.
    "hard probe": the persona's earlier questions (``hard_probe``), most of which ask for an
    inference on top of the fact ("Which city should the taxi app default to for me?"), asked of
    the base model and of the candidate.
    Asked and scored as the evaluate stage asks the probe (the torch scorer's greedy replies,
    evaluation.PROBE_TOKENS new tokens, probe.answer_matches).
    """
    from nightlora.evaluate.evaluation import PROBE_TOKENS
    from nightlora.evaluate.general import chat
    from nightlora.evaluate.probe import answer_matches, read_probe
    from nightlora.train.torch.scorer import TorchScorer

    system, facts, tells = persona_facts(persona)
    history = [{"role": "system", "content": system}, {"role": "user", "content": " ".join(tells)},
               {"role": "assistant", "content": "Got it, I'll remember all of that."}]
    items = read_probe(data / "probe.jsonl")
    hard = [{"question": f.hard_probe, "answer": f.answer} for f in facts]

    def right(asked: list[dict], replies: list[str]) -> int:
        return sum(answer_matches(item["answer"], reply) for item, reply in zip(asked, replies))

    scorer = TorchScorer(MODELS / "smollm2-135m")
    try:
        scorer.use(None)
        told = [g.text for g in scorer.generate(
            [{"messages": history + [{"role": "user", "content": item["question"]}]} for item in items], PROBE_TOKENS)]
        hard_chats = [chat(system, item["question"]) for item in hard]
        hard_base = [g.text for g in scorer.generate(hard_chats, PROBE_TOKENS)]
        hard_cand: list[str] = []
        if candidate is not None:
            scorer.use(candidate)
            hard_cand = [g.text for g in scorer.generate(hard_chats, PROBE_TOKENS)]
    finally:
        scorer.close()
    return {"in_context": right(items, told), "in_context_replies": told, "total": len(items),
            "hard_base": right(hard, hard_base), "hard_candidate": right(hard, hard_cand) if candidate else None,
            "hard_total": len(hard), "hard_candidate_replies": hard_cand}


def peft_folder(adapter_dir: Path | None, state: StatePaths) -> Path | None:
    """The candidate's PEFT files: in the run's adapter folder, else the store's live version."""
    from nightlora.paths import AdapterFiles

    for folder in ([adapter_dir / AdapterFiles.PEFT_SUBDIR, adapter_dir] if adapter_dir else []) + [
            state.adapters / "current" / AdapterFiles.PEFT_SUBDIR]:
        if (folder / AdapterFiles.PEFT_WEIGHTS).is_file():
            return folder
    return None


def one(persona: str, conversations: int, root: Path, overrides: list[str], answers_cache: Path | None = None) -> dict:
    data = root / persona / "data"
    db = data / "hanni.db"
    build(persona, db, conversations)
    cfg_path = root / persona / "nightlora.toml"
    extra: dict[str, list[str]] = {"train": [], "eval": []}
    for o in overrides:  # section.key=value (a TOML value), for sweeps; the goal is judged without any
        key, _, value = o.partition("=")
        section, _, name = key.partition(".")
        extra.setdefault(section, []).append(f"{name} = {value}")
    cfg_path.write_text(f"[source]\ndata_dir = {toml_str(data)}\n[train]\nmodel = \"smollm2-135m\"\n"
                        f"models_dir = {toml_str(MODELS)}\n" + "".join(line + "\n" for line in extra.pop("train"))
                        + "[target]\nkind = \"none\"\n"
                        + "".join(f"[{s}]\n" + "".join(line + "\n" for line in lines) for s, lines in extra.items() if lines))
    cfg = load_config(cfg_path, environ={})
    deps = build_deps(cfg, progress=False)
    cache = StatePaths(cfg.source.state_path).cache
    if answers_cache and answers_cache.is_dir():  # a sweep: the base model's answers from an earlier run
        shutil.copytree(answers_cache, cache, dirs_exist_ok=True)
    t0 = time.perf_counter()
    r = run_nightly(cfg, deps, force=True)
    seconds = time.perf_counter() - t0
    if answers_cache and cache.is_dir():
        shutil.copytree(cache, answers_cache, dirs_exist_ok=True)
    state = StatePaths(cfg.source.state_path)
    told = side_probes(persona, data, peft_folder(r.train.adapter_dir if r.train else None, state))
    ev = r.evaluation
    base, cand = ev.scores["base"], ev.scores["candidate"]
    out = {
        "persona": persona, "status": r.status, "seconds": round(seconds, 1), "stages_s": r.stages_s,
        "probe_base": base.probe_correct, "probe_candidate": cand.probe_correct, "probe_total": cand.probe_total,
        "test_base": base.test_loss, "test_candidate": cand.test_loss,
        "general_base": base.general_loss, "general_candidate": cand.general_loss,
        "general_change": cand.general_loss / base.general_loss - 1,
        "pref_base": base.preference_accuracy, "pref_candidate": cand.preference_accuracy,
        "pref_pairs": cand.preference_pairs, "decision": ev.decision.summary(),
        "hyperparams": {k: v for k, v in r.train.hyperparams.to_dict().items() if k != "reasons"},
        "preference": r.train.metrics.preference, "probe_replies": cand.probe_replies,
        "probe_in_context": told["in_context"], "in_context_replies": told["in_context_replies"],
        "hard_probe_base": told["hard_base"], "hard_probe_candidate": told["hard_candidate"],
        "hard_probe_total": told["hard_total"], "hard_probe_replies": told["hard_candidate_replies"],
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persona", choices=("demo", "nadia", "both"), default="both")
    ap.add_argument("--conversations", type=int, default=None, help="default: the demo's 30, nadia 60")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--answers-cache", type=Path, default=None,
                    help="keep the base model's answers to the general prompts here across runs (a sweep's first-night "
                         "cost, generated once per base model; the night's time then leaves it out)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config value (TOML), for sweeps; the goal is judged with the defaults, without --set")
    args = ap.parse_args()
    prepare_model("smollm2-135m", MODELS)
    root = args.dir or Path(tempfile.mkdtemp(prefix="nightlora-learning-"))
    personas = ("demo", "nadia") if args.persona == "both" else (args.persona,)
    results = []
    for p in personas:
        n = args.conversations or (30 if p == "demo" else 60)
        res = one(p, n, root, args.overrides, args.answers_cache)
        results.append(res)
        pref = "n/a" if res["pref_candidate"] is None else f"{res['pref_base']:.2f} -> {res['pref_candidate']:.2f} of {res['pref_pairs']}"
        print(f"{p}: {res['status']} in {res['seconds']:.0f} s; probe {res['probe_base']}/{res['probe_total']} -> "
              f"{res['probe_candidate']}/{res['probe_total']}; held-out loss {res['test_base']:.3f} -> "
              f"{res['test_candidate']:.3f}; general loss {res['general_base']:.3f} -> {res['general_candidate']:.3f} "
              f"({100 * res['general_change']:+.1f} %); preference accuracy {pref}", flush=True)
        print(f"  {res['decision']}", flush=True)
        print(f"  the same probe asked of the base model right after being told every fact in that chat: "
              f"{res['probe_in_context']}/{res['probe_total']}", flush=True)
        print(f"  the hard probe (questions that ask for an inference on top of the fact): base "
              f"{res['hard_probe_base']}/{res['hard_probe_total']} -> candidate "
              f"{res['hard_probe_candidate']}/{res['hard_probe_total']}", flush=True)
        print(f"  stages: {json.dumps(res['stages_s'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.overrides:
        print("settings: " + " ".join(args.overrides) + " (not the defaults)")
    print("learning: " + "; ".join(
        f"{r['persona']} probe {r['probe_base']}->{r['probe_candidate']}/{r['probe_total']} "
        f"(told in context {r['probe_in_context']}/{r['probe_total']}; hard probe "
        f"{r['hard_probe_base']}->{r['hard_probe_candidate']}/{r['hard_probe_total']}) "
        f"general {100 * r['general_change']:+.1f}% pref {r['pref_candidate'] if r['pref_candidate'] is None else round(r['pref_candidate'], 2)} "
        f"{r['status']} {r['seconds']:.0f}s" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
