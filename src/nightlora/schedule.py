"""Run `nightlora run` every night: a LaunchAgent (macOS), a systemd user timer (Linux), or a crontab line.

Files are written with plistlib / plain text and read back for ``status``;
launchctl and systemctl run through the runner seam.

An app may still have its own old nightly job (Hanni's ``com.hanni.nightly-train`` LaunchAgent
runs its original script at 03:00, which marks feedback exported that nightlora never saw).
``find_old_agents`` finds such LaunchAgents and ``disable_old_agent`` unloads and disables one
(``launchctl bootout`` + ``launchctl disable``), only when the user said so; its plist is
left as it is, so ``launchctl enable`` brings it back.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from nightlora.config_section import parse_hh_mm
from nightlora.errors import ScheduleError
from nightlora.paths import StatePaths
from nightlora.platform.fsutil import atomic_write_bytes, atomic_write_text, private_dir, read_regular_bytes
from nightlora.platform.runner import CommandRunner
from nightlora.targets.mlx_lm.launchd import BOOTOUT_NOT_LOADED, plist_bytes
from nightlora.targets.mlx_lm.systemd import exec_line, user_unit_dir

LABEL = "com.nightlora.nightly"
UNIT = "nightlora-nightly"
CRON_MARK = "# nightlora nightly"
Backend = Literal["launchd", "systemd", "cron"]


@dataclass(frozen=True)
class ScheduleStatus:
    backend: Backend
    installed: bool
    at: str | None = None
    loaded: bool | None = None     # None: cannot tell (cron)
    files: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_at(at: str) -> tuple[int, int]:
    try:
        return parse_hh_mm(at)
    except ValueError as e:
        raise ScheduleError(f"--at {e}, not {at!r}") from None


def nightly_argv(config_path: Path | None, python: str = sys.executable) -> list[str]:
    argv = [python, "-m", "nightlora"]
    if config_path is not None:
        argv += ["--config", str(Path(config_path).expanduser().resolve())]
    return argv + ["run"]


def detect_backend(
    platform: str = sys.platform,
    which: Callable[[str], str | None] = shutil.which,
    systemd_booted: Path = Path("/run/systemd/system"),
) -> Backend:
    if platform == "darwin":
        return "launchd"
    # The check sd_booted() makes: systemd is the running init, not just installed.
    if which("systemctl") and systemd_booted.is_dir():
        return "systemd"
    return "cron"


class Schedule(Protocol):
    backend: Backend

    def install(self, at: str) -> ScheduleStatus: ...
    def status(self) -> ScheduleStatus: ...
    def remove(self) -> ScheduleStatus: ...


class LaunchdSchedule:
    backend: Backend = "launchd"

    def __init__(self, argv: list[str], log_dir: Path, runner: CommandRunner, *,
                 agents_dir: Path | None = None, uid: int | None = None, label: str = LABEL):
        self.argv = argv
        self.log_dir = Path(log_dir)
        self.runner = runner
        self.label = label
        self.plist = (agents_dir or Path.home() / "Library" / "LaunchAgents") / f"{label}.plist"
        self.uid = os.getuid() if uid is None else uid

    @property
    def service(self) -> str:
        return f"gui/{self.uid}/{self.label}"

    def plist_dict(self, at: str) -> dict[str, Any]:
        h, m = parse_at(at)
        log = str(self.log_dir / "nightly.log")
        return {
            "Label": self.label,
            "ProgramArguments": self.argv,
            "StartCalendarInterval": {"Hour": h, "Minute": m},
            "StandardOutPath": log,
            "StandardErrorPath": log,
            "RunAtLoad": False,
            "ProcessType": "Background",
        }

    def install(self, at: str) -> ScheduleStatus:
        data = plist_bytes(self.plist_dict(at))
        private_dir(self.log_dir)
        atomic_write_bytes(self.plist, data)
        os.chmod(self.plist, 0o644)
        self.runner.run(["launchctl", "bootout", self.service], timeout=60)  # reload: unload the old one, if any
        r = self.runner.run(["launchctl", "bootstrap", f"gui/{self.uid}", str(self.plist)], timeout=60)
        if not r.ok:
            raise ScheduleError(f"cannot load {self.plist}: {r.summary()}")
        return self.status()

    def status(self) -> ScheduleStatus:
        if not self.plist.exists():
            return ScheduleStatus("launchd", False, files=[])
        try:
            with open(self.plist, "rb") as f:
                data = plistlib.load(f)
            sci = data["StartCalendarInterval"]
            at = f"{int(sci['Hour']):02d}:{int(sci['Minute']):02d}"
            argv = list(data["ProgramArguments"])
        except (OSError, plistlib.InvalidFileException, KeyError, TypeError, ValueError) as e:
            raise ScheduleError(f"cannot read {self.plist}: {e}") from None
        loaded = self.runner.run(["launchctl", "print", self.service], timeout=60).ok
        return ScheduleStatus("launchd", True, at, loaded, [str(self.plist)], argv)

    def remove(self) -> ScheduleStatus:
        r = self.runner.run(["launchctl", "bootout", self.service], timeout=60)
        if not r.ok and r.returncode not in BOOTOUT_NOT_LOADED:
            if self.runner.run(["launchctl", "print", self.service], timeout=60).ok:
                raise ScheduleError(f"cannot unload {self.label}: {r.summary()}")
        self.plist.unlink(missing_ok=True)
        return ScheduleStatus("launchd", False, files=[])


class SystemdSchedule:
    backend: Backend = "systemd"

    def __init__(self, argv: list[str], runner: CommandRunner, *, unit_dir: Path | None = None, name: str = UNIT):
        self.argv = argv
        self.runner = runner
        self.name = name
        self.unit_dir = Path(unit_dir) if unit_dir is not None else user_unit_dir()

    @property
    def service_path(self) -> Path:
        return self.unit_dir / f"{self.name}.service"

    @property
    def timer_path(self) -> Path:
        return self.unit_dir / f"{self.name}.timer"

    def service_text(self) -> str:
        return (
            "# Written by `nightlora schedule install`.\n"
            "[Unit]\n"
            "Description=nightlora: teach the local assistant from the day's feedback\n"
            "\n"
            "[Service]\n"
            "Type=oneshot\n"
            f"ExecStart={exec_line(self.argv)}\n"
        )

    def timer_text(self, at: str) -> str:
        h, m = parse_at(at)
        return (
            "# Written by `nightlora schedule install`.\n"
            "[Unit]\n"
            f"Description=Run nightlora every night at {h:02d}:{m:02d}\n"
            "\n"
            "[Timer]\n"
            f"OnCalendar=*-*-* {h:02d}:{m:02d}:00\n"
            "Persistent=true\n"
            "\n"
            "[Install]\n"
            "WantedBy=timers.target\n"
        )

    def _systemctl(self, *args: str):
        return self.runner.run(["systemctl", "--user", *args], timeout=120)

    def install(self, at: str) -> ScheduleStatus:
        timer = self.timer_text(at)
        atomic_write_text(self.service_path, self.service_text())
        atomic_write_text(self.timer_path, timer)
        for p in (self.service_path, self.timer_path):
            os.chmod(p, 0o644)
        for args in (("daemon-reload",), ("enable", "--now", f"{self.name}.timer")):
            r = self._systemctl(*args)
            if not r.ok:
                raise ScheduleError(f"cannot install the timer: {r.summary()}")
        return self.status()

    def status(self) -> ScheduleStatus:
        if not self.timer_path.exists():
            return ScheduleStatus("systemd", False)
        at = None
        try:
            text = read_regular_bytes(self.timer_path, 1 << 20).decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
            return ScheduleStatus("systemd", True, None, None, [str(self.service_path), str(self.timer_path)], self.argv,
                                  [f"cannot read {self.timer_path}: {reason}; `nightlora schedule install` rewrites it"])
        for line in text.splitlines():
            if line.startswith("OnCalendar="):
                clock = line.split()[-1]
                at = clock[:5]
        enabled = self._systemctl("is-enabled", f"{self.name}.timer").ok
        notes = ["user timers run only while you are logged in, unless `loginctl enable-linger` is on"]
        return ScheduleStatus("systemd", True, at, enabled, [str(self.service_path), str(self.timer_path)],
                              self.argv, notes)

    def remove(self) -> ScheduleStatus:
        self._systemctl("disable", "--now", f"{self.name}.timer")  # not loaded is fine: the files go anyway
        self.timer_path.unlink(missing_ok=True)
        self.service_path.unlink(missing_ok=True)
        r = self._systemctl("daemon-reload")
        if not r.ok:
            raise ScheduleError(f"cannot reload systemd's user units: {r.summary()}")
        return ScheduleStatus("systemd", False)


class CronSchedule:
    """No launchd, no systemd: we print the line for the user's crontab; we never edit it."""

    backend: Backend = "cron"

    def __init__(self, argv: list[str], log_dir: Path, runner: CommandRunner):
        self.argv = argv
        self.log_dir = Path(log_dir)
        self.runner = runner

    def line(self, at: str) -> str:
        h, m = parse_at(at)
        log = shlex.quote(str(self.log_dir / "nightly.log"))
        # cron runs the line with /bin/sh: every argument is shell-quoted, % escaped (cron's newline).
        cmd = " ".join(shlex.quote(a) for a in self.argv).replace("%", "\\%")
        return f"{m} {h} * * * {cmd} >>{log} 2>&1 {CRON_MARK}"

    def install(self, at: str) -> ScheduleStatus:
        line = self.line(at)
        private_dir(self.log_dir)
        return ScheduleStatus("cron", False, at, None, [], self.argv, ["add this line with `crontab -e`:", line])

    def status(self) -> ScheduleStatus:
        r = self.runner.run(["crontab", "-l"], timeout=30)
        for line in r.stdout.splitlines() if r.ok else []:
            if line.rstrip().endswith(CRON_MARK) and not line.lstrip().startswith("#"):  # commented out: not installed
                fields = line.split()
                if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
                    at = f"{int(fields[1]):02d}:{int(fields[0]):02d}"
                else:  # edited by hand: @daily, ranges, steps
                    at = fields[0] if fields[0].startswith("@") else " ".join(fields[:5])
                return ScheduleStatus("cron", True, at, None, [], self.argv, [line])
        return ScheduleStatus("cron", False, None, None, [], self.argv)

    def remove(self) -> ScheduleStatus:
        st = self.status()
        notes = ["remove this line with `crontab -e`:", *st.notes] if st.installed else []
        return ScheduleStatus("cron", st.installed, st.at, None, [], self.argv, notes)


