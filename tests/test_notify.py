"""Notifications: the exact argv, text that cannot become code, failures that never break a run."""

from __future__ import annotations

from datetime import datetime

from nightlora.platform.notify import (
    CommandNotifier, NullNotifier, announce_back, announce_downtime, make_notifier, notify_send_argv, osascript_argv,
)
from nightlora.platform.runner import CommandResult
from server_fixtures import RecordingRunner

NASTY = 'Back at 03:40 "quoted" \\ end tell; do shell script "rm -rf ~"'


def test_macos_passes_the_text_as_arguments_to_applescript():
    runner = RecordingRunner()
    n = make_notifier(runner, platform="darwin", which=lambda name: f"/usr/bin/{name}")
    assert n.notify("Hanni", NASTY)
    assert runner.calls == [[
        "osascript",
        "-e", "on run argv",
        "-e", "display notification (item 1 of argv) with title (item 2 of argv)",
        "-e", "end run",
        NASTY, "Hanni",
    ]]
    assert osascript_argv("T", "x")[-2:] == ["x", "T"]


def test_linux_uses_notify_send_when_installed():
    runner = RecordingRunner()
    n = make_notifier(runner, platform="linux", which=lambda name: "/usr/bin/notify-send" if name == "notify-send" else None)
    assert n.notify("Hanni", "-starts with a dash")
    assert runner.calls == [["notify-send", "--app-name=nightlora", "--", "Hanni", "-starts with a dash"]]
    assert notify_send_argv("a", "b") == runner.calls[0][:3] + ["a", "b"]


def test_nothing_to_notify_with():
    n = make_notifier(RecordingRunner(), platform="linux", which=lambda name: None)
    assert isinstance(n, NullNotifier) and n.notify("t", "x") is False


def test_failures_are_swallowed():
    failing = RecordingRunner().on(["notify-send"], 1, stderr="cannot open display")
    logged: list[str] = []
    n = CommandNotifier(failing, notify_send_argv, logged.append)
    assert n.notify("t", "x") is False
    assert "cannot open display" in "\n".join(logged)

    class Exploding:
        def run(self, argv, **kw) -> CommandResult:
            raise OSError("boom")

    assert CommandNotifier(Exploding(), notify_send_argv).notify("t", "x") is False


def test_downtime_messages():
    runner = RecordingRunner()
    n = CommandNotifier(runner, notify_send_argv)
    assert announce_downtime(n, datetime(2026, 1, 2, 3, 40))
    assert announce_downtime(n, None)
    assert announce_back(n, "v0004 is live")
    texts = [c[-1] for c in runner.calls]
    assert texts[0].endswith("It should be back around 03:40.")
    assert "back around" not in texts[1]
    assert texts[2] == "The assistant is back. v0004 is live"
