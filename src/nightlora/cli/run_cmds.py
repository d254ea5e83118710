"""Commands for the whole cycle: run, recover, server start/stop/status."""

from __future__ import annotations

import click

from nightlora.cli.common import AppState, emit, json_option, pass_state
from nightlora.cli.wiring import build_deps
from nightlora.errors import ServerError
from nightlora.pipeline.lock import RunLock
from nightlora.pipeline.nightly import run_nightly
from nightlora.pipeline.recover import recover
from nightlora.pipeline.result import RunResult


def _result_text(r: RunResult) -> str:
    lines = [f"{r.status}: {r.message}"]
    if r.stages_s:
        lines.append("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.stages_s.items()))
    if r.run_dir:
        lines.append(f"run folder: {r.run_dir}")
    return "\n".join(lines)


@click.command()
@click.option("--force", is_flag=True, help="Train even when there is less new feedback than data.min_feedback.")
@click.option("--backend", type=click.Choice(["auto", "mlx", "torch"]), default=None, help="Training backend.")
@click.option("--stop-during-training", type=click.Choice(["auto", "always", "never"]), default=None,
              help="Stop the server while training (auto: only if memory is short).")
@click.option("--no-progress", is_flag=True, help="No progress bar (the nightly job's log stays readable).")
@json_option
@pass_state
def run(state: AppState, force: bool, backend: str | None, stop_during_training: str | None,
        no_progress: bool, as_json: bool) -> None:
    """The nightly cycle: check, export, train, evaluate, deploy, mark feedback, record."""
    cfg = state.config({"train.backend": backend, "target.stop_during_training": stop_during_training})
    result = run_nightly(cfg, build_deps(cfg, progress=not no_progress), force=force)
    emit(result, as_json, _result_text)


@click.command("recover")
@json_option
@pass_state
def recover_cmd(state: AppState, as_json: bool) -> None:
    """After a killed run: mark it interrupted and make sure the server answers."""
    cfg = state.config()
    with RunLock.for_state_dir(cfg.source.state_path):
        result = recover(cfg, build_deps(cfg, progress=False))
    if result is None:
        emit({"managed": False}, as_json, "the server is not ours to manage (target.kind = none); nothing to do")
        return
    emit(result, as_json, result.message())
    result.raise_if_down()


@click.group()
def server() -> None:
    """Start, stop or check the inference server with the live adapter."""


@server.command("start")
@json_option
@pass_state
def server_start(state: AppState, as_json: bool) -> None:
    """Start the server on the live adapter and wait until it answers."""
    cfg = state.config()
    target = build_deps(cfg, progress=False).target
    if not target.managed:
        raise ServerError("target.kind = none: the server is not ours to start")
    with RunLock.for_state_dir(cfg.source.state_path):
        if not target.is_running():
            target.start()
        h = target.health()
    emit(h, as_json, f"{target.describe()}: " + (f"answering ({h.reply!r})" if h.ok else h.reason))
    h.raise_for_health()


@server.command("stop")
@pass_state
def server_stop(state: AppState) -> None:
    """Stop the server (only the one this tool manages, by its pid or service label)."""
    cfg = state.config()
    target = build_deps(cfg, progress=False).target
    with RunLock.for_state_dir(cfg.source.state_path):
        target.stop()
    click.echo(f"stopped: {target.describe()}")


@server.command("status")
@json_option
@pass_state
def server_status(state: AppState, as_json: bool) -> None:
    """Whether the server runs and answers a real chat completion."""
    cfg = state.config()
    target = build_deps(cfg, progress=False).target
    running = target.is_running() if target.managed else None
    h = target.health(timeout=5.0)
    emit({"running": running, "health": h}, as_json,
         f"{target.describe()}: " + ("answering" if h.ok else f"not answering ({h.reason})"))


COMMANDS: list[click.Command] = [run, recover_cmd, server]