@dataclass(frozen=True)
class OldAgent:
    """Another nightly job of the app's own, as a LaunchAgent."""

    label: str
    plist: Path
    loaded: bool
    disabled: bool  # launchctl disable (persists across logins)

    def note(self) -> str:
        if self.disabled:
            return (f"the app's old nightly job {self.label} is disabled ({self.plist} is kept; "
                    f"`launchctl enable gui/<uid>/{self.label}` brings it back)")
        return (f"the app's old nightly job {self.label} is still enabled ({self.plist}): it also trains at night "
                "and marks feedback exported; run `nightlora schedule install --disable-old-agent` to disable it")


def _launchd_domain(uid: int | None) -> str:
    return f"gui/{os.getuid() if uid is None else uid}"


def _disabled_labels(runner: CommandRunner, domain: str) -> set[str]:
    """Labels `launchctl print-disabled` lists as disabled ("label" => disabled, or => true before macOS 12)."""
    r = runner.run(["launchctl", "print-disabled", domain], timeout=60)
    out = set()
    for line in r.stdout.splitlines() if r.ok else ():
        name, arrow, state = line.strip().partition("=>")
        if arrow and state.strip() in ("disabled", "true"):
            out.add(name.strip().strip('"'))
    return out


def find_old_agents(labels: tuple[str, ...] | list[str], runner: CommandRunner, *,
                    agents_dir: Path | None = None, uid: int | None = None) -> list[OldAgent]:
    """The app's old LaunchAgents among ``labels`` that are installed (their plist exists)."""
    agents_dir = agents_dir or Path.home() / "Library" / "LaunchAgents"
    present = [(label, agents_dir / f"{label}.plist") for label in labels if (agents_dir / f"{label}.plist").exists()]
    if not present:
        return []
    domain = _launchd_domain(uid)
    disabled = _disabled_labels(runner, domain)
    return [
        OldAgent(label, plist, runner.run(["launchctl", "print", f"{domain}/{label}"], timeout=60).ok, label in disabled)
        for label, plist in present
    ]


