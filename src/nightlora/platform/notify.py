"""Tell the user the assistant goes away for a while, and that it is back.

macOS: ``osascript`` with the text passed as arguments to an ``on run argv``
handler, so no quote or backslash in a message can change the AppleScript.
Linux: ``notify-send`` when installed.  A notification that fails is logged (to the
run's log) and forgotten: it must never break the run.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Protocol

from nightlora.platform.runner import CommandRunner, SubprocessRunner

Log = Callable[[str], None]

_APPLESCRIPT = (
    "-e", "on run argv",
    "-e", "display notification (item 1 of argv) with title (item 2 of argv)",
    "-e", "end run",
)


class Notifier(Protocol):
    def notify(self, title: str, text: str) -> bool: ...


def osascript_argv(title: str, text: str) -> list[str]:
    return ["osascript", *_APPLESCRIPT, text, title]


def notify_send_argv(title: str, text: str) -> list[str]:
    # "--" so a message starting with "-" is not read as an option.
    return ["notify-send", "--app-name=nightlora", "--", title, text]


@dataclass
class CommandNotifier:
    runner: CommandRunner
    build: Callable[[str, str], list[str]]
    log: Log = field(default=lambda msg: None)

    def notify(self, title: str, text: str) -> bool:
        try:
            r = self.runner.run(self.build(title, text), timeout=15)
        except Exception as e:  # never let a notification end the run
            self.log(f"notification failed: {e}")
            return False
        if not r.ok:
            self.log(f"notification failed: {r.summary()}")
        return r.ok


class NullNotifier:
    def notify(self, title: str, text: str) -> bool:
        return False


# program -> (the platforms it is used on, its argv); the first one installed is used.
NOTIFIERS: dict[str, tuple[tuple[str, ...], Callable[[str, str], list[str]]]] = {
    "osascript": (("darwin",), osascript_argv),
    "notify-send": (("linux", "freebsd", "openbsd", "netbsd"), notify_send_argv),
}


def make_notifier(
    runner: CommandRunner | None = None,
    *,
    platform: str = sys.platform,
    which: Callable[[str], str | None] = shutil.which,
    log: Log = lambda msg: None,
) -> Notifier:
    runner = runner or SubprocessRunner()
    for program, (platforms, build) in NOTIFIERS.items():
        if platform.startswith(platforms) and which(program):
            return CommandNotifier(runner, build, log)
    return NullNotifier()


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M")


def announce_downtime(notifier: Notifier, expected_end: datetime | None, title: str = "nightlora") -> bool:
    when = f" It should be back around {_clock(expected_end)}." if expected_end else ""
    return notifier.notify(title, f"Learning from your feedback: the assistant is offline for a while.{when}")


def announce_back(notifier: Notifier, message: str, title: str = "nightlora") -> bool:
    return notifier.notify(title, f"The assistant is back. {message}".strip())
