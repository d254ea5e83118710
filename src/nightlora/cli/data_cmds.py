"""Commands for config and data: init, check, export, demo-db."""

from __future__ import annotations

from pathlib import Path

import click

from nightlora.cli.common import AppState, emit, pass_state
from nightlora.config import default_config_path, load_config, preset_toml
from nightlora.errors import ConfigError
from nightlora.fsutil import atomic_write_text


@click.command()
@click.option("--preset", default="hanni", show_default=True, help="Which app's defaults to write.")
@click.option("--path", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write (default: --config, or the user config file).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@pass_state
def init(state: AppState, preset: str, path: Path | None, force: bool) -> None:
    """Write a config file with the preset's defaults."""
    target = path or state.config_path or default_config_path()
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; pass --force to overwrite it")
    text = preset_toml(preset)
    atomic_write_text(target, text)
    load_config(target, environ={})  # what we write must load
    click.echo(f"wrote {target}")


COMMANDS: list[click.Command] = [init]
