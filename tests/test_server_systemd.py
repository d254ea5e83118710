"""The systemd manager: the unit file it writes (parsed back as systemd would) and systemctl's argv."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nightlora.errors import ServerError
from nightlora.targets.mlx_lm.command import ServerCommand
from nightlora.targets.mlx_lm.systemd import SystemdManager, exec_line, quote_word
from server_fixtures import RecordingRunner, parse_exec_line

def read_unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str  # keys are case-sensitive in units
    cp.read_string(path.read_text())
    return cp


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=20), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_every_argv_survives_systemd_quoting(argv):
    argv = ["/usr/bin/python3", *argv]
    assert parse_exec_line(exec_line(argv)) == argv


@pytest.mark.parametrize("arg, quoted", [
    ("/plain/path-1.2_x", "/plain/path-1.2_x"),
    ("/Users/me/Application Support/x", '"/Users/me/Application Support/x"'),
    ("100%", '"100%%"'),
    ("$HOME", '"$$HOME"'),
    ('say "hi"\\', '"say \\"hi\\"\\\\"'),
    ("a\nb", '"a\\nb"'),
    (";", "\\;"),
    ("", '""'),
])
def test_quoting_examples(arg, quoted):
    assert quote_word(arg) == quoted


def test_programs_that_look_like_prefixes_or_contain_nul_are_refused():
    with pytest.raises(ServerError, match="must be a path"):
        exec_line(["-python"])
    with pytest.raises(ServerError, match="NUL"):
        exec_line(["/py", "a\x00b"])


def make(tmp_path, runner=None):
    runner = runner or RecordingRunner()
    cmd = ServerCommand(("{python}", "-m", "mlx_lm", "server", "--model", "{model}", "--adapter-path", "{adapter}",
                         "--port", "{port}"), model="/models/My Model %1", python="/usr/bin/python3", port=8234)
    return SystemdManager("nightlora-server.service", cmd, runner, unit_dir=tmp_path / "user"), runner


def test_configure_writes_the_unit_and_reloads_once(tmp_path):
    m, runner = make(tmp_path)
    adapter = Path("/home/me/.local/share/Hanni/nightlora/adapters/current")
    m.configure(adapter)
    assert m.unit_path == tmp_path / "user" / "nightlora-server.service"
    unit = read_unit(m.unit_path)
    assert parse_exec_line(unit["Service"]["ExecStart"]) == [
        "/usr/bin/python3", "-m", "mlx_lm", "server", "--model", "/models/My Model %1",
        "--adapter-path", str(adapter), "--port", "8234",
    ]
    assert unit["Service"]["Type"] == "simple" and unit["Install"]["WantedBy"] == "default.target"
    assert runner.calls == [["systemctl", "--user", "daemon-reload"]]
    m.configure(adapter)  # unchanged: no rewrite, no reload
    assert len(runner.calls) == 1
    m.configure(None)
    assert "--adapter-path" not in parse_exec_line(read_unit(m.unit_path)["Service"]["ExecStart"])
    assert len(runner.calls) == 2


def test_start_stop_status_argv(tmp_path):
    runner = RecordingRunner().on_sequence(["systemctl", "--user", "is-active"], [(0, "active\n"), (3, "inactive\n")])
    m, _ = make(tmp_path, runner)
    m.start()  # no unit yet: written first
    assert m.is_running()
    m.stop()
    assert not m.is_running()
    assert runner.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "start", "nightlora-server.service"],
        ["systemctl", "--user", "is-active", "nightlora-server.service"],
        ["systemctl", "--user", "stop", "nightlora-server.service"],
        ["systemctl", "--user", "is-active", "nightlora-server.service"],
    ]


def test_failures_are_one_line_errors(tmp_path):
    runner = (RecordingRunner().on(["systemctl", "--user", "start"], 1, stderr="Job failed. See journalctl.")
              .on(["systemctl", "--user", "stop"], 5, stderr="Unit nightlora-server.service not loaded."))
    m, _ = make(tmp_path, runner)
    m.stop()  # never loaded: nothing to stop
    with pytest.raises(ServerError, match="cannot start nightlora-server.service: .* exited 1: Job failed"):
        m.start()
    with pytest.raises(ServerError, match="must be a unit name"):
        SystemdManager("../evil", m.command, runner)
