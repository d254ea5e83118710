"""How long the assistant is unavailable during one nightly run: mlx_lm (stop/restart) vs vLLM (switch).

Runs the demo's cycle (demo database, SmolLM2-135M, the backend that suits this machine) once
per case, while another process (as the app is one) asks the app's address a real one-token chat
completion every --interval seconds:

- ``mlx_lm`` per stop_during_training mode (--modes): a real `mlx_lm server` started by the
  process manager; the deploy restarts it on the new adapter;
- ``vllm``: a real vLLM (CPU build from .cache/vllm-venv, `make vllm`) started by the process
  manager, the app asking the stable name ``hanni`` through nightlora's proxy; the deploy loads
  the new version beside the old one and switches the name (targets/vllm/target.py).

Downtime is the time from the first failed poll to the next answered one, summed over outages;
the longest gap is the longest time between two answered polls; "training finished -> new
adapter answering" runs from the moment the status file leaves the train stage to the first
poll answered by the new version (vLLM names it in the answer; for mlx_lm, the first answer
after the restart).

    .venv/bin/python bench/downtime.py [--targets mlx_lm vllm] [--modes auto always] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import multiprocessing
import time
from pathlib import Path

import httpx

from nightlora.cli.wiring import build_deps
from nightlora.config import load_config
from nightlora.demo.setup import prepare_demo
from nightlora.pipeline.nightly import run_nightly
from nightlora.targets.vllm.config import VllmTargetConfig

VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".cache" / "vllm-venv" / "bin" / "python"
STABLE = "hanni"


def _poll(base_url: str, interval: float, model: str | None, status: str | None, out: str, halt) -> None:
    """The app's side, in a process of its own (as the real app is): a poll every ``interval`` s until ``halt``."""
    samples, stages = [], []
    train_ended, in_train, stage = None, False, None
    payload = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0.0}
    if model:
        payload["model"] = model
    with httpx.Client(trust_env=False) as http:
        while not halt.is_set():
            t0 = time.monotonic()
            try:
                stage = json.loads(Path(status).read_text()).get("stage") if status else None
            except (OSError, ValueError):
                pass
            if stage == "train":
                in_train = True
            elif in_train and train_ended is None:
                train_ended = t0
            try:
                r = http.post(f"{base_url}/v1/chat/completions", timeout=5.0, json=payload)
                body = r.json()
                ok, named = r.status_code == 200 and "choices" in body, body.get("model")
            except (httpx.HTTPError, ValueError, AttributeError):
                ok, named = False, None
            samples.append((t0, ok, time.monotonic(), named))
            stages.append(stage)
            halt.wait(max(0.0, interval - (time.monotonic() - t0)))
    Path(out).write_text(json.dumps({"samples": samples, "stages": stages, "train_ended": train_ended}))


