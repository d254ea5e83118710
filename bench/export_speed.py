"""Export speed and memory on a large Hanni database (a benchmark, not a test).

    .venv/bin/python bench/export_speed.py [--conversations 100000] [--small 10000] [--dir DIR]

Builds (or reuses, in --dir) databases of random conversations in both message formats,
with tool calls, action blocks, ratings and a few malformed rows, then exports each one
in a fresh process and prints conversations/s, CPU time (wall time alone misleads on a
busy machine) and peak memory.  The small database shows that peak memory does not grow
with the number of conversations.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from nightlora.sources.hanni.db import SCHEMA_SQL

WORDS = (
    "the a my your cat dog Lisbon tea coffee morning run remind call tomorrow today evening dinner "
    "book music studio weather rain sun umbrella please thanks why how when where what which time "
    "кошка собака утро чай напомни завтра сегодня ужин погода спасибо пожалуйста почему как где"
).split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n)) + f" {rng.randrange(10**9)}"


def _conversation(rng: random.Random, newer: bool) -> tuple[str, int, list[int]]:
    """(messages JSON, message count, assistant indexes)."""
    msgs: list[Any] = []
    assistant: list[int] = []
    for turn in range(rng.randint(1, 6)):
        user = _text(rng, rng.randint(3, 15))
        if newer and rng.random() < 0.3:
            user += " /no_think"
        msgs.append({"role": "user", "content": user} if newer else ["user", user])
        if newer and rng.random() < 0.1:
            call_id = f"call_{turn}_{rng.randrange(10**6)}"
            args = json.dumps({"city": rng.choice(("Lisbon", "Porto")), "days": rng.randint(1, 3)})
            msgs.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": args}}]})
            msgs.append({"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temp_c": rng.randint(5, 30)})})
        elif rng.random() < 0.05:
            block = "```action\n" + json.dumps({"type": "reminder", "text": _text(rng, 3)}) + "\n```"
            msgs.append({"role": "assistant", "content": block} if newer else ["assistant", block])
            result = "[Action result: reminder created]"
            msgs.append({"role": "user", "content": result} if newer else ["user", result])
        assistant.append(len(msgs))
        reply = _text(rng, rng.randint(5, 40))
        msgs.append({"role": "assistant", "content": reply} if newer else ["assistant", reply])
    return json.dumps(msgs, ensure_ascii=False), len(msgs), assistant


def _rows(n: int, seed: int) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    rng = random.Random(seed)
    for cid in range(1, n + 1):
        started = f"2024-01-01T00:00:00+{cid:08d}"
        if cid % 997 == 0:  # malformed rows, as real databases have
            yield (cid, started, started, None, 2, '[["user", "cut off'), []
            continue
        raw, count, assistant = _conversation(rng, newer=cid > n // 2)
        feedback = []
        if rng.random() < 0.3:
            for index in rng.sample(assistant, k=min(len(assistant), rng.randint(1, 2))):
                feedback.append((cid, index, rng.choice((1, 1, 1, -1, 0)), started, int(cid < n * 0.8)))
        yield (cid, started, started, None, count, raw), feedback


def build_db(path: Path, n: int, seed: int = 0) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    conn.executescript(SCHEMA_SQL)
    batch_c: list[tuple[Any, ...]] = []
    batch_f: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.executemany("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)", batch_c)
        conn.executemany(
            "INSERT INTO message_feedback (conversation_id, message_index, rating, created_at, exported)"
            " VALUES (?, ?, ?, ?, ?)", batch_f)
        batch_c.clear()
        batch_f.clear()

    for conv, feedback in _rows(n, seed):
        batch_c.append(conv)
        batch_f.extend(feedback)
        if len(batch_c) >= 5000:
            flush()
    flush()
    conn.commit()
    conn.close()
    tmp.replace(path)


def _mib(kib: int) -> float:
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20  # macOS reports bytes


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(db: Path, out: Path) -> dict[str, Any]:
    """Run in a fresh process: one export, its time and peak memory."""
    from nightlora.sources.hanni.source import export_db as export_dataset

    before = _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    result = export_dataset(db, out, None, min_messages=2)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    return {
        "conversations": result.manifest["conversations"]["total"],
        "examples": sum(result.counts[s] for s in ("train", "valid", "test")),
        "mib_written": sum(f["bytes"] for f in result.manifest["files"].values()) / 2**20,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_before_mib": before,
        "rss_peak_mib": _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    }


def _run_child(*args: Any) -> str:
    # Building a database in this process would raise the peak RSS the child reports: Linux
    # carries a process's peak over to the program it starts.
    argv = [sys.executable, __file__, *map(str, args)]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000, help="the size to compare peak memory with")
    ap.add_argument("--dir", type=Path, default=None, help="keep (and reuse) the databases here")
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        db, out = args.measure
        print(json.dumps(measure(Path(db), Path(out))))
        return
    if args.build:
        db, n = args.build
        build_db(Path(db), int(n))
        return

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nightlora-bench-") as tmp:
        work = args.dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in (args.small, args.conversations):
            db = work / f"hanni-{n}.db"
            if not db.exists():
                t0 = time.perf_counter()
                _run_child("--build", db, n)
                print(f"built {db.name}: {n} conversations in {time.perf_counter() - t0:.1f} s", flush=True)
            r = json.loads(_run_child("--measure", db, work / f"export-{n}"))
            print(
                f"{r['conversations']:>7} conversations: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU), "
                f"{r['conversations'] / r['seconds']:,.0f} conversations/s "
                f"({r['examples']:,} examples, {r['mib_written']:.0f} MiB written); "
                f"peak RSS {r['rss_peak_mib']:.1f} MiB ({r['rss_before_mib']:.1f} before the export)",
                flush=True,
            )


if __name__ == "__main__":
    main()
