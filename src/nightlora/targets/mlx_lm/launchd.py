"""Manager "launchd" (macOS): the server is the LaunchAgent the app installed.

We change one thing in its plist, the ``--adapter-path`` argument, read and
written with plistlib (never PlistBuddy, never sed) and replaced atomically;
writing the same configuration twice gives the same bytes.  Start and stop go
through ``launchctl bootstrap`` / ``bootout`` in the user's GUI domain.
"""

from __future__ import annotations

import os
import plistlib
import time
from pathlib import Path
from typing import Any, Callable

from nightlora.errors import ServerError
from nightlora.platform.fsutil import atomic_write_bytes
from nightlora.platform.runner import CommandResult, CommandRunner
from nightlora.targets.mlx_lm.command import ServerCommand

ADAPTER_FLAG = "--adapter-path"

# `launchctl bootout` of a service that is not loaded: 3 "No such process" (older macOS),
# 113 "Could not find specified service" (newer).  Neither is an error for "stop".
BOOTOUT_NOT_LOADED = frozenset({3, 113})
# `launchctl bootstrap` of a label that is still loaded: 5 "Input/output error", 37 "Operation already in progress".
BOOTSTRAP_ALREADY_LOADED = frozenset({5, 37})


def with_adapter(argv: list[str], adapter: Path | None) -> list[str]:
    """``argv`` with ``--adapter-path`` set to ``adapter``: replaced, added, or removed (None)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == ADAPTER_FLAG:
            i += 2  # the flag and its value
            continue
        if arg.startswith(ADAPTER_FLAG + "="):
            i += 1
            continue
        out.append(arg)
        i += 1
    if adapter is not None:
        out += [ADAPTER_FLAG, str(adapter)]
    return out


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def adapter_of(argv: list[str]) -> str | None:
    return flag_value(argv, ADAPTER_FLAG)


def read_plist(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = plistlib.load(f)
    except FileNotFoundError:
        raise ServerError(f"LaunchAgent plist not found: {path}") from None
    except (plistlib.InvalidFileException, ValueError, OSError) as e:
        raise ServerError(f"cannot read LaunchAgent plist {path}: {e}") from None
    if not isinstance(data, dict):
        raise ServerError(f"{path} is not a LaunchAgent plist (top level is not a dictionary)")
    args = data.get("ProgramArguments")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise ServerError(f"{path}: ProgramArguments must be a non-empty list of strings")
    if not isinstance(data.get("Label"), str):
        raise ServerError(f"{path}: Label is missing")
    return data


def plist_bytes(data: dict[str, Any]) -> bytes:
    # Sorted keys, XML: the same dictionary always gives the same bytes.
    return plistlib.dumps(data, fmt=plistlib.FMT_XML, sort_keys=True)


class LaunchdManager:
    name = "launchd"

    def __init__(
        self,
        plist: Path,
        label: str,
        runner: CommandRunner,
        *,
        command: ServerCommand | None = None,
        log_dir: Path | None = None,
        uid: int | None = None,
        stop_timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.plist = Path(os.path.expanduser(str(plist)))
        self.label = label
        self.runner = runner
        self.command = command
        self.log_dir = log_dir
        self.uid = os.getuid() if uid is None else uid
        self.stop_timeout = stop_timeout
        self.sleep = sleep

    @property
    def domain(self) -> str:
        return f"gui/{self.uid}"

    @property
    def service(self) -> str:
        return f"{self.domain}/{self.label}"

    def describe(self) -> str:
        return f"launchd manager: {self.service} ({self.plist})"

    def _new_plist(self, adapter: Path | None) -> dict[str, Any]:
        """A LaunchAgent for the server when the app has not installed one."""
        if self.command is None:
            raise ServerError(f"LaunchAgent plist not found: {self.plist}")
        data: dict[str, Any] = {
            "Label": self.label,
            "ProgramArguments": self.command.argv(adapter),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
        }
        if self.log_dir is not None:
            data["StandardOutPath"] = str(self.log_dir / "server.log")
            data["StandardErrorPath"] = str(self.log_dir / "server.log")
        return data

    def configure(self, adapter: Path | None) -> None:
        if self.plist.exists():
            data = read_plist(self.plist)
            if data["Label"] != self.label:
                raise ServerError(
                    f"{self.plist} has Label {data['Label']!r}, not server.label {self.label!r}; fix one of them"
                )
            data["ProgramArguments"] = with_adapter(list(data["ProgramArguments"]), adapter)
        else:
            data = self._new_plist(adapter)
        new = plist_bytes(data)
        try:
            if self.plist.read_bytes() == new:
                return
        except FileNotFoundError:
            pass
        atomic_write_bytes(self.plist, new)
        # launchd reads the plist as the owner's file; keep the usual LaunchAgent mode.
        os.chmod(self.plist, 0o644)

    def served_adapter(self) -> str | None:
        return adapter_of(read_plist(self.plist)["ProgramArguments"])

    def served_model(self) -> str | None:
        """The app's LaunchAgent names its own ``--model``: that is the model the assistant runs."""
        if not self.plist.exists():
            return None
        return flag_value(read_plist(self.plist)["ProgramArguments"], "--model")

    def last_error(self) -> str:
        return ""

    def _launchctl(self, *args: str) -> CommandResult:
        return self.runner.run(["launchctl", *args], timeout=60)

    def is_running(self) -> bool:
        r = self._launchctl("print", self.service)
        if not r.ok:
            return False
        # A loaded service whose program has exited shows "state = not running"; other states
        # ("running", "spawn scheduled" right after bootstrap) mean it is up or coming up.
        for line in r.stdout.splitlines():
            key, _, value = line.strip().partition(" = ")
            if key == "state":
                return value.strip() != "not running"
        return True

    def _loaded(self) -> bool:
        return self._launchctl("print", self.service).ok

    def stop(self) -> None:
        r = self._launchctl("bootout", self.service)
        if r.returncode in BOOTOUT_NOT_LOADED:
            return
        # bootout can return before the job is gone (or fail with 36 "Operation now in
        # progress" while it goes): what counts is that launchd no longer knows the label.
        deadline = time.monotonic() + self.stop_timeout
        while self._loaded():
            if time.monotonic() >= deadline:
                raise ServerError(f"cannot stop {self.label}: {r.summary()}")
            self.sleep(0.2)

    def start(self) -> None:
        if not self.plist.exists():
            raise ServerError(f"LaunchAgent plist not found: {self.plist} (run configure first)")
        r = self._launchctl("bootstrap", self.domain, str(self.plist))
        if r.ok:
            return
        if r.returncode in BOOTSTRAP_ALREADY_LOADED and self._loaded():
            # Still loaded with the old arguments: unload, then load the new plist once more.
            self.stop()
            r = self._launchctl("bootstrap", self.domain, str(self.plist))
            if r.ok:
                return
        raise ServerError(f"cannot start {self.label}: {r.summary()}")
