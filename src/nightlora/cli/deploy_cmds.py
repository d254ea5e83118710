"""Commands for what is served and when the job runs: adapters, rollback, schedule."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from nightlora.cli.common import AppState, emit, info, json_option, pass_state, warn
from nightlora.config import CONFIG_ENV, default_config_path
from nightlora.targets.deploy import deploy
from nightlora.errors import StoreError
from nightlora.pipeline.lock import RunLock
from nightlora.state.db import StateDB
from nightlora.platform.runner import SubprocessRunner
from nightlora.schedule import (
    ScheduleStatus, disable_old_agent, find_old_agents, make_schedule, nightly_argv, with_notes,
)
from nightlora.cli.wiring import build_target
from nightlora.state.store import AdapterStore, Version


def _store(state: AppState) -> tuple[Any, AdapterStore]:
    cfg = state.config()
    return cfg, AdapterStore.for_state_dir(cfg.source.state_path)


def _version_row(v: Version, live: str | None) -> dict[str, Any]:
    d = v.to_dict()
    d["live"] = v.name == live
    return d


def _counts(v: dict[str, Any]) -> str:
    c = v.get("data_counts") or {}
    return "/".join(str(c.get(k, "-")) for k in ("train", "valid", "test")) if c else "-"


def _adapters_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no adapter versions yet (the base model is served)"
    lines = [f"  {'VERSION':<8} {'CREATED':<20} {'BASE MODEL':<28} {'TRAIN/VAL/TEST':<15} EVAL"]
    for r in rows:
        score = f"{r['eval_score']:.3f}" if r["eval_score"] is not None else "-"
        created = (r["created_at"] or "-")[:19].replace("T", " ")
        base = Path(r["base_model"]).name if r["base_model"] else "-"
        line = f"{'*' if r['live'] else ' '} {r['name']:<8} {created:<20} {base[:28]:<28} {_counts(r):<15} {score}"
        if r["rejected"]:
            line += f"  (rejected: {r['rejected']})"
        lines.append(line)
    if not any(r["live"] for r in rows):
        lines.append("no version is live: the base model is served without an adapter")
    return "\n".join(lines)


@click.command()
@json_option
@pass_state
def adapters(state: AppState, as_json: bool) -> None:
    """List the adapter versions; * marks the live one."""
    _, store = _store(state)
    cur = store.current()
    live = cur.name if cur else None
    rows = [_version_row(v, live) for v in reversed(store.list())]
    emit({"live": live, "versions": rows} if as_json else rows, as_json,
         lambda r: _adapters_text(r))


@click.command()
@click.argument("version", required=False)
@json_option
@pass_state
def rollback(state: AppState, version: str | None, as_json: bool) -> None:
    """Serve VERSION (default: the one before the live one) and check that the assistant answers."""
    cfg, store = _store(state)
    with RunLock.for_state_dir(cfg.source.state_path):
        target = store.get(version) if version else store.previous()
        if target is None:
            raise StoreError("there is no earlier version to roll back to (see `nightlora adapters`)")
        serving = build_target(cfg)
        info(f"rolling back to {target.name} ({serving.describe()})")
        result = deploy(store, serving, target, log=info)
        with StateDB.for_state_dir(cfg.source.state_path) as db:
            db.record_deploy(None, "rollback", result.outcome.value, requested=target.name, live=result.live,
                             detail=result.message())
    emit(result, as_json, result.message())
    result.raise_if_down()


def _config_for_schedule(state: AppState) -> Path | None:
    import os

    path = state.config_path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None and default_config_path().is_file():
        path = default_config_path()
    return path


def _backend(cfg: Any, flag: str | None) -> str | None:
    """--backend, else schedule.backend (None: detected)."""
    return flag or (None if cfg.schedule.backend == "auto" else cfg.schedule.backend)


def _schedule_text(st: ScheduleStatus) -> str:
    if st.installed:
        loaded = {True: ", loaded", False: ", not loaded", None: ""}[st.loaded]
        head = f"nightly run at {st.at} ({st.backend}{loaded})"
    else:
        head = f"no nightly run installed ({st.backend})"
    return "\n".join([head, *(f"  {f}" for f in st.files), *st.notes])


@click.group()
def schedule() -> None:
    """Run `nightlora run` every night (launchd on macOS, a systemd user timer on Linux, else cron)."""


_backend_option = click.option("--backend", type=click.Choice(["launchd", "systemd", "cron"]), default=None,
                               help="Default: launchd on macOS, systemd where it runs, else a crontab line.")


def _old_agents(labels: tuple[str, ...], runner: SubprocessRunner, disable: bool | None) -> list[str]:
    """The app's own old nightly LaunchAgents: disabled when the user says so (flag or prompt), never silently."""
    notes = []
    for agent in find_old_agents(labels, runner):
        if not agent.disabled:
            yes = disable if disable is not None else (
                sys.stdin.isatty() and click.confirm(
                    f"{agent.label} ({agent.plist}) is the app's old nightly job: it trains too and marks feedback "
                    "exported that nightlora never saw. Disable it?", default=True, err=True))
            if yes:
                agent = disable_old_agent(agent, runner)
            else:
                warn(agent.note())
        notes.append(agent.note())
    return notes


@schedule.command("install")
@click.option("--at", "at", default=None, help="HH:MM (default: schedule.at).")
@click.option("--disable-old-agent/--keep-old-agent", "disable_old", default=None,
              help="The app's own old nightly LaunchAgent (Hanni: com.hanni.nightly-train), if installed: "
                   "disable it (launchctl bootout + disable; the plist is kept) or leave it. Default: ask.")
@_backend_option
@json_option
@pass_state
def schedule_install(state: AppState, at: str | None, disable_old: bool | None, backend: str | None,
                     as_json: bool) -> None:
    """Install (or update) the nightly run."""
    cfg = state.config({"schedule.at": at})
    config_path = _config_for_schedule(state)
    runner = SubprocessRunner()
    sched = make_schedule(nightly_argv(config_path), cfg.source.state_path, runner, backend=_backend(cfg, backend))  # type: ignore[arg-type]
    notes = _old_agents(getattr(cfg.source, "old_agents", ()), runner, disable_old) if sched.backend == "launchd" else []
    st = sched.install(cfg.schedule.at)
    emit(with_notes(st, notes), as_json, _schedule_text)


@schedule.command("status")
@_backend_option
@json_option
@pass_state
def schedule_status(state: AppState, backend: str | None, as_json: bool) -> None:
    """Show whether and when the nightly run is installed."""
    cfg = state.config()
    sched = make_schedule(nightly_argv(_config_for_schedule(state)), cfg.source.state_path, SubprocessRunner(),
                          backend=_backend(cfg, backend))  # type: ignore[arg-type]
    emit(sched.status(), as_json, _schedule_text)


@schedule.command("remove")
@_backend_option
@json_option
@pass_state
def schedule_remove(state: AppState, backend: str | None, as_json: bool) -> None:
    """Remove the nightly run."""
    cfg = state.config()
    sched = make_schedule(nightly_argv(_config_for_schedule(state)), cfg.source.state_path, SubprocessRunner(),
                          backend=_backend(cfg, backend))  # type: ignore[arg-type]
    emit(sched.remove(), as_json, _schedule_text)


COMMANDS: list[click.Command] = [adapters, rollback, schedule]
