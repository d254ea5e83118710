"""`nightlora demo`: the whole nightly cycle on an embedded default, from nothing.

A demo Hanni database, SmolLM2-135M prepared from its PyPI wheel, a real
`mlx_lm server` on 127.0.0.1 started by the `process` manager (the user's running
assistant), then one `nightlora run`; it ends by asking the live server a
held-out question with the new adapter and showing where the run's files are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nightlora.cli.common import AppState, emit, info, json_option, pass_state
from nightlora.cli.run_cmds import _result_text
from nightlora.cli.wiring import build_deps
from nightlora.config import load_config
from nightlora.demo.setup import prepare_demo
from nightlora.evaluate.probe import read_probe
from nightlora.pipeline.nightly import run_nightly
from nightlora.platform.openai_client import ask
from nightlora.state.store import AdapterStore


def _summary_text(s: dict) -> str:
    lines = [f"live adapter: {s['live_adapter'] or 'none (the base model)'} on {s['server']}",
             f"Q: {s['question']}", f"A: {s['reply']}   (expected: {s['expected']})"]
    if s["probe_total"]:
        lines.append(f"held-out questions about the user: base model {s['probe_base']}/{s['probe_total']}, "
                     f"new adapter {s['probe_candidate']}/{s['probe_total']}")
    if s["general_change"] is not None:
        lines.append(f"general loss (the base model's own answers to other prompts): {s['general_change']:+.1%}")
    if s["decision"]:
        lines.append(s["decision"])
    lines += [f"report: {s['report']}", f"config: {s['config']}  (try: nightlora -c {s['config']} status)"]
    return "\n".join(lines)


@click.command()
@click.option("--dir", "demo_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"),
              show_default=True, help="Where the demo's data, config, runs and adapters go (rebuilt each time).")
@click.option("--stop-during-training", "stop", type=click.Choice(["auto", "always", "never"]), default="always",
              show_default=True,
              help="The demo's server is nobody's assistant: by default it is stopped while the night computes, "
                   "which gets every core (auto: kept serving when memory allows, on one core fewer).")
@click.option("--conversations", type=click.IntRange(10, 10000), default=30, show_default=True,
              help="Size of the demo database.")
@click.option("--keep-serving", is_flag=True, help="Leave the demo server running at the end.")
@json_option
@pass_state
def demo(state: AppState, demo_dir: Path, stop: str, conversations: int, keep_serving: bool, as_json: bool) -> None:
    """Run the whole nightly cycle on a demo database, SmolLM2-135M and a real local server."""
    demo_dir = demo_dir.resolve()
    old_config = demo_dir / "nightlora.toml"
    if old_config.is_file():  # a server left running by an earlier --keep-serving demo is ours: stop it by pid
        build_deps(load_config(old_config, environ={}), progress=False).target.stop()
    models_dir = state.config().models_dir.resolve()
    cfg, config_path = prepare_demo(demo_dir, models_dir, stop, conversations=conversations, log=info)
    deps = build_deps(cfg, progress=sys.stderr.isatty())

    info(f"starting the assistant's server (mlx_lm server, base model) on port {cfg.target.port}")
    deps.target.start()
    try:
        deps.target.health().raise_for_health()
        info("nightlora run: check, export, train, evaluate, deploy, commit, record")
        result = run_nightly(cfg, deps)
        info(_result_text(result))

        item = read_probe(deps.source.probe_path)[0]
        reply = ask(deps.target.base_url, item["question"],
                    system=deps.source.system_prompt()[0].text)
        live = AdapterStore.for_state_dir(cfg.source.state_path).current()
        ev = result.evaluation
        base, cand = (ev.scores["base"], ev.scores["candidate"]) if ev else (None, None)
        summary = {
            "status": result.status, "live_adapter": live.name if live else None,
            "server": deps.target.base_url, "question": item["question"], "reply": reply,
            "expected": item["answer"],
            "probe_base": base.probe_correct if base else None,
            "probe_candidate": cand.probe_correct if cand else None,
            "probe_total": cand.probe_total if cand else None,
            "general_change": (cand.general_loss / base.general_loss - 1)
            if cand and base and cand.general_loss and base.general_loss else None,
            "decision": ev.decision.summary() if ev else None,
            "run_dir": str(result.run_dir), "report": str(result.run_dir / "report.html") if result.run_dir else None,
            "config": str(config_path), "result": result.to_dict(),
        }
        emit(summary, as_json, _summary_text)
    finally:
        if keep_serving:
            info(f"the server keeps running; stop it with: nightlora -c {config_path} server stop")
        else:
            deps.target.stop()


COMMANDS: list[click.Command] = [demo]
