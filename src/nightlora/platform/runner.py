"""The seam through which every external command runs (launchctl, systemctl, osascript, ps...).

Commands are argv lists, never shell strings: paths and user data are single
arguments and cannot be read as shell syntax.  Tests pass a recording runner
and check the exact argv of each call.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        """One line for error messages: the command, its code, its last words."""
        words = (self.stderr.strip() or self.stdout.strip()).splitlines()
        tail = words[-1] if words else ""
        return f"`{' '.join(self.argv)}` exited {self.returncode}" + (f": {tail}" if tail else "")


class CommandRunner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult: ...


@dataclass
class SubprocessRunner:
    """Runs commands for real. A missing program or a timeout is a result, not an exception."""

    default_env: Mapping[str, str] = field(default_factory=dict)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        argv = tuple(str(a) for a in argv)
        full_env = {**os.environ, **self.default_env, **(env or {})}
        try:
            p = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=timeout,
                env=full_env, stdin=subprocess.DEVNULL, shell=False, check=False,
            )
        except FileNotFoundError:
            return CommandResult(argv, 127, "", f"{argv[0]}: command not found")
        except PermissionError as e:
            return CommandResult(argv, 126, "", f"{argv[0]}: {e.strerror}")
        except subprocess.TimeoutExpired:
            return CommandResult(argv, 124, "", f"timed out after {timeout:g} s")
        return CommandResult(argv, p.returncode, p.stdout, p.stderr)
