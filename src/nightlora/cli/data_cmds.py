"""Commands for config and data: init, check, export, demo-db."""

from __future__ import annotations

from pathlib import Path

import click

from nightlora.cli.common import AppState, emit, json_option, pass_state, warn
from nightlora.cli.wiring import build_source
from nightlora.config import PRESETS, default_config_path, load_config, preset_toml
from nightlora.dataset.system_prompt import load_system_prompt
from nightlora.dataset.writer import ExportResult, export_dataset
from nightlora.demo.database import MIN_CONVERSATIONS, DemoResult, build_demo_db
from nightlora.demo.openwebui import OpenWebUIDemo, build_openwebui_db
from nightlora.errors import ConfigError
from nightlora.paths import StatePaths
from nightlora.platform.fsutil import atomic_write_text
from nightlora.sources.base import FeedbackCounts
from nightlora.pipeline.stages.check import marked_elsewhere_warning
from nightlora.state.cursor import consumed_in, noticed_elsewhere_in

_path = click.Path(path_type=Path)


def _abs(p: Path | None) -> str | None:
    """Flags name paths from the current directory; the config resolves relative ones in data_dir."""
    return None if p is None else str(p.expanduser().absolute())


def _find_webui_db() -> Path:
    """Where Open WebUI keeps webui.db on this machine; asks when it cannot tell."""
    import os
    import sys

    from nightlora.platform.runner import SubprocessRunner
    from nightlora.sources.openwebui.locate import current_site_packages, find_webui_db

    found, note = find_webui_db(os.environ, Path.home(), SubprocessRunner(), site_packages=current_site_packages())
    if note:
        warn(note)
    interactive = sys.stdin.isatty()
    if len(found) == 1:
        click.echo(f"found {found[0].path} ({found[0].how})", err=True)
        return found[0].path
    if found and interactive:
        for n, f in enumerate(found, 1):
            click.echo(f"  {n}. {f.path} ({f.how})", err=True)
        pick = click.prompt("Which webui.db", type=click.IntRange(1, len(found)), default=1, err=True)
        return found[pick - 1].path
    if found:
        raise ConfigError("several webui.db found (" + ", ".join(str(f.path) for f in found) + "); pass --db PATH")
    if interactive:
        return Path(click.prompt("Path to Open WebUI's webui.db", type=click.Path(dir_okay=False, path_type=Path),
                                 err=True)).expanduser().absolute()
    raise ConfigError("Open WebUI's webui.db not found ($DATA_DIR, the open_webui package's data/, "
                      "/app/backend/data, the open-webui Docker volume); pass --db PATH")


