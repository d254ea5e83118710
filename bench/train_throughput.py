"""One night's training, one epoch, nightlora against what a user would run instead (a benchmark, not a test).

    .venv/bin/python bench/train_throughput.py [--sets demo,large] [--repeats 3] [--large-repeats 1]
        [--contenders torch,torch-packed,peft-b1,peft-b4,trl,trl-packed,mlx,mlx_lm]
        [--large-contenders ...] [--mlx-conversations 2] [--mlx-examples 2-3] [--work DIR]

Data (exported afresh with nightlora's Hanni export):
  demo   the demo database (`nightlora demo-db`, 90 conversations): its train split as exported
  large  a demo database of --large-db conversations, train split cut to the first
         --large-conversations conversations that have 3 to 6 assistant-turn examples
         (valid: the first 60 valid examples)
  mlx    the mlx contenders only: the --mlx-conversations shortest demo conversations with
         --mlx-examples train examples (default 2-3; 3-6 is the large set's shape: merging saves
         more the more turns a conversation has) -- mlx on this Linux CPU trains at a few tokens
         per second and a full epoch of the demo would take hours; the same subset for both

Contenders, each in its own process (its peak memory is its own), all with LoRA rank 8 / alpha 16
on every Linear of the last 16 blocks, dropout 0, AdamW (mlx: Adam) at the same learning rate,
cosine decay, no warm-up, no gradient checkpointing (135M fits with room to spare), one epoch:

  torch         nightlora's TorchTrainer: each conversation's examples merged into one sequence,
                length-grouped batches of --batch sequences, logits only at target positions
  torch-bN      the same at batch N (nightlora's own choice for the demo's 62 conversations is 2)
  torch-bN-lrX  the same at batch N and learning rate X: an epoch of merged conversations takes
                fewer, fuller steps than one of per-turn examples (62 against 222 on the demo at
                batch 1), so at one learning rate it moves less per epoch
  torch-packed  the same sequences and batches, but each batch packed into ONE row with position
                ids restarting per sequence and no attention mask: transformers then builds a
                block-diagonal causal mask for SDPA (masking_utils.find_packed_sequence_indices),
                so attention does not cross sequences; no padding at all
  peft-bN       the loop a user writes with transformers + PEFT: the per-turn examples as exported,
                shuffled, batches of N padded to the longest, ``model(..., labels=...).loss``
  trl           TRL SFTTrainer on the per-turn examples, pre-tokenized with the same prompt mask
                (``completion_mask``, completion_only_loss=True), batches of --batch, length-grouped
                sampler (train_sampling_strategy="group_by_length": less padding than random)
  trl-packed    the same with packing=True, packing_strategy="bfd" (TRL then trains padding-free:
                position ids per sequence, rows of --pack-length tokens)
  ...-lrX       peft-bN, trl and trl-packed at learning rate X: each family is compared at its best
                validation loss, so each gets the rates that suit its steps
  mlx           nightlora's MlxTrainer (merged sequences), batch 1
  mlx_lm        ``python -m mlx_lm lora --train --mask-prompt --batch-size 1`` on the per-turn
                examples, --iters = their number

(assistant_only_loss is not a contender: it needs ``{% generation %}`` markers that SmolLM2's
template lacks, and it would learn every assistant turn, rated-down ones included: another objective.)

Figures per contender, medians over repeats (the repeats are interleaved, each round in a rotated
order, so that load from other work on this shared machine falls on all contenders alike):
  epoch s     the training loop of the epoch (steps only: not loading, tokenizing or validation)
  target/s    supervised target tokens / epoch s (the same targets for every contender)
  tokens/s    tokens actually read (prompt and target, no padding) / epoch s
  slots       positions computed (tokens + padding) over tokens read
  peak MB     the process's peak resident memory (wait4)
  valid       final validation loss, computed for every contender by one evaluator (a separate process:
              token-weighted mean target loss over the per-turn valid examples; mlx adapters are
              converted to PEFT first), so losses are comparable
  wall s      the whole training process

Then: where nightlora torch's time goes (torch.profiler over --profile-steps steps of the demo:
operator-level time, which is what a compute-bound CPU loop is made of -- a Python sampling profiler
such as pyinstrument would attribute all of it to the few Python frames that call into ATen), and how
far its epoch is from this machine's limit: the FLOPs the epoch needs over a measured fp32 matmul rate.
Run it with ``--threads 1`` on cores that other work shares: with two threads on two busy cores a
forward+backward took 2-2.7x longer than with one (torch's OpenMP threads wait on each other).

Packing (item 2 of issue 9), measured here: on the demo export at batch 4, length-grouped batches
compute only 4.5 % padding (16,688 positions for 15,963 tokens), while one packed row per batch
makes SDPA's score area 3.6x larger (its CPU kernels compute the whole square under a dense
block-diagonal mask): torch-packed took 200.7 s against torch's 156.7 s (1.28x slower, identical
validation loss), so nightlora keeps length grouping (train/torch/data.py says why).
Last line: ``train speed: nightlora torch X.XXx plain PEFT, Y.YYx TRL best; mlx Z.ZZx mlx_lm`` (ratios of
epoch time, higher is faster; plain PEFT = the fastest peft-bN, TRL best = the faster TRL) on the last set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANK, ALPHA, LAYERS = 8, 16.0, 16
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CLI_TRAIN = re.compile(r"^\s*(\d+)\s+[\d.]+\s+[▼▲]")
CLI_VAL = re.compile(r"^\s*\d+\s+val\s+[\d.]+\s+([\d.]+)s")
TORCH_CONTENDERS = ("torch", "torch-packed", "trl", "trl-packed")
DEFAULT = "torch,torch-packed,peft-b1,peft-b4,trl,trl-packed,mlx,mlx_lm"


# ---- data ----------------------------------------------------------------------------------------

def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _export(work: Path, name: str, conversations: int) -> Path:
    from nightlora.demo.database import build_demo_db
    from nightlora.sources.hanni.source import export_db

    demo = build_demo_db(work / name / "hanni.db", conversations=conversations, force=True)
    export_db(demo.path, work / name / "training", demo.system_prompt_path)
    return work / name / "training"


def _cid(row: dict):
    return (row.get("meta") or {}).get("conversation_id")


def _write_set(dest: Path, source: Path, train: list[dict], valid: list[dict]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _write_jsonl(dest / "train.jsonl", train)
    _write_jsonl(dest / "valid.jsonl", valid)
    _write_jsonl(dest / "test.jsonl", valid[:1])  # the trainers score a test split; kept tiny
    if (source / "manifest.json").is_file():
        (dest / "manifest.json").write_bytes((source / "manifest.json").read_bytes())
    return dest


def _by_conversation(rows: list[dict]) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(_cid(r), []).append(r)
    return groups


def build_sets(work: Path, names: list[str], large_db: int, large_convs: int, mlx_convs: int, model: Path,
               mlx_examples: tuple[int, int] = (2, 3)) -> dict[str, Path]:
    from transformers import AutoTokenizer

    out: dict[str, Path] = {}
    demo = _export(work, "demo", 90)
    out["demo"] = _write_set(work / "sets" / "demo", demo, _jsonl(demo / "train.jsonl"), _jsonl(demo / "valid.jsonl"))
    if "large" in names:
        big = _export(work, "large", large_db)
        groups = [g for g in _by_conversation(_jsonl(big / "train.jsonl")).values() if 3 <= len(g) <= 6]
        if len(groups) < large_convs:
            sys.exit(f"a demo database of {large_db} conversations has only {len(groups)} with 3-6 train examples; "
                     f"raise --large-db")
        train = [r for g in groups[:large_convs] for r in g]
        out["large"] = _write_set(work / "sets" / "large", big, train, _jsonl(big / "valid.jsonl")[:60])
    tok = AutoTokenizer.from_pretrained(model)
    length = lambda r: len(tok.apply_chat_template(r["messages"], tools=r.get("tools"), return_dict=False))  # noqa: E731
    small = [g for g in _by_conversation(_jsonl(demo / "train.jsonl")).values() if mlx_examples[0] <= len(g) <= mlx_examples[1]]
    small.sort(key=lambda g: max(length(r) for r in g))
    if len(small) < mlx_convs:
        sys.exit(f"the demo export has only {len(small)} train conversations with {mlx_examples[0]}-{mlx_examples[1]} "
                 f"examples; lower --mlx-conversations or widen --mlx-examples")
    valid = sorted(_jsonl(demo / "valid.jsonl"), key=length)[:1]
    out["mlx"] = _write_set(work / "sets" / "mlx", demo, [r for g in small[:mlx_convs] for r in g], valid)
    return out


def set_stats(data: Path, model: Path) -> dict:
    """What one epoch holds: examples, conversations, per-turn tokens, merged tokens, targets."""
    from transformers import AutoTokenizer

    from nightlora.train.torch.data import encode_examples

    tok = AutoTokenizer.from_pretrained(model)
    train = _jsonl(data / "train.jsonl")
    per_turn = encode_examples(tok, train, 2048, merge=False)
    merged = encode_examples(tok, train, 2048, merge=True)
    return {"examples": len(train), "conversations": len({_cid(r) for r in train}),
            "sequences": len(merged.items), "kept_apart": merged.fallback,
            "per_turn_tokens": sum(len(e.tokens) for e in per_turn.items),
            "merged_tokens": sum(len(e.tokens) for e in merged.items),
            "targets": sum(e.n_targets for e in per_turn.items),
            "merged_targets": sum(e.n_targets for e in merged.items),
            "merged_sq": sum(len(e.tokens) ** 2 for e in merged.items)}


# ---- processes -----------------------------------------------------------------------------------

def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Exit code and peak RSS in MB of a child, from wait4 (its own, not the maximum over all children)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # KiB on Linux


def _child(argv: list[str], log: Path, env: dict) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=f, stderr=subprocess.STDOUT, env=env)
        code, peak = _wait(proc)
    return code, peak, time.perf_counter() - t0


def run_contender(name: str, data: Path, args: argparse.Namespace, work: Path, env: dict, stats: dict) -> dict:
    tag = f"{name}-{data.name}-{len(list(work.glob(f'{name}-{data.name}-*.log')))}"
    out = work / f"{tag}.json"
    adapter = work / f"{tag}-adapter"
    if name == "mlx_lm":
        result = run_mlx_lm(data, args, adapter, work / f"{tag}.log", env, stats)
        if "error" in result:
            return result
        fmt = "mlx"
    else:
        argv = ["--run", name, "--data", str(data), "--model", str(args.model), "--out", str(out),
                "--adapter", str(adapter), "--batch", str(1 if name == "mlx" else args.batch), "--lr", str(args.lr),
                "--pack-length", str(args.pack_length), "--sequences", str(stats["sequences"])]
        code, peak, wall = _child(argv, work / f"{tag}.log", env)
        if code != 0 or not out.is_file():
            return {"error": f"exit {code}, see {work / f'{tag}.log'}"}
        result = json.loads(out.read_text()) | {"peak_mb": peak, "wall_s": wall}
        fmt = "mlx" if name == "mlx" else "peft"
    ev = work / f"{tag}-eval.json"
    code, _, _ = _child(["--eval", str(adapter), "--fmt", fmt, "--data", str(data), "--model", str(args.model),
                         "--out", str(ev)], work / f"{tag}-eval.log", env)
    result["valid"] = json.loads(ev.read_text())["valid"] if code == 0 and ev.is_file() else float("nan")
    return result


def run_mlx_lm(data: Path, args: argparse.Namespace, adapter: Path, log: Path, env: dict, stats: dict) -> dict:
    """The CLI as a user runs it; training time from the timestamps of its report lines, less its validations."""
    argv = [sys.executable, "-m", "mlx_lm", "lora", "--train", "--model", str(args.model), "--data", str(data),
            "--adapter-path", str(adapter), "--mask-prompt", "--batch-size", "1", "--iters", str(stats["examples"]),
            "--learning-rate", str(args.lr), "--num-layers", str(LAYERS), "--steps-per-report", "1",
            "--steps-per-eval", str(10 * stats["examples"]), "--val-batches", "1", "--seed", "0",
            "--config", str(_mlx_lm_config(adapter.parent / (adapter.name + ".yaml"), args.lr, stats["examples"]))]
    t0 = time.perf_counter()
    start = last = None
    val_s, done, lines = 0.0, 0, []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env | {"PYTHONUNBUFFERED": "1"}) as proc:
        for raw in proc.stdout:
            now = time.perf_counter()
            line = ANSI.sub("", raw)
            lines.append(line)
            if start is None and "train_loss" in line:
                start = now
            elif m := CLI_VAL.match(line):
                val_s += float(m[1])
            elif m := CLI_TRAIN.match(line):
                done, last = int(m[1]), now
        code, peak = _wait(proc)
    log.write_text("".join(lines))
    if code != 0 or start is None or last is None:
        return {"error": f"exit {code}, see {log}"}
    # Validations between the header and the last step line print their own durations.
    return {"steps": done, "epoch_s": last - start - val_s, "tokens": stats["per_turn_tokens"],
            "slots": stats["per_turn_tokens"], "peak_mb": peak, "wall_s": time.perf_counter() - t0}


def _mlx_lm_config(path: Path, lr: float, iters: int) -> Path:
    """The same LoRA (the CLI's default scale is 20, not alpha / rank = 2) and the same cosine decay;
    JSON is YAML, which the CLI reads."""
    path.write_text(json.dumps({"lora_parameters": {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0},
                                "lr_schedule": {"name": "cosine_decay", "arguments": [lr, iters, 0.0]}}))
    return path


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want MIN-MAX (e.g. 3-6), got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"want 1 <= MIN <= MAX, got {text!r}")
    return low, high


# ---- the parent ----------------------------------------------------------------------------------

def _median(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
    return statistics.median(vals) if vals else float("nan")


def table(name: str, stats: dict, results: dict[str, list[dict]]) -> str:
    head = (f"{'contender':<13} {'runs':>4} {'epoch s':>8} {'target/s':>9} {'tokens/s':>9} {'slots':>6} "
            f"{'peak MB':>8} {'valid':>7} {'wall s':>7}  all epoch s")
    out = [f"[{name}] {stats['conversations']} conversations, {stats['examples']} per-turn examples -> "
           f"{stats['sequences']} merged sequences ({stats['kept_apart']} kept apart); tokens per epoch: "
           f"{stats['per_turn_tokens']} per-turn, {stats['merged_tokens']} merged; {stats['targets']} targets "
           f"(merged: {stats['merged_targets']})", head, "-" * len(head)]
    for contender, rows in results.items():
        ok = [r for r in rows if "error" not in r]
        if not ok:
            out.append(f"{contender:<13} {rows[0]['error'] if rows else 'not run'}")
            continue
        ep = _median(ok, "epoch_s")
        tokens = _median(ok, "tokens")
        slots = _median(ok, "slots")
        out.append(f"{contender:<13} {len(ok):>4} {ep:>8.1f} {stats['targets'] / ep:>9.1f} {tokens / ep:>9.1f} "
                   f"{slots / tokens:>6.2f} {_median(ok, 'peak_mb'):>8.0f} {_median(ok, 'valid'):>7.4f} "
                   f"{_median(ok, 'wall_s'):>7.1f}  " + " ".join(f"{r['epoch_s']:.1f}" for r in ok))
    return "\n".join(out)


def _best(results: dict[str, list[dict]], family) -> str:
    """The family's contender with the lowest median validation loss (a tie: the faster): its best
    configuration is the one a user keeps, and "equal or lower loss" is then judged between bests."""
    scored = []
    for c, rows in results.items():
        ok = [r for r in rows if "error" not in r]
        if family(c) and ok:
            v, t = _median(ok, "valid"), _median(ok, "epoch_s")
            if not (math.isnan(v) or math.isnan(t)):
                scored.append((round(v, 3), t, c))
    return min(scored)[2] if scored else "-"


def ratios(results: dict[str, list[dict]]) -> tuple[float, float, float, str, str, str]:
    """(PEFT / torch, TRL / torch, mlx_lm / mlx epoch times, and the torch, PEFT and TRL contenders compared):
    each family by its best-loss contender; nightlora torch = "torch" and its torch-bN(-lrX) settings
    (torch-packed is a measured alternative the product does not use)."""
    ep = {c: _median([r for r in rows if "error" not in r], "epoch_s") for c, rows in results.items()}
    nan = float("nan")
    bt = _best(results, lambda c: c == "torch" or c.startswith("torch-b"))
    bp = _best(results, lambda c: c.startswith("peft"))
    btr = _best(results, lambda c: c.startswith("trl"))
    t = ep.get(bt, nan)
    return (ep.get(bp, nan) / t, ep.get(btr, nan) / t, ep.get("mlx_lm", nan) / ep.get("mlx", nan), bt, bp, btr)


def main_parent(args: argparse.Namespace) -> None:
    from nightlora.models import prepare_model

    work = Path(args.work or tempfile.mkdtemp(prefix="nightlora-train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    prepare_model("smollm2-135m", args.model.parent) if not args.model.is_dir() else None
    env = dict(os.environ) | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
    set_names = args.sets.split(",")
    sets = build_sets(work, set_names, args.large_db, args.large_conversations, args.mlx_conversations, args.model,
                      args.mlx_examples)
    stats = {n: set_stats(p, args.model) for n, p in sets.items()}
    print(f"model {args.model}, LoRA rank {RANK} alpha {ALPHA:g} on every Linear of the last {LAYERS} blocks, "
          f"lr {args.lr:g} cosine, batch {args.batch}, one epoch; work dir {work}", flush=True)

    plan: list[tuple[str, str, int]] = []  # (set, contender, repeats)
    for s in set_names:
        names = (args.large_contenders if s == "large" else args.contenders).split(",")
        reps = args.large_repeats if s == "large" else args.repeats
        for c in names:
            if c.startswith("mlx"):
                if s == set_names[0]:
                    plan.append(("mlx", c, args.mlx_repeats))
            else:
                plan.append((s, c, reps))
    results: dict[str, dict[str, list[dict]]] = {}
    for s, c, _ in plan:
        results.setdefault(s, {})[c] = []
    state = work / "results.json"
    if args.resume and state.is_file():  # keep the runs an interrupted bench saved in this work dir
        for s, d in json.loads(state.read_text())["results"].items():
            for c, rs in d.items():
                results.setdefault(s, {}).setdefault(c, [])[:0] = rs
    save = lambda: state.write_text(json.dumps({"stats": stats, "results": results, "sets": {k: str(v) for k, v in sets.items()},  # noqa: E731
                                                "args": {"batch": args.batch, "lr": args.lr}}))
    if not args.no_profile and not (args.resume and (work / "profile.json").is_file()):
        run_profile(sets["demo"], args, work, env)
    rounds = max(r for _, _, r in plan)
    for rnd in range(rounds):
        for s in dict.fromkeys(p[0] for p in plan):
            todo = [c for ss, c, reps in plan if ss == s and reps > rnd]
            k = rnd % len(todo) if todo else 0
            for c in todo[k:] + todo[:k]:  # rotated each round
                if len(results[s][c]) > rnd:  # saved by an earlier, interrupted bench (--resume)
                    continue
                load = os.getloadavg()[0]
                r = run_contender(c, sets[s], args, work, env, stats[s])
                r["load"] = load
                results[s][c].append(r)
                save()
                shown = (f"epoch {r['epoch_s']:.1f} s, valid {r['valid']:.4f}, peak {r['peak_mb']:.0f} MB"
                         if "error" not in r else r["error"])
                print(f"round {rnd + 1} {s:<5} {c:<13} {shown} (load {load:.2f})", flush=True)
    report(work)


def run_profile(data: Path, args: argparse.Namespace, work: Path, env: dict) -> None:
    log = work / "profile.log"
    code, _, _ = _child(["--profile", "--data", str(data), "--model", str(args.model), "--batch", str(args.batch),
                         "--lr", str(args.lr), "--steps", str(args.profile_steps), "--out", str(work / "profile.json")],
                        log, env)
    if code != 0:
        print(f"profile failed: see {log}", flush=True)


def report(work: Path) -> None:
    """The tables, the profile, the machine limit and the last line, from what the runs saved in ``work``."""
    saved = json.loads((work / "results.json").read_text())
    stats, results = saved["stats"], saved["results"]
    results = {s: {c: rs for c, rs in d.items() if rs} for s, d in results.items()}
    print(f"\nload average 1/5/15 min at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} cores; loads at each start: "
          + ", ".join(f"{s}/{c} " + "/".join(f"{r['load']:.1f}" for r in rs) for s, d in results.items() for c, rs in d.items()))
    for s in results:
        print()
        print(table(s, stats[s], results[s]))
        if s == "mlx":
            st = stats["mlx"]
            print(f"(mlx: a subset of {st['conversations']} demo conversations, {st['examples']} per-turn examples, "
                  "the same for both mlx contenders; mlx on this CPU is too slow for a full epoch)")

    limit = None
    if (work / "profile.json").is_file():
        prof = json.loads((work / "profile.json").read_text())
        print(f"\nwhere nightlora torch's time goes (torch.profiler, {prof['steps']} steps of the demo at batch "
              f"{saved['args']['batch']}, {prof['step_s']:.2f} s per step; self CPU time by operator group):")
        for group, share in prof["groups"]:
            print(f"  {group:<36} {100 * share:5.1f} %")
        print("  top operators: " + ", ".join(f"{n} {100 * s:.1f}%" for n, s in prof["top"]))
        limit = prof
    if limit:
        for s in results:
            if s == "mlx" or "torch" not in results[s]:
                continue
            ok = [r for r in results[s]["torch"] if "error" not in r]
            if not ok:
                continue
            flops = epoch_flops(limit, stats[s])
            ep = _median(ok, "epoch_s")
            at_peak = flops / (limit["matmul_gflops"] * 1e9)
            print(f"[{s}] machine limit: the epoch needs {flops / 1e12:.2f} TFLOP (forward over every block "
                  f"and the head at targets, backward through the {LAYERS} adapted blocks: "
                  f"{limit['frozen_params'] / 1e6:.0f}M + {limit['path_params'] / 1e6:.0f}M params, attention "
                  f"included); at the measured fp32 matmul rate {limit['matmul_gflops']:.1f} GFLOP/s that is "
                  f"{at_peak:.1f} s; nightlora torch took {ep:.1f} s = {ep / at_peak:.2f}x the limit "
                  f"({flops / ep / 1e9:.1f} GFLOP/s achieved)")

    last = None
    for s in results:
        if s == "mlx":
            continue
        p, t, m, bto, bp, bt = ratios(results[s] | results.get("mlx", {}))
        valid = {c: _median([r for r in results[s].get(c, []) if "error" not in r], "valid") for c in (bto, bp, bt)}
        tv, pv, trv = valid[bto], valid[bp], valid[bt]
        print(f"[{s}] each by its best validation loss: nightlora = {bto} {tv:.4f}, plain PEFT = {bp} {pv:.4f}, "
              f"TRL best = {bt} {trv:.4f}; goal (torch <= 0.5x PEFT, <= 0.67x TRL, equal or lower loss; "
              f"mlx <= 0.5x mlx_lm): "
              f"{'met' if p >= 2 and t >= 1 / 0.67 and round(tv, 3) <= round(min(pv, trv), 3) and m >= 2 else 'not met'}")
        last = (p, t, m, s)
    if last:
        p, t, m, s = last
        print(f"(on the {s} export; mlx on the mlx subset)")
        print(f"train speed: nightlora torch {p:.2f}x plain PEFT, {t:.2f}x TRL best; mlx {m:.2f}x mlx_lm")


# ---- the children --------------------------------------------------------------------------------

def _hp(iters: int, batch: int, lr: float):
    from nightlora.train.base import HyperParams

    return HyperParams(iters=iters, batch_size=batch, learning_rate=lr, warmup_steps=0, lora_rank=RANK,
                       lora_alpha=ALPHA, lora_dropout=0.0, num_layers=LAYERS, max_seq_length=2048,
                       grad_checkpoint=False, eval_every=iters, early_stopping_patience=0, seed=0)


def run_trainer(name: str, args: argparse.Namespace) -> dict:
    """nightlora's own trainer; torch-packed swaps its collate and forward for the packed ones."""
    from nightlora.train.base import TrainRequest

    iters = math.ceil(args.sequences / args.batch)
    if name == "mlx":
        from nightlora.train.mlx.backend import MlxTrainer as Trainer
    else:
        from nightlora.train.torch import backend
        from nightlora.train.torch.backend import TorchTrainer as Trainer

        if name == "torch-packed":
            backend.collate, backend.target_logits = packed_collate, packed_target_logits
        else:
            backend.collate = counting_collate
    m = Trainer().train(TrainRequest(args.data, args.model, args.adapter, _hp(iters, args.batch, args.lr)))
    tokens = m.trained_tokens
    slots = _SLOTS[0] if name != "mlx" and _SLOTS[0] else tokens
    return {"steps": m.iters_done, "tokens": tokens, "slots": slots, "epoch_s": tokens / m.tokens_per_second}


_SLOTS = [0]  # positions computed by training batches (tokens + padding), counted by the collates


def counting_collate(items, pad_id):
    """nightlora's own collate, counting the positions a training batch computes (padding included)."""
    import torch

    from nightlora.train.torch.data import collate

    batch = collate(items, pad_id)
    if torch.is_grad_enabled():  # training, not validation
        _SLOTS[0] += batch.input_ids.numel()
    return batch


def packed_collate(items, pad_id):
    """One row: the sequences side by side, position ids restarting at each, no padding."""
    import torch

    from nightlora.train.torch.data import IGNORE_INDEX, Batch

    ids, pos, labels = [], [], []
    for e in items:
        ids += e.tokens
        pos += range(len(e.tokens))
        lab = [IGNORE_INDEX] * len(e.tokens)
        for s, t in e.spans:
            lab[s:t] = e.tokens[s:t]
        labels += lab
    b = Batch(torch.tensor([ids]), torch.ones((1, len(ids)), dtype=torch.long), torch.tensor([labels]))
    b.position_ids = torch.tensor([pos])
    b.to = lambda device, b=b: b  # CPU only here
    return b


def packed_target_logits(model, batch):
    import torch.nn.functional as F

    from nightlora.train.torch.backend import _body_and_head
    from nightlora.train.torch.data import IGNORE_INDEX

    targets = F.pad(batch.labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    where = targets != IGNORE_INDEX
    body, head = _body_and_head(model)
    if model.training:
        _SLOTS[0] += batch.input_ids.numel()
    # No attention mask: transformers reads the sequence boundaries from the restarting position ids.
    hidden = body(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state
    return head(hidden[where]), targets[where], where


def check_packed(model_dir: Path, data: Path) -> float:
    """Largest difference between per-sequence target losses packed and one at a time (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nightlora.train.torch.backend import target_loss_sum
    from nightlora.train.torch.data import collate, encode_examples

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    items = encode_examples(tok, _jsonl(data / "train.jsonl"), 2048).items[:4]
    with torch.no_grad():
        one = sum(float(target_loss_sum(model, collate([e], 0))) for e in items)
        import nightlora.train.torch.backend as backend
        keep = backend.target_logits
        backend.target_logits = packed_target_logits
        try:
            packed = float(target_loss_sum(model, packed_collate(items, 0)))
        finally:
            backend.target_logits = keep
    return abs(one - packed) / sum(e.n_targets for e in items)


def _lora(model):
    import torch
    from peft import LoraConfig, get_peft_model

    total = model.config.num_hidden_layers
    linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and ".layers." in n})
    return get_peft_model(model, LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=linears, task_type="CAUSAL_LM",
        layers_to_transform=list(range(total - LAYERS, total)), layers_pattern="layers"))


def _encode_turn(tokenizer, chat: dict) -> tuple[list[int], int]:
    """The whole chat's tokens and where its last message starts (mlx_lm's --mask-prompt rule)."""
    ids = tokenizer.apply_chat_template(chat["messages"], tools=chat.get("tools"), return_dict=False)
    prompt = tokenizer.apply_chat_template(chat["messages"][:-1], tools=chat.get("tools"),
                                           add_generation_prompt=True, return_dict=False)
    return list(ids), len(prompt)


def peft_run(args: argparse.Namespace, batch: int) -> dict:
    """What a user writes with transformers + PEFT: mask the prompt, shuffle, pad each batch, AdamW."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = _lora(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32))
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    chats = _jsonl(args.data / "train.jsonl")
    random.Random(0).shuffle(chats)
    encoded = [_encode_turn(tokenizer, c) for c in chats]
    batches = [encoded[i:i + batch] for i in range(0, len(encoded), batch)]
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, len(batches))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.train()
    tokens = slots = 0
    tic = time.perf_counter()
    for b in batches:
        width = max(len(ids) for ids, _ in b)
        input_ids = torch.full((len(b), width), pad)
        mask = torch.zeros((len(b), width), dtype=torch.long)
        labels = torch.full((len(b), width), -100)
        for row, (ids, start) in enumerate(b):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
            labels[row, start:len(ids)] = input_ids[row, start:len(ids)]
        model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        slots += mask.numel()
    epoch_s = time.perf_counter() - tic
    model.save_pretrained(args.adapter)
    return {"steps": len(batches), "tokens": tokens, "slots": slots, "epoch_s": epoch_s}


def trl_run(args: argparse.Namespace, packing: bool) -> dict:
    """TRL's SFTTrainer on the per-turn examples, pre-tokenized with the same prompt mask."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows = []
    for chat in _jsonl(args.data / "train.jsonl"):
        ids, start = _encode_turn(tokenizer, chat)
        rows.append({"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)})
    model = _lora(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32))
    counted = {"tokens": 0, "slots": 0}

    config = SFTConfig(
        output_dir=str(args.adapter) + "-trl", per_device_train_batch_size=1 if packing else args.batch,
        num_train_epochs=1, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0,
        logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True, seed=0,
        completion_only_loss=True, max_length=args.pack_length if packing else 2048, packing=packing,
        packing_strategy="bfd", gradient_checkpointing=False, dataloader_num_workers=0, bf16=False,
        train_sampling_strategy="random" if packing else "group_by_length", disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        counted["slots"] += batch["input_ids"].numel()
        counted["tokens"] += (int(batch["attention_mask"].sum()) if "attention_mask" in batch
                              else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    tic = time.perf_counter()
    out = trainer.train()
    epoch_s = time.perf_counter() - tic
    model.save_pretrained(args.adapter)
    # Padding-free rows have no attention mask and no padding, except the tail pad_to_multiple_of may add.
    return {"steps": out.global_step, "tokens": counted["tokens"], "slots": counted["slots"], "epoch_s": epoch_s}


def eval_run(args: argparse.Namespace) -> dict:
    """Token-weighted mean target loss over the per-turn valid examples: the same evaluator for everyone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nightlora.train.torch.backend import target_loss_sum
    from nightlora.train.torch.data import collate, encode_examples, eval_batches

    adapter = Path(args.eval)
    if args.fmt == "mlx":
        from nightlora.train.convert import convert_adapter

        adapter = convert_adapter(adapter, "mlx", "peft", args.model, Path(str(adapter) + "-peft"))
    tok = AutoTokenizer.from_pretrained(args.model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32), adapter).eval()
    items = encode_examples(tok, _jsonl(args.data / "valid.jsonl"), 2048, merge=False).items
    total = count = 0.0
    with torch.no_grad():
        for chunk in eval_batches(items, 8):
            b = collate(chunk, tok.pad_token_id or 0)
            total += float(target_loss_sum(model, b))
            count += b.n_targets
    return {"valid": total / count}


