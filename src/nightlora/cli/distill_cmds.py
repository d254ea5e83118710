"""`nightlora distill`: the distillation stage alone, on an export folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from nightlora.cli.common import AppState, emit, info, json_option, pass_state
from nightlora.cli.wiring import build_teacher
from nightlora.errors import ConfigError
from nightlora.paths import StatePaths
from nightlora.teachers.cache import ReplyCache


def _dry_run_text(r: Any) -> str:
    blocks = [json.dumps(p, ensure_ascii=False, indent=2) for p in r.payloads or ()]
    return "\n\n".join([*blocks, f"{r.message} ({r.summary()})"])


@click.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Export folder (default: data.training_dir in the config).")
@click.option("--dry-run", is_flag=True, help="Print exactly what would be sent to the teacher; send and change nothing.")
@click.option("--clear-cache", is_flag=True, help="Forget every cached teacher reply (they are asked again), then stop.")
@json_option
@pass_state
def distill(state: AppState, data: Path | None, dry_run: bool, clear_cache: bool, as_json: bool) -> None:
    """Ask the configured teacher ([teacher]) for better replies and add them to an export's train split."""
    cfg = state.config({"data.training_dir": None if data is None else str(data.expanduser().absolute())})
    paths = StatePaths(cfg.source.state_path)
    if clear_cache:
        n = ReplyCache(paths.teacher_cache).clear()
        emit({"cleared": n, "cache": str(paths.teacher_cache)}, as_json, f"forgot {n} cached teacher replies")
        return
    if not cfg.teacher.enabled and not dry_run:
        raise ConfigError("teacher.enabled is false: set it in [teacher] (or NIGHTLORA_TEACHER__ENABLED=true) "
                          "to send prompts to a teacher; --dry-run shows what would be sent")
    from nightlora.teachers.distill import distill_dataset

    teacher = build_teacher(cfg, even_if_disabled=True)
    assert teacher is not None
    result = distill_dataset(cfg.training_path, teacher, cfg.teacher, cache=ReplyCache(paths.teacher_cache),
                             requests_log=paths.teacher_log, log=info, dry_run=dry_run)
    emit(result, as_json, _dry_run_text if dry_run else (lambda r: r.message))


COMMANDS: list[click.Command] = [distill]
