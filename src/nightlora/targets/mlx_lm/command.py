"""The server's command line, built from the configured argv template.

The template is a list of arguments (config ``server.command``) with the
placeholders {python} {model} {adapter} {host} {port}.  Values are substituted
inside single arguments, so a path with spaces stays one argument.  Without an
adapter the arguments that mention {adapter} are dropped, together with the
flag right before a standalone one (``--adapter-path {adapter}``).
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nightlora.errors import ServerError
from nightlora.platform.net import base_url

PLACEHOLDERS = frozenset({"python", "model", "adapter", "host", "port"})


@dataclass(frozen=True)
class ServerCommand:
    """Everything the server's argv is made of, except which adapter it serves."""

    template: tuple[str, ...]
    model: str | None  # None: no base model configured (train.model unset); argv() refuses
    host: str = "127.0.0.1"
    port: int = 8234
    python: str = sys.executable

    def __post_init__(self) -> None:
        check_template(self.template)

    def argv(self, adapter: Path | None) -> list[str]:
        if not self.model:
            raise ServerError("no base model to serve: set train.model to a model folder or a prepared name")
        return build_argv(
            self.template, python=self.python, model=self.model,
            adapter=adapter, host=self.host, port=self.port,
        )

    @property
    def base_url(self) -> str:
        return base_url(self.host, self.port)


def _fields(arg: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
    except ValueError as e:
        raise ServerError(f"server.command: bad argument {arg!r}: {e}") from None


def check_template(template: Sequence[str]) -> None:
    if not template:
        raise ServerError("server.command is empty")
    for arg in template:
        unknown = _fields(arg) - PLACEHOLDERS
        if unknown:
            names = ", ".join("{" + u + "}" for u in sorted(unknown))
            raise ServerError(
                f"server.command: unknown placeholder {names} in {arg!r} "
                f"(known: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))})"
            )


def build_argv(
    template: Sequence[str], *, python: str, model: str, adapter: Path | None, host: str, port: int
) -> list[str]:
    check_template(template)
    values = {"python": python, "model": model, "host": host, "port": str(port),
              "adapter": "" if adapter is None else str(adapter)}
    out: list[str] = []
    prev: str | None = None
    for arg in template:
        if adapter is None and "adapter" in _fields(arg):
            # `--adapter-path {adapter}`: drop the flag that would now have no value.
            if arg.startswith("{") and prev is not None and prev.startswith("-") and not _fields(prev):
                out.pop()
            prev = None
            continue
        out.append(arg.format_map(values))
        prev = arg
    return out