def matmul_gflops(seconds: float = 3.0) -> float:
    """fp32 matmul rate at the model's shapes (tokens x 576 by 576 x 1536), the best of a few runs."""
    import torch

    a, b = torch.randn(2048, 576), torch.randn(576, 1536)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        tic = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * 2048 * 576 * 1536 / (time.perf_counter() - tic) / 1e9)
    return best


def epoch_flops(p: dict, stats: dict) -> float:
    """Forward: 2 x block params per token over every block, 2 x head params per target; attention
    4 x n^2 x d per block per sequence (scores and values over the full square).  Backward: the input
    gradients only (the LoRA weights' gradients are tiny), through the adapted blocks and the head;
    attention's backward is twice its forward."""
    t, tg, sq, d = stats["merged_tokens"], stats["merged_targets"], stats["merged_sq"], p["hidden"]
    fwd = 2 * p["frozen_params"] * t + 2 * p["head_params"] * tg + 4 * d * p["blocks"] * sq
    # Frozen weights need no weight gradient: a Linear's backward is one matmul (the input's gradient).
    bwd = 2 * p["path_params"] * t + 2 * p["head_params"] * tg + 8 * d * LAYERS * sq
    return fwd + bwd


def profile_run(args: argparse.Namespace) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from nightlora.train.base import TrainRequest
    from nightlora.train.torch import backend

    result: dict = {"matmul_gflops": matmul_gflops(), "steps": args.steps}
    steps = args.steps
    run = backend._Run(TrainRequest(args.data, args.model, Path(tempfile.mkdtemp()) / "a", _hp(steps, args.batch, args.lr)),
                       None, time.perf_counter())
    schedule = backend.length_grouped_batches([len(e.tokens) for e in run.train_set], args.batch, 0)
    run.train_step(next(schedule))  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tic = time.perf_counter()
        for _ in range(steps):
            run.train_step(next(schedule))
        result["step_s"] = (time.perf_counter() - tic) / steps
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1
    groups = {"matmul (mm/addmm/bmm)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
              "attention (SDPA fwd/bwd)": ("scaled_dot_product", "_flash_attention", "_efficient_attention"),
              "optimizer (AdamW)": ("_foreach", "adam", "Optimizer"),
              "softmax / cross-entropy": ("softmax", "nll_loss", "cross_entropy"),
              "copies, cat, index": ("aten::copy_", "aten::cat", "aten::index", "aten::_to_copy", "aten::clone",
                                     "aten::contiguous", "aten::nonzero", "aten::masked"),
              "elementwise (mul, add, silu, norm)": ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt",
                                                     "aten::pow", "aten::mean", "aten::neg", "aten::sigmoid",
                                                     "aten::div", "aten::sum", "aten::fill_", "aten::zero_",
                                                     "aten::sub", "aten::where")}
    shares = {g: 0 for g in groups} | {"other": 0}
    for key, t in events:
        for g, pats in groups.items():
            if any(p in key for p in pats):
                shares[g] += t
                break
        else:
            shares["other"] += t
    result["groups"] = sorted(((g, t / total) for g, t in shares.items()), key=lambda x: -x[1])
    result["top"] = [(k, t / total) for k, t in sorted(events, key=lambda x: -x[1])[:6]]
    model = run.model.get_base_model()
    blocks = model.config.num_hidden_layers
    block_params = sum(p.numel() for n, p in model.named_parameters()
                       if ".layers." in n and p.dim() == 2 and "lora_" not in n)
    head = model.get_output_embeddings().weight.numel()
    result |= {"frozen_params": block_params, "path_params": block_params * LAYERS // blocks, "head_params": head,
               "blocks": blocks, "hidden": model.config.hidden_size}
    return result