@click.command()
@click.option("--preset", type=click.Choice(PRESETS), default="hanni", show_default=True, help="Which app's defaults to write.")
@click.option("--path", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write (default: --config, or the user config file).")
@click.option("--db", type=_path, default=None,
              help="The app's database (openwebui: webui.db; default: found where Open WebUI keeps it, or asked).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@pass_state
def init(state: AppState, preset: str, path: Path | None, db: Path | None, force: bool) -> None:
    """Write a config file with the preset's defaults."""
    target = path or state.config_path or default_config_path()
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; pass --force to overwrite it")
    if preset == "openwebui" and db is None:
        db = _find_webui_db()
    text = preset_toml(preset, db=db.expanduser().absolute() if db is not None else None)
    try:
        atomic_write_text(target, text)
    except OSError as e:  # a path under a file, a folder we may not write, a full disk
        raise ConfigError(f"cannot write the config file {target}: {e.strerror or e}") from None
    load_config(target, environ={})  # what we write must load
    click.echo(f"wrote {target}")


def _check_text(c: FeedbackCounts) -> str:
    new = f"{c.total} new ratings ({c.positive} up, {c.negative} down)"
    if c.due:
        return f"{new}, minimum {c.min_feedback}: training is due"
    return f"{new}, minimum {c.min_feedback}: nothing to do"


@click.command()
@click.option("--db", type=_path, default=None, help="The app's database (default: source.db in the config).")
@click.option("--min-feedback", type=click.IntRange(min=0), default=None,
              help="New ratings needed before a night trains (default: data.min_feedback).")
@json_option
@pass_state
def check(state: AppState, db: Path | None, min_feedback: int | None, as_json: bool) -> None:
    """Count new feedback and say whether training is due (exit 0 either way)."""
    cfg = state.config({"source.db": _abs(db), "data.min_feedback": min_feedback})
    source = build_source(cfg)
    state_db = StatePaths(cfg.source.state_path).state_db
    with source.snapshot(consumed_in(state_db, source.key)) as snap:
        counts = snap.counts(cfg.data.min_feedback)
        elsewhere = set(snap.marked_elsewhere())
    # Only what no night has warned about yet (the nightly check records what it noticed).
    if new := elsewhere - noticed_elsewhere_in(state_db, source.key):
        warn(marked_elsewhere_warning(len(new), source.location))
    emit(counts, as_json, _check_text)


def _export_text(r: ExportResult) -> str:
    c = r.counts
    lines = [
        f"exported {c['train'] + c['valid'] + c['test']} examples "
        f"(train {c['train']}, valid {c['valid']}, test {c['test']}) and {c['preferences']} preferences to {r.out_dir}"
    ]
    if r.skipped:
        lines.append("skipped: " + ", ".join(f"{reason} {len(ids)}" for reason, ids in r.skipped.items()))
    return "\n".join(lines)


@click.command()
@click.option("--db", type=_path, default=None, help="The app's database (default: source.db in the config).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: data.training_dir in the config).")
@click.option("--system-prompt", type=_path, default=None,
              help="System prompt file (default: source.system_prompt in the config; beside --db when given).")
@click.option("--min-messages", type=click.IntRange(min=0), default=None,
              help="Shorter conversations are left out (default: data.min_messages).")
@json_option
@pass_state
def export(state: AppState, db: Path | None, out: Path | None, system_prompt: Path | None,
           min_messages: int | None, as_json: bool) -> None:
    """Export conversations and their ratings to train/valid/test.jsonl, preferences.jsonl, manifest.json."""
    cfg = state.config({
        "source.db": _abs(db),
        "data.training_dir": _abs(out),
        "source.system_prompt": _abs(system_prompt),
        "data.min_messages": min_messages,
    })
    source = build_source(cfg)
    prompt, warnings = source.system_prompt()
    own = cfg.source.system_prompt if cfg.source.kind == "hanni" else None
    if db is not None and system_prompt is None and own is not None and not own.is_absolute():
        # Hanni keeps system_prompt.txt beside hanni.db: another database brings its own prompt.
        prompt, warnings = load_system_prompt(cfg.source.db_path.parent / own)
    result = export_dataset(
        source, cfg.training_path, prompt, consumed=consumed_in(StatePaths(cfg.source.state_path).state_db, source.key),
        min_messages=cfg.data.min_messages, split=cfg.data.split, warnings=warnings,
    )
    for w in result.warnings:
        warn(w)
    emit(result, as_json, _export_text)


def _demo_text(r: DemoResult | OpenWebUIDemo) -> str:
    if isinstance(r, OpenWebUIDemo):
        return (f"wrote {r.path} ({r.chats} chats of {len(r.users)} users, {r.feedback} feedback rows), "
                f"{r.probe_path.name} beside it")
    return (
        f"wrote {r.path} ({r.conversations} conversations, {r.feedback} ratings), "
        f"{r.system_prompt_path.name} and {r.probe_path.name} beside it"
    )


@click.command("demo-db")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["hanni", "openwebui"]), default="hanni", show_default=True,
              help="Which app's database.")
@click.option("--force", is_flag=True, help="Overwrite the database and the files beside it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same database.")
@click.option("--conversations", type=click.IntRange(min=MIN_CONVERSATIONS), default=None,
              help="How many conversations (Open WebUI: chats) to write [default: 90; openwebui 40].")
@json_option
def demo_db(path: Path, kind: str, force: bool, seed: int, conversations: int | None, as_json: bool) -> None:
    """Build a realistic Hanni database (or Open WebUI's webui.db) at PATH, with probe.jsonl beside it."""
    if kind == "openwebui":
        result: DemoResult | OpenWebUIDemo = build_openwebui_db(path, chats=conversations or 40, seed=seed, force=force)
    else:
        result = build_demo_db(path, conversations=conversations or 90, seed=seed, force=force)
    emit(result, as_json, _demo_text)


COMMANDS: list[click.Command] = [init, check, export, demo_db]
