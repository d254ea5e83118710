"""Pieces every command shares: the config loader, --json output, one-line errors."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from nightlora.config import Config, load_config


@dataclass
class AppState:
    config_path: Path | None = None
    debug: bool = False
    _cache: dict[Any, Config] = field(default_factory=dict)

    def config(self, overrides: Mapping[str, Any] | None = None) -> Config:
        """Defaults < TOML file < environment < ``overrides`` (flags; None = not given)."""
        return load_config(self.config_path, overrides=overrides)


pass_state = click.make_pass_decorator(AppState, ensure=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def emit(result: Any, as_json: bool, human: Callable[[Any], str] | str | None = None) -> None:
    """Print ``result`` as JSON (stdout, one document) or as the human text."""
    if as_json:
        click.echo(json.dumps(result, default=_default, ensure_ascii=False, indent=2))
    elif human is not None:
        click.echo(human(result) if callable(human) else human)


def info(msg: str) -> None:
    """Progress for people: stderr, so --json stdout stays machine-readable."""
    click.echo(msg, err=True)


def warn(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
