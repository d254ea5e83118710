"""Commands for the whole cycle: run, recover, server start/stop/status."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from nightlora.platform.openai_client import ask
from nightlora.cli.common import AppState, emit, info, json_option, pass_state
from nightlora.config import Config
from nightlora.targets.downtime import read_memory
from nightlora.errors import ModelError
from nightlora.pipeline.lock import RunLock
from nightlora.platform.notify import make_notifier
from nightlora.pipeline.nightly import RunDeps, RunResult, recover, run_nightly
from nightlora.platform.runner import SubprocessRunner
from nightlora.targets.health import HealthCheck
from nightlora.targets.registry import make_manager
from nightlora.targets.registry import served_model
from nightlora.train.registry import make_trainer


def _system_prompt(cfg: Config) -> str | None:
    path = cfg.source.system_prompt_path
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def build_deps(cfg: Config, *, progress: bool = True) -> RunDeps:
    """The real side effects: subprocesses, HTTP to the server, notifications, /proc/meminfo.

    ``progress``: a progress bar; otherwise a log line per validation and per tenth of training.
    """
    runner = SubprocessRunner()
    health = HealthCheck.from_config(cfg)
    system = _system_prompt(cfg)
    bars: dict[str, Any] = {}

    def show_progress(event: Any) -> None:
        from nightlora.train.progress import TqdmProgress

        bar = bars.get("train") or bars.setdefault("train", TqdmProgress(event.total))
        bar(event)
        if event.step >= event.total:
            bars.pop("train").close()

    def log_progress(event: Any) -> None:
        # Without a terminal (the nightly job's log), one line per validation and per tenth of the run.
        tenth = max(1, event.total // 10)
        if event.message or event.valid_loss is not None or (event.step % tenth == 0 and event.train_loss is not None):
            parts = [f"step {event.step}/{event.total}"]
            if event.train_loss is not None:
                parts.append(f"loss {event.train_loss:.3f}")
            if event.valid_loss is not None:
                parts.append(f"validation loss {event.valid_loss:.3f}")
            if event.tokens_per_second:
                parts.append(f"{event.tokens_per_second:.0f} tokens/s")
            info("  " + ", ".join(parts) + (f" ({event.message})" if event.message else ""))

    return RunDeps(
        manager=make_manager(cfg, runner, model=served_model(cfg)),
        health=health,
        trainer_for=make_trainer,
        notifier=make_notifier(runner),
        read_memory=lambda: read_memory(runner),
        chat=lambda q: ask(health.base_url, q, system=system),
        progress=show_progress if progress else log_progress,
        log=info,
    )


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
    cfg = state.config({"train.backend": backend, "server.stop_during_training": stop_during_training})
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
        emit({"managed": False}, as_json, "the server is not ours to manage (server.manager = none); nothing to do")
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
    deps = build_deps(cfg, progress=False)
    if not deps.manager.managed:
        raise ModelError("server.manager = none: the server is not ours to start")
    with RunLock.for_state_dir(cfg.source.state_path):
        if not deps.manager.is_running():
            deps.manager.start()
        h = deps.health(alive=deps.manager.is_running)
    emit(h, as_json, f"{deps.manager.describe()}: " + (f"answering ({h.reply!r})" if h.ok else h.reason))
    h.raise_for_health()


@server.command("stop")
@pass_state
def server_stop(state: AppState) -> None:
    """Stop the server (only the one this tool manages, by its pid or service label)."""
    cfg = state.config()
    deps = build_deps(cfg, progress=False)
    with RunLock.for_state_dir(cfg.source.state_path):
        deps.manager.stop()
    click.echo(f"stopped: {deps.manager.describe()}")


@server.command("status")
@json_option
@pass_state
def server_status(state: AppState, as_json: bool) -> None:
    """Whether the server runs and answers a real chat completion."""
    cfg = state.config()
    deps = build_deps(cfg, progress=False)
    running = deps.manager.is_running() if deps.manager.managed else None
    h = dataclasses.replace(deps.health, timeout=5.0)()
    emit({"running": running, "health": h}, as_json,
         f"{deps.manager.describe()}: " + ("answering" if h.ok else f"not answering ({h.reason})"))


COMMANDS: list[click.Command] = [run, recover_cmd, server]