class Poller:
    """A chat request every ``interval`` seconds from another process; after ``stop()``, what it saw."""

    def __init__(self, base_url: str, interval: float, model: str | None = None, status: Path | None = None):
        self.base_url, self.interval, self.model, self.status = base_url, interval, model, status
        # (sent at, answered, answered at, the model named in the answer), on this machine's monotonic clock
        self.samples: list[tuple[float, bool, float, str | None]] = []
        self.stages: list[str | None] = []  # the night's stage when each poll was sent (where a gap happened)
        self.train_ended: float | None = None
        ctx = multiprocessing.get_context("spawn")
        self._out = Path(tempfile.mkstemp(prefix="nightlora-poller-", suffix=".json")[1])
        self.halt = ctx.Event()
        self._proc = ctx.Process(target=_poll, args=(base_url, interval, model, str(status) if status else None,
                                                     str(self._out), self.halt), daemon=True)

    def start(self) -> None:
        self._proc.start()

    def join(self) -> None:
        self._proc.join()
        try:
            got = json.loads(self._out.read_text() or "{}")
        finally:
            self._out.unlink(missing_ok=True)
        self.samples = [tuple(x) for x in got.get("samples", [])]
        self.stages, self.train_ended = got.get("stages", []), got.get("train_ended")

    def outages(self) -> list[float]:
        spans, down_since = [], None
        for t, ok, _, _ in self.samples:
            if not ok and down_since is None:
                down_since = t
            elif ok and down_since is not None:
                spans.append(t - down_since)
                down_since = None
        if down_since is not None:
            spans.append(self.samples[-1][0] - down_since)
        return spans

    def longest_gap(self) -> float:
        done = [end for _, ok, end, _ in self.samples if ok]
        return max((b - a for a, b in zip(done, done[1:])), default=0.0)

    def worst_gaps(self, n: int = 3) -> list[tuple[float, str | None]]:
        """The n longest gaps between answered polls, each with the stage its closing poll was sent in."""
        done = [(end, st) for (_, ok, end, _), st in zip(self.samples, self.stages) if ok]
        gaps = [(b - a, st) for (a, _), (b, st) in zip(done, done[1:])]
        return sorted(gaps, key=lambda g: -g[0])[:n]

    def latency_by_stage(self) -> dict[str, tuple[int, float, float]]:
        """Per stage: answered polls, median and worst latency (s) of the one-token request."""
        import statistics

        by: dict[str, list[float]] = {}
        for (t, ok, end, _), st in zip(self.samples, self.stages):
            if ok:
                by.setdefault(st or "-", []).append(end - t)
        return {st: (len(v), statistics.median(v), max(v)) for st, v in by.items()}

    def new_adapter_after(self, new_model: str | None) -> float | None:
        """Seconds from the end of training to the first answer of the new version."""
        if self.train_ended is None:
            return None
        later = [(end, ok, m) for t, ok, end, m in self.samples if t >= self.train_ended]
        if new_model is not None:  # vLLM names the LoRA that answered
            return next((end - self.train_ended for end, ok, m in later if ok and m == new_model), None)
        failed = next((i for i, (_, ok, _) in enumerate(later) if not ok), None)  # mlx_lm: after the restart
        if failed is None:
            return None
        return next((end - self.train_ended for end, ok, _ in later[failed:] if ok), None)


def vllm_target(port: int) -> VllmTargetConfig:
    return VllmTargetConfig(python=VLLM_PYTHON, port=port, vllm_port=port + 1, model_name=STABLE,
                            extra_args=["--max-model-len", "2048", "--dtype", "float32"],
                            env={"VLLM_CPU_KVCACHE_SPACE": "2"})