def disable_old_agent(agent: OldAgent, runner: CommandRunner, *, uid: int | None = None) -> OldAgent:
    """Unload the agent now and keep launchd from loading it again; its plist stays."""
    service = f"{_launchd_domain(uid)}/{agent.label}"
    r = runner.run(["launchctl", "bootout", service], timeout=60)
    if not r.ok and r.returncode not in BOOTOUT_NOT_LOADED:
        raise ScheduleError(f"cannot unload {agent.label}: {r.summary()}")
    r = runner.run(["launchctl", "disable", service], timeout=60)
    if not r.ok:
        raise ScheduleError(f"cannot disable {agent.label}: {r.summary()}")
    return replace(agent, loaded=False, disabled=True)


def with_notes(st: ScheduleStatus, notes: list[str]) -> ScheduleStatus:
    return replace(st, notes=[*st.notes, *notes]) if notes else st


# backend -> (argv, log folder, runner) -> Schedule
SCHEDULES: dict[str, Callable[[list[str], Path, CommandRunner], Schedule]] = {
    "launchd": lambda argv, log_dir, runner: LaunchdSchedule(argv, log_dir, runner),
    "systemd": lambda argv, log_dir, runner: SystemdSchedule(argv, runner),
    "cron": lambda argv, log_dir, runner: CronSchedule(argv, log_dir, runner),
}


def make_schedule(
    argv: list[str],
    state_dir: Path,
    runner: CommandRunner,
    *,
    backend: Backend | None = None,
    platform: str = sys.platform,
    which: Callable[[str], str | None] = shutil.which,
) -> Schedule:
    kind = backend or detect_backend(platform, which)
    return SCHEDULES[kind](argv, StatePaths(Path(state_dir)).logs, runner)
