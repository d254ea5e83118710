"""`nightlora doctor`: is everything a night needs in place? A table with a fix for each problem."""

from __future__ import annotations

import click

from nightlora.cli.common import AppState, emit, json_option, pass_state
from nightlora.errors import ConfigError, SetupError


@click.command()
@json_option
@pass_state
def doctor(state: AppState, as_json: bool) -> None:
    """Check the database, system prompt, model, backend, server, schedule, disk, memory and power.

    Exit 0 when nothing fails (warnings allowed), 16 when a check fails, 3 when the config itself is invalid.
    """
    from nightlora.cli.wiring import build_doctor_deps
    from nightlora.doctor.checks import Finding, run_checks, table

    try:
        cfg = state.config()
    except ConfigError as e:
        findings = [Finding("config", "fail", str(e), "fix the file (`nightlora init --force` writes a fresh one)")]
        emit({"ok": False, "checks": findings}, as_json, lambda o: table(o["checks"]))
        raise
    findings = [Finding("config", "ok", str(state.config_path or "defaults (no config file)"))]
    findings += run_checks(cfg, build_doctor_deps(cfg, state.config_path, debug=state.debug))
    failed = [f.check for f in findings if f.level == "fail"]
    emit({"ok": not failed, "checks": findings}, as_json, lambda o: table(o["checks"]))
    if failed:
        raise SetupError(f"{len(failed)} of {len(findings)} checks fail: {', '.join(failed)} (each fix is in the table)")


COMMANDS: list[click.Command] = [doctor]
