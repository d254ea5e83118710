"""Training throughput and peak memory: nightlora's backends against what a user runs by hand.

    .venv/bin/python bench/train_throughput.py [--data DIR] [--model DIR] [--steps 3]
        [--contenders torch,mlx,mlx_lm,peft] [--threads N] [--work DIR]

Contenders, each in its own process so that its peak memory is its own:

  torch   nightlora.train.torch.backend.TorchTrainer
  mlx     nightlora.train.mlx.backend.MlxTrainer
  mlx_lm  the original job's command: python -m mlx_lm lora --train --mask-prompt
          --batch-size 1 --learning-rate 2e-5 --grad-checkpoint --test, with --iters STEPS
  peft    a plain transformers + PEFT training loop, the script a user would write

Equal work: the train split is the STEPS shortest chats of the export (--data, else the
demo database exported afresh), and every contender takes STEPS steps of batch 1, so each
sees every chat once; the valid and test splits are one short chat each. All use LoRA
rank 8 on every Linear of the last 16 blocks (mlx_lm's default), the prompt masked, and
gradient checkpointing.

tokens: the real tokens trained on (prompt and target, no padding), as the contender
counts them (for mlx_lm: the sum over the train split, which its one epoch covers).
tokens/s: tokens / training time (the steps only: not loading, not validation).
peak MB: the process's peak resident memory (wait4). wall s: the whole process.
--threads N sets OMP_NUM_THREADS for every contender: on cores busy with other work,
torch's spinning OpenMP threads can make a step ten times slower.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ("torch", "mlx", "mlx_lm", "peft")
RANK, ALPHA, LAYERS, LEARNING_RATE = 8, 16.0, 16, 2e-5
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# mlx_lm lora's report lines, once colours are stripped: "  3    2.345 ▼        1     0.2k" and
# "  1    val 2.600    30.85s"; the table header "iter   train_loss ..." comes just before step 1.
CLI_TRAIN = re.compile(r"^\s*(\d+)\s+[\d.]+\s+[▼▲]")
CLI_VAL = re.compile(r"^\s*\d+\s+val\s+[\d.]+\s+([\d.]+)s")


# ---- the parent: data, processes, table -------------------------------------------------------

def _tokens(tokenizer, chat: dict) -> int:
    return len(tokenizer.apply_chat_template(chat["messages"], tools=chat.get("tools"), return_dict=False))


def bench_dataset(source: Path, dest: Path, model: Path, steps: int) -> int:
    """The STEPS shortest train chats and the shortest valid and test chat; returns the train tokens."""
    from transformers import AutoTokenizer

    from nightlora.train.splits import read_split

    tokenizer = AutoTokenizer.from_pretrained(model)
    dest.mkdir(parents=True)
    train_tokens = 0
    for split, keep in (("train", steps), ("valid", 1), ("test", 1)):
        chats = sorted(read_split(source, split), key=lambda c: _tokens(tokenizer, c))[:keep]
        if split == "train":
            if len(chats) < steps:
                sys.exit(f"{source} has {len(chats)} train chats; --steps {steps} needs as many")
            train_tokens = sum(_tokens(tokenizer, c) for c in chats)
        (dest / f"{split}.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats))
    if (source / "manifest.json").is_file():
        (dest / "manifest.json").write_bytes((source / "manifest.json").read_bytes())
    return train_tokens


def export_demo(work: Path) -> Path:
    from nightlora.demo.database import build_demo_db
    from nightlora.sources.hanni.source import export_db as export_dataset

    demo = build_demo_db(work / "demo" / "hanni.db")
    export_dataset(demo.path, work / "demo" / "training", demo.system_prompt_path)
    return work / "demo" / "training"


def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Exit code and peak RSS in MB of a child, from wait4 (its own, not the maximum over all children)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # KiB on Linux


def run_child(name: str, data: Path, model: Path, steps: int, work: Path, env: dict[str, str]) -> dict:
    result = work / f"{name}.json"
    argv = [sys.executable, __file__, "--run", name, "--data", str(data), "--model", str(model),
            "--steps", str(steps), "--work", str(work)]
    t0 = time.perf_counter()
    with open(work / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        code, peak = _wait(proc)
    wall = time.perf_counter() - t0
    if code != 0 or not result.is_file():
        return {"error": f"exit {code}, see {work / f'{name}.log'}"}
    return json.loads(result.read_text()) | {"peak_mb": peak, "wall_s": wall}


def run_mlx_lm(data: Path, model: Path, steps: int, work: Path, train_tokens: int, env: dict[str, str]) -> dict:
    """The original command as a user runs it; training time from the timestamps of its report lines."""
    from nightlora.models import num_layers

    argv = [sys.executable, "-m", "mlx_lm", "lora", "--train", "--model", str(model), "--data", str(data),
            "--adapter-path", str(work / "mlx_lm-adapter"), "--mask-prompt", "--batch-size", "1",
            "--iters", str(steps), "--learning-rate", str(LEARNING_RATE), "--grad-checkpoint", "--test",
            # 16 is mlx_lm's default; named for models with fewer blocks.
            "--num-layers", str(min(LAYERS, num_layers(model))), "--steps-per-report", "1"]
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
    wall = time.perf_counter() - t0
    (work / "mlx_lm.log").write_text("".join(lines))
    if code != 0 or start is None or last is None:
        return {"error": f"exit {code}, see {work / 'mlx_lm.log'}"}
    # Validations run between the header and the last step line; their durations are printed.
    train_s = last - start - val_s
    return {"steps": done, "tokens": train_tokens, "train_s": train_s, "peak_mb": peak, "wall_s": wall}


def table(rows: list[tuple[str, dict]]) -> str:
    head = f"{'backend':<8} {'steps':>5} {'tokens':>7} {'tokens/s':>9} {'peak MB':>8} {'wall s':>7}"
    out = [head, "-" * len(head)]
    for name, r in rows:
        if "error" in r:
            out.append(f"{name:<8} {r['error']}")
        else:
            out.append(f"{name:<8} {r['steps']:>5} {r['tokens']:>7} {r['tokens'] / r['train_s']:>9.2f} "
                       f"{r['peak_mb']:>8.0f} {r['wall_s']:>7.1f}")
    return "\n".join(out)


def main_parent(args: argparse.Namespace) -> None:
    from nightlora.models import num_layers

    work = Path(args.work or tempfile.mkdtemp(prefix="nightlora-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    source = args.data or export_demo(work)
    data = work / "bench-data"
    train_tokens = bench_dataset(source, data, args.model, args.steps)
    env = dict(os.environ) | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
    layers = min(LAYERS, num_layers(args.model))
    print(f"model {args.model} ({layers} of {num_layers(args.model)} blocks adapted), data {source}: "
          f"{args.steps} shortest train chats, {train_tokens} tokens; threads {args.threads or 'default'}; "
          f"work dir {work}", flush=True)
    rows = []
    for name in args.contenders.split(","):
        if name not in CONTENDERS:
            sys.exit(f"unknown contender {name!r} (known: {', '.join(CONTENDERS)})")
        print(f"running {name} ...", flush=True)
        if name == "mlx_lm":
            rows.append((name, run_mlx_lm(data, args.model, args.steps, work, train_tokens, env)))
        else:
            rows.append((name, run_child(name, data, args.model, args.steps, work, env)))
    print(table(rows))


# ---- a child: one contender in this process ----------------------------------------------------

def trainer_run(name: str, data: Path, model: Path, steps: int, work: Path) -> dict:
    from nightlora.train.base import HyperParams, TrainRequest
    from nightlora.models import num_layers

    if name == "torch":
        try:
            from nightlora.train.torch.backend import TorchTrainer as Trainer
        except ImportError as e:
            return {"error": f"not available ({e})"}
    else:
        from nightlora.train.mlx.backend import MlxTrainer as Trainer
    hp = HyperParams(iters=steps, batch_size=1, learning_rate=LEARNING_RATE, warmup_steps=0, lora_rank=RANK,
                     lora_alpha=ALPHA, lora_dropout=0.0, num_layers=min(LAYERS, num_layers(model)),
                     max_seq_length=2048, grad_checkpoint=True, eval_every=steps, early_stopping_patience=0, seed=0)
    m = Trainer().train(TrainRequest(data, model, work / f"{name}-adapter", hp))
    return {"steps": m.iters_done, "tokens": m.trained_tokens, "train_s": m.trained_tokens / m.tokens_per_second}


def peft_run(data: Path, model_dir: Path, steps: int) -> dict:
    """What a user writes with transformers + PEFT: mask the prompt, one chat per step, AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nightlora.train.splits import read_split

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    total = model.config.num_hidden_layers
    linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and ".layers." in n})
    model = get_peft_model(model, LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=linears, task_type="CAUSAL_LM",
        layers_to_transform=list(range(total - min(LAYERS, total), total)), layers_pattern="layers"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)

    def encode(chat: dict) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer.apply_chat_template(chat["messages"], tools=chat.get("tools"), return_dict=False)
        prompt = tokenizer.apply_chat_template(chat["messages"][:-1], tools=chat.get("tools"),
                                               add_generation_prompt=True, return_dict=False)
        labels = [-100] * len(prompt) + ids[len(prompt):]
        return torch.tensor([ids]), torch.tensor([labels])

    def evaluate(split: str) -> None:
        model.eval()
        with torch.no_grad():
            for chat in read_split(data, split):
                ids, labels = encode(chat)
                model(input_ids=ids, labels=labels)
        model.train()

    train = read_split(data, "train")[:steps]
    evaluate("valid")
    tokens, train_s = 0, 0.0
    for chat in train:
        ids, labels = encode(chat)
        tic = time.perf_counter()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - tic
        tokens += ids.shape[1]
    evaluate("valid")
    evaluate("test")
    return {"steps": len(train), "tokens": tokens, "train_s": train_s}


def main_child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    if args.run == "peft":
        result = peft_run(args.data, args.model, args.steps)
    else:
        result = trainer_run(args.run, args.data, args.model, args.steps, work)
    (work / f"{args.run}.json").write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a folder written by `nightlora export` (default: the demo database, exported)")
    p.add_argument("--model", type=Path, default=ROOT / ".cache" / "models" / "smollm2-135m")
    p.add_argument("--steps", type=int, default=3, help="training steps of batch 1 per contender (default 3)")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every contender (default: unset)")
    p.add_argument("--work", help="folder for the data, adapters and logs (default: a new temp folder)")
    p.add_argument("--run", choices=CONTENDERS, help=argparse.SUPPRESS)  # a child process: run one contender
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.run:
        main_child(args)
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