def proxy_overhead_ms(target, n: int = 20) -> tuple[float, float]:
    """Median latency (ms) of a one-token chat completion to vLLM directly and through the proxy."""
    import statistics

    def median(url: str, model: str) -> float:
        times = []
        with httpx.Client(trust_env=False, timeout=30) as http:
            for _ in range(n):
                t0 = time.perf_counter()
                r = http.post(url + "/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
                r.raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    route = target.route()
    return median(target.vllm_url, route.upstream_model), median(target.proxy_url, route.stable)


def measure(case: str, mode: str, models_dir: Path, interval: float, conversations: int, iters: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"nightlora-downtime-{case}-") as tmp:
        cfg, _ = prepare_demo(Path(tmp), models_dir, mode, conversations=conversations)
        # The probe's 20 chat completions would compete with the poller; downtime is what is measured here.
        cfg.source.resolve(Path("probe.jsonl")).unlink()
        if iters:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"iters": iters})})
        if case == "vllm":
            cfg = cfg.model_copy(update={"target": vllm_target(cfg.target.port)})
        deps = build_deps(cfg, progress=False)
        deps.target.start()
        model = STABLE if case == "vllm" else None
        poller = Poller(deps.target.base_url, interval, model, cfg.source.state_path / "status.json")
        switch_ms: dict = {}
        overhead: tuple[float, float] | None = None
        try:
            if case == "vllm":  # the first start: vLLM ready, the stable name on the base model
                deps.target.activate(None, print).raise_for_health()
                overhead = proxy_overhead_ms(deps.target)
            deps.target.health().raise_for_health()
            poller.start()
            t0 = time.monotonic()
            result = run_nightly(cfg, deps)
            wall = time.monotonic() - t0
            switch_ms = dict(getattr(deps.target, "timings", {}))
            time.sleep(4 * interval)  # a last answered poll after the run
        finally:
            poller.halt.set()
            poller.join()
            deps.target.stop()
        spans = poller.outages()
        live = result.deploy.live if result.deploy else None
        new_model = f"{STABLE}-{live}" if case == "vllm" and live else None
        return {
            "case": case if case == "vllm" else f"mlx_lm/{mode}", "status": result.status,
            "stopped": result.train.downtime.stop if result.train else None,
            "run_s": wall, "train_s": result.stages_s.get("train", 0.0), "deploy_s": result.stages_s.get("deploy", 0.0),
            "downtime_s": sum(spans), "longest_s": max(spans, default=0.0), "outages": len(spans),
            "polls": len(poller.samples), "failed_polls": sum(1 for _, ok, _, _ in poller.samples if not ok),
            "gap_s": poller.longest_gap(), "to_new_s": poller.new_adapter_after(new_model), "switch_ms": switch_ms,
            "overhead": overhead, "worst_gaps": poller.worst_gaps(), "latency": poller.latency_by_stage(),
            "reason": result.train.downtime.reason if result.train else "",
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["mlx_lm", "vllm"], choices=["mlx_lm", "vllm"])
    ap.add_argument("--modes", nargs="+", default=["auto", "always"], choices=["auto", "always", "never"],
                    help="mlx_lm's stop_during_training modes (vLLM is never stopped)")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--conversations", type=int, default=40)
    ap.add_argument("--iters", type=int, default=None, help="fix the training steps (default: chosen from the data)")
    args = ap.parse_args()
    models_dir = Path(load_config(None).train.models_dir).expanduser().resolve()
    cases = [("mlx_lm", m) for m in args.modes if "mlx_lm" in args.targets] + \
            ([("vllm", "never")] if "vllm" in args.targets else [])
    rows = [measure(c, m, models_dir, args.interval, args.conversations, args.iters) for c, m in cases]
    steps = f"{args.iters} training steps" if args.iters else "training steps chosen from the data"
    print(f"\ndowntime of one demo run ({args.conversations} conversations, {steps}, SmolLM2-135M, "
          f"a chat request every {args.interval} s)")
    print(f"{'case':<14} {'status':<11} {'stopped':<8} {'run s':>7} {'train s':>8} {'deploy s':>9} "
          f"{'down s':>7} {'sent':>5} {'failed':>7} {'longest gap s':>14} {'train->new s':>13}")
    for r in rows:
        to_new = "-" if r["to_new_s"] is None else f"{r['to_new_s']:.1f}"
        print(f"{r['case']:<14} {r['status']:<11} {str(r['stopped']):<8} {r['run_s']:>7.1f} {r['train_s']:>8.1f} "
              f"{r['deploy_s']:>9.1f} {r['downtime_s']:>7.1f} {r['polls']:>5} {r['failed_polls']:>7} "
              f"{r['gap_s']:>14.2f} {to_new:>13}")
    for r in rows:
        print(f"  {r['case']}: {r['reason']}")
        print(f"  {r['case']} longest gaps: " + ", ".join(f"{g:.2f} s in {st or 'no run'}" for g, st in r["worst_gaps"]))
        print(f"  {r['case']} request latency by stage (answered, median s, worst s): " + "; ".join(
            f"{st} {n} {med:.2f} {worst:.2f}" for st, (n, med, worst) in r["latency"].items()))
        if r["switch_ms"]:
            print(f"  {r['case']} switch steps (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in r["switch_ms"].items()))
        if r.get("overhead"):
            direct, proxied = r["overhead"]
            print(f"  {r['case']} one-token request, median of 20: {direct:.1f} ms to vLLM, {proxied:.1f} ms through "
                  f"the proxy (+{proxied - direct:.1f} ms)")
    by = {r["case"]: r for r in rows}
    vllm = by.get("vllm")
    mlx = next((r for r in rows if r["case"].startswith("mlx_lm")), None)
    if vllm and mlx:
        print(f"downtime: vllm failed={vllm['failed_polls']} longest_gap_s={vllm['gap_s']:.2f}; "
              f"mlx_lm failed={mlx['failed_polls']} longest_gap_s={mlx['gap_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
