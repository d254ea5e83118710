"""How long the assistant is unavailable during one nightly run, per stop_during_training mode.

Runs the demo's cycle (demo database, SmolLM2-135M, a real `mlx_lm server` started by the
process manager, the backend that suits this machine) once per mode, while a thread asks
the server a real one-token chat completion every --interval seconds. Downtime is the time
from the first failed poll to the next answered one, summed over outages.

    .venv/bin/python bench/downtime.py [--modes auto always] [--interval 0.5] [--conversations 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from nightlora.cli.wiring import build_deps
from nightlora.config import load_config
from nightlora.demo.setup import prepare_demo
from nightlora.pipeline.nightly import run_nightly


class Poller(threading.Thread):
    def __init__(self, base_url: str, interval: float):
        super().__init__(daemon=True)
        self.base_url, self.interval = base_url, interval
        self.samples: list[tuple[float, bool]] = []
        self.halt = threading.Event()

    def answered(self, http: httpx.Client) -> bool:
        try:
            r = http.post(f"{self.base_url}/v1/chat/completions", timeout=5.0, json={
                "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0.0})
            return r.status_code == 200 and "choices" in r.json()
        except (httpx.HTTPError, ValueError):
            return False

    def run(self) -> None:
        with httpx.Client(trust_env=False) as http:
            while not self.halt.is_set():
                t0 = time.monotonic()
                self.samples.append((t0, self.answered(http)))
                self.halt.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def outages(self) -> list[float]:
        spans, down_since = [], None
        for t, ok in self.samples:
            if not ok and down_since is None:
                down_since = t
            elif ok and down_since is not None:
                spans.append(t - down_since)
                down_since = None
        if down_since is not None:
            spans.append(self.samples[-1][0] - down_since)
        return spans


def measure(mode: str, models_dir: Path, interval: float, conversations: int, iters: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"nightlora-downtime-{mode}-") as tmp:
        cfg, _ = prepare_demo(Path(tmp), models_dir, mode, conversations=conversations)
        # The probe's 20 chat completions would compete with the poller; downtime is what is measured here.
        cfg.source.resolve(Path("probe.jsonl")).unlink()
        if iters:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"iters": iters})})
        deps = build_deps(cfg, progress=False)
        deps.target.start()
        poller = Poller(deps.target.base_url, interval)
        try:
            deps.target.health().raise_for_health()
            poller.start()
            t0 = time.monotonic()
            result = run_nightly(cfg, deps)
            wall = time.monotonic() - t0
            time.sleep(2 * interval)  # a last answered poll after the run
        finally:
            poller.halt.set()
            poller.join()
            deps.target.stop()
        spans = poller.outages()
        return {
            "mode": mode, "status": result.status, "stopped": result.train.downtime.stop if result.train else None,
            "run_s": wall, "train_s": result.stages_s.get("train", 0.0), "deploy_s": result.stages_s.get("deploy", 0.0),
            "downtime_s": sum(spans), "longest_s": max(spans, default=0.0), "outages": len(spans),
            "polls": len(poller.samples), "failed_polls": sum(1 for _, ok in poller.samples if not ok),
            "reason": result.train.downtime.reason if result.train else "",
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["auto", "always"], choices=["auto", "always", "never"])
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--conversations", type=int, default=40)
    ap.add_argument("--iters", type=int, default=None, help="fix the training steps (default: chosen from the data)")
    args = ap.parse_args()
    models_dir = Path(load_config(None).train.models_dir).expanduser().resolve()
    rows = [measure(m, models_dir, args.interval, args.conversations, args.iters) for m in args.modes]
    steps = f"{args.iters} training steps" if args.iters else "training steps chosen from the data"
    print(f"\ndowntime of one demo run ({args.conversations} conversations, {steps}, SmolLM2-135M, "
          f"polled every {args.interval} s)")
    print(f"{'mode':<8} {'status':<10} {'stopped':<8} {'run s':>7} {'train s':>8} {'deploy s':>9} "
          f"{'down s':>7} {'longest s':>10} {'outages':>8} {'failed/polls':>13}")
    for r in rows:
        print(f"{r['mode']:<8} {r['status']:<10} {str(r['stopped']):<8} {r['run_s']:>7.1f} {r['train_s']:>8.1f} "
              f"{r['deploy_s']:>9.1f} {r['downtime_s']:>7.1f} {r['longest_s']:>10.1f} {r['outages']:>8} "
              f"{r['failed_polls']:>6}/{r['polls']:<6}")
    for r in rows:
        print(f"  {r['mode']}: {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
