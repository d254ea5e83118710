"""The nightly schedule: the files written (read back) and launchctl/systemctl's exact argv."""

from __future__ import annotations

import configparser
import json
import plistlib
import shlex
import sys
from pathlib import Path

import pytest

from nightlora.errors import ScheduleError
from nightlora.schedule import (
    CronSchedule, LaunchdSchedule, SystemdSchedule, detect_backend, make_schedule, nightly_argv, parse_at,
)
from server_fixtures import RecordingRunner, parse_exec_line

CONFIG = Path("/Users/me/Library/Application Support/nightlora/config.toml")
ARGV = ["/opt/py/bin/python3", "-m", "nightlora", "--config", str(CONFIG), "run"]


def test_nightly_argv(tmp_path):
    assert nightly_argv(None, python="/py") == ["/py", "-m", "nightlora", "run"]
    cfg = tmp_path / "c.toml"
    assert nightly_argv(cfg)[:-1] == [sys.executable, "-m", "nightlora", "--config", str(cfg.resolve())]


@pytest.mark.parametrize("at", ["3:00", "24:00", "12:60", "noon", "03-00"])
def test_bad_times(at):
    if at == "3:00":
        assert parse_at(at) == (3, 0)
    else:
        with pytest.raises(ScheduleError, match="HH:MM"):
            parse_at(at)


def test_launchd_install_status_remove(tmp_path):
    runner = RecordingRunner().on(["launchctl", "bootout"], 113).on(["launchctl", "print"], 0)
    s = LaunchdSchedule(ARGV, tmp_path / "state" / "logs", runner, agents_dir=tmp_path / "LaunchAgents", uid=501)
    st = s.install("03:15")
    with open(s.plist, "rb") as f:
        data = plistlib.load(f)
    assert s.plist == tmp_path / "LaunchAgents" / "com.nightlora.nightly.plist"
    assert data == {
        "Label": "com.nightlora.nightly",
        "ProgramArguments": ARGV,
        "StartCalendarInterval": {"Hour": 3, "Minute": 15},
        "StandardOutPath": str(tmp_path / "state" / "logs" / "nightly.log"),
        "StandardErrorPath": str(tmp_path / "state" / "logs" / "nightly.log"),
        "RunAtLoad": False,
        "ProcessType": "Background",
    }
    assert runner.calls == [
        ["launchctl", "bootout", "gui/501/com.nightlora.nightly"],
        ["launchctl", "bootstrap", "gui/501", str(s.plist)],
        ["launchctl", "print", "gui/501/com.nightlora.nightly"],
    ]
    assert (st.installed, st.at, st.loaded, st.command) == (True, "03:15", True, ARGV)
    first = s.plist.read_bytes()
    s.install("03:15")
    assert s.plist.read_bytes() == first  # idempotent
    runner.calls.clear()
    assert not s.remove().installed and not s.plist.exists()
    assert runner.calls == [["launchctl", "bootout", "gui/501/com.nightlora.nightly"]]
    assert not s.status().installed


def test_launchd_install_failure_is_a_schedule_error(tmp_path):
    runner = RecordingRunner().on(["launchctl", "bootstrap"], 5, stderr="Bootstrap failed: 5: Input/output error")
    s = LaunchdSchedule(ARGV, tmp_path / "logs", runner, agents_dir=tmp_path, uid=501)
    with pytest.raises(ScheduleError, match="cannot load .*exited 5: Bootstrap failed"):
        s.install("03:00")


def test_systemd_install_status_remove(tmp_path):
    runner = RecordingRunner().on(["systemctl", "--user", "is-enabled"], 0, "enabled\n")
    s = SystemdSchedule(ARGV, runner, unit_dir=tmp_path / "user")
    st = s.install("03:00")
    service, timer = configparser.ConfigParser(interpolation=None), configparser.ConfigParser(interpolation=None)
    service.optionxform = timer.optionxform = str
    service.read_string(s.service_path.read_text())
    timer.read_string(s.timer_path.read_text())
    assert service["Service"]["Type"] == "oneshot"
    assert parse_exec_line(service["Service"]["ExecStart"]) == ARGV
    assert dict(timer["Timer"]) == {"OnCalendar": "*-*-* 03:00:00", "Persistent": "true"}
    assert timer["Install"]["WantedBy"] == "timers.target"
    assert runner.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "nightlora-nightly.timer"],
        ["systemctl", "--user", "is-enabled", "nightlora-nightly.timer"],
    ]
    assert (st.installed, st.at, st.loaded) == (True, "03:00", True)
    assert any("enable-linger" in n for n in st.notes)
    runner.calls.clear()
    assert not s.remove().installed
    assert not s.timer_path.exists() and not s.service_path.exists()
    assert runner.calls == [
        ["systemctl", "--user", "disable", "--now", "nightlora-nightly.timer"],
        ["systemctl", "--user", "daemon-reload"],
    ]


def test_cron_prints_a_line_that_sh_reads_back_as_the_argv(tmp_path):
    argv = ["/py", "-m", "nightlora", "--config", "/a b/100%/c.toml", "run"]
    s = CronSchedule(argv, tmp_path / "logs", RecordingRunner().on(["crontab"], 1, stderr="no crontab for root"))
    st = s.install("03:05")
    line = st.notes[1]
    assert line.startswith("5 3 * * * ") and line.endswith("# nightlora nightly")
    command = line[len("5 3 * * * "):line.index(" >>")]
    assert shlex.split(command.replace("\\%", "%")) == argv  # cron turns \% back into %
    assert not s.status().installed
    listed = CronSchedule(argv, tmp_path, RecordingRunner().on(["crontab", "-l"], 0, "MAILTO=x\n" + line + "\n"))
    st2 = listed.status()
    assert st2.installed and st2.at == "03:05"
    assert listed.remove().notes == ["remove this line with `crontab -e`:", line]


def test_backend_detection():
    assert detect_backend("darwin", lambda n: None) == "launchd"
    assert detect_backend("linux", lambda n: "/bin/systemctl", Path("/")) == "systemd"
    assert detect_backend("linux", lambda n: "/bin/systemctl", Path("/nonexistent")) == "cron"
    assert detect_backend("linux", lambda n: None, Path("/")) == "cron"
    assert make_schedule(ARGV, Path("/s"), RecordingRunner(), backend="systemd").backend == "systemd"


def test_cli_schedule_with_cron(tmp_path, capsys):
    from nightlora.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[source]\ndata_dir = "{tmp_path}"\n[schedule]\nat = "04:30"\n')
    assert main(["--config", str(cfg), "schedule", "install", "--backend", "cron", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "cron" and out["at"] == "04:30"
    assert out["command"] == [sys.executable, "-m", "nightlora", "--config", str(cfg.resolve()), "run"]
    assert out["notes"][1].startswith("30 4 * * * ")
    assert main(["--config", str(cfg), "schedule", "install", "--backend", "cron", "--at", "25:00"]) == 3
    assert "schedule.at" in capsys.readouterr().err
