"""Manager "systemd" (Linux): the server is a systemd user service whose unit file we write."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nightlora.errors import ServerError
from nightlora.platform.fsutil import atomic_write_text
from nightlora.platform.runner import CommandResult, CommandRunner
from nightlora.targets.mlx_lm.command import ServerCommand

# `systemctl stop` of a unit systemd has never loaded: 5 "Unit ... not loaded".
STOP_NOT_LOADED = frozenset({5})
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_PREFIX_CHARS = "@-:+!|"


def user_unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "systemd" / "user"


def quote_word(arg: str) -> str:
    """One argv element as a word of a systemd command line (ExecStart=).

    systemd expands %-specifiers on the whole line, then splits words with
    C-style unescaping inside double quotes, then substitutes $VARIABLES: so %
    becomes %%, $ becomes $$, and anything but plain characters goes in double
    quotes with \\ and " and control characters escaped.
    """
    if "\x00" in arg:
        raise ServerError(f"an argument with a NUL byte cannot go in a unit file: {arg!r}")
    if arg == ";":
        return "\\;"  # a lone ; would separate two commands
    text = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN_WORD.fullmatch(arg):
        return text
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def exec_line(argv: list[str]) -> str:
    if not argv:
        raise ServerError("cannot write a unit for an empty command")
    if not argv[0] or argv[0][0] in _PREFIX_CHARS:
        raise ServerError(f"the server program {argv[0]!r} must be a path or a command name")
    return " ".join(quote_word(a) for a in argv)


def service_unit(argv: list[str], description: str) -> str:
    return (
        "# Written by nightlora; `nightlora` rewrites this file when it switches adapters.\n"
        "[Unit]\n"
        f"Description={description}\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_line(argv)}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


class SystemdManager:
    name = "systemd"

    def __init__(
        self,
        unit: str,
        command: ServerCommand,
        runner: CommandRunner,
        *,
        adapter: Path | None = None,
        unit_dir: Path | None = None,
    ):
        if not unit.endswith(".service") or "/" in unit:
            raise ServerError(f"server.unit must be a unit name ending in .service, not {unit!r}")
        self.unit = unit
        self.command = command
        self.runner = runner
        self.adapter = adapter
        self.unit_dir = Path(unit_dir) if unit_dir is not None else user_unit_dir()

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / self.unit

    def describe(self) -> str:
        return f"systemd manager: user unit {self.unit} ({self.unit_path})"

    def served_model(self) -> str | None:
        return None  # we write the unit from the config

    def last_error(self) -> str:
        return ""  # the journal is systemd's; `journalctl --user -u UNIT` shows it

    def _systemctl(self, *args: str) -> CommandResult:
        return self.runner.run(["systemctl", "--user", *args], timeout=120)

    def configure(self, adapter: Path | None) -> None:
        self.adapter = adapter
        text = service_unit(self.command.argv(adapter), "Local inference server (managed by nightlora)")
        try:
            if self.unit_path.read_text(encoding="utf-8") == text:
                return
        except FileNotFoundError:
            pass
        atomic_write_text(self.unit_path, text)
        os.chmod(self.unit_path, 0o644)
        r = self._systemctl("daemon-reload")
        if not r.ok:
            raise ServerError(f"cannot reload systemd's user units: {r.summary()}")

    def start(self) -> None:
        if not self.unit_path.exists():
            self.configure(self.adapter)
        r = self._systemctl("start", self.unit)
        if not r.ok:
            raise ServerError(f"cannot start {self.unit}: {r.summary()}")

    def stop(self) -> None:
        r = self._systemctl("stop", self.unit)
        if not r.ok and r.returncode not in STOP_NOT_LOADED:
            raise ServerError(f"cannot stop {self.unit}: {r.summary()}")

    def is_running(self) -> bool:
        return self._systemctl("is-active", self.unit).stdout.strip() in ("active", "activating", "reloading")
