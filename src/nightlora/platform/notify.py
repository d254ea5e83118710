"""Tell the user the assistant goes away for a while, and that it is back.

macOS: ``osascript`` with the text passed as arguments to an ``on run argv``
handler, so no quote or backslash in a message can change the AppleScript.
Linux: ``notify-send`` when installed.  A notification that fails is logged and
forgotten: it must never break the run.
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol

from nightlora.platform.runner import CommandRunner, SubprocessRunner

log = logging.getLogger(__name__)
TITLE = "Hanni"

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

    def notify(self, title: str, text: str) -> bool:
        try:
            r = self.runner.run(self.build(title, text), timeout=15)
        except Exception as e:  # never let a notification end the run
            log.warning("notification failed: %s", e)
            return False
        if not r.ok:
            log.warning("notification failed: %s", r.summary())
        return r.ok


class NullNotifier:
    def notify(self, title: str, text: str) -> bool:
        return False


def make_notifier(
    runner: CommandRunner | None = None,
    *,
    platform: str = sys.platform,
    which: Callable[[str], str | None] = shutil.which,
) -> Notifier:
    runner = runner or SubprocessRunner()
    if platform == "darwin" and which("osascript"):
        return CommandNotifier(runner, osascript_argv)
    if which("notify-send"):
        return CommandNotifier(runner, notify_send_argv)
    return NullNotifier()


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M")


def announce_downtime(notifier: Notifier, expected_end: datetime | None, title: str = TITLE) -> bool:
    when = f" It should be back around {_clock(expected_end)}." if expected_end else ""
    return notifier.notify(title, f"Learning from your feedback: the assistant is offline for a while.{when}")


def announce_back(notifier: Notifier, message: str, title: str = TITLE) -> bool:
    return notifier.notify(title, f"The assistant is back. {message}".strip())