def main_child(args: argparse.Namespace) -> None:
    if args.run and (m := re.fullmatch(r"(peft-b\d+|trl|trl-packed)-lr([0-9.e-]+)", args.run)):
        args.run, args.lr = m.group(1), float(m.group(2))  # a baseline at another rate
    if args.eval:
        result = eval_run(args)
    elif args.profile:
        result = profile_run(args)
    elif args.run.startswith("peft-b"):
        result = peft_run(args, int(args.run.removeprefix("peft-b")))
    elif args.run.startswith("trl"):
        result = trl_run(args, packing=args.run == "trl-packed")
    elif m := re.fullmatch(r"torch-b(\d+)(?:-lr([0-9.e-]+))?", args.run):  # nightlora torch at another batch (and rate)
        args.batch = int(m.group(1))
        if m.group(2):  # a merged sequence holds all of a conversation's targets: fewer, fuller steps per epoch
            args.lr = float(m.group(2))
        result = run_trainer("torch", args)
    else:
        if args.run == "torch-packed":
            diff = check_packed(args.model, args.data)
            print(f"packed vs one at a time: {diff:.2e} per target token")
            if diff > 1e-4:
                sys.exit(f"packed losses differ from one-at-a-time ones by {diff:.2e} per token")
        result = run_trainer(args.run, args)
    Path(args.out).write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / ".cache" / "models" / "smollm2-135m")
    p.add_argument("--sets", default="demo,large")
    p.add_argument("--contenders", default=DEFAULT, help="for the demo set (and the mlx subset)")
    p.add_argument("--large-contenders", default="torch,torch-packed,peft-b1,peft-b4,trl,trl-packed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large-repeats", type=int, default=1)
    p.add_argument("--mlx-repeats", type=int, default=1)
    p.add_argument("--large-db", type=int, default=700, help="conversations in the large demo database")
    p.add_argument("--large-conversations", type=int, default=200)
    p.add_argument("--mlx-conversations", type=int, default=2)
    p.add_argument("--mlx-examples", type=_range, default=(2, 3), metavar="MIN-MAX",
                   help="train examples per conversation in the mlx subset (default 2-3)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4, help="nightlora's own choice at batch 4 (1e-4 x sqrt 4)")
    p.add_argument("--pack-length", type=int, default=1024, help="trl-packed's row length")
    p.add_argument("--profile-steps", type=int, default=8)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every contender (default: unset)")
    p.add_argument("--work", help="folder for the data, adapters and logs (default: a new temp folder)")
    p.add_argument("--resume", action="store_true", help="keep the runs already saved in --work's results.json")
    p.add_argument("--report", help="print the tables from a work folder's saved results (runs nothing)")
    # A child process: one contender, one evaluation or the profile.
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--eval", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fmt", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--sequences", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.run or args.eval or args.profile:
        main_child(args)
    elif args.report:
        report(Path(args.report))
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
