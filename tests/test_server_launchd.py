"""The launchd manager: the plist read and written with plistlib, launchctl's exact argv."""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest

from nightlora.errors import ServerError
from nightlora.targets.mlx_lm.command import ServerCommand
from nightlora.targets.mlx_lm.launchd import LaunchdManager, adapter_of, with_adapter
from server_fixtures import RecordingRunner

LABEL = "com.hanni.mlx-server"
APP_ARGS = ["/opt/homebrew/bin/python3", "-m", "mlx_lm", "server", "--model", "/Users/me/models/Qwen 3",
            "--port", "8234"]


def app_plist(path: Path, args=APP_ARGS, fmt=plistlib.FMT_XML) -> Path:
    """The LaunchAgent as the app installs it (its own keys, in its own order)."""
    data = {"Label": LABEL, "ProgramArguments": list(args), "RunAtLoad": True, "KeepAlive": True,
            "EnvironmentVariables": {"HF_HOME": "/Users/me/.cache/hf"}}
    path.write_bytes(plistlib.dumps(data, fmt=fmt, sort_keys=False))
    return path


def manager(tmp_path, runner=None, **kw) -> tuple[LaunchdManager, RecordingRunner]:
    runner = runner or RecordingRunner()
    return LaunchdManager(tmp_path / f"{LABEL}.plist", LABEL, runner, uid=501, sleep=lambda s: None, **kw), runner


def load(path: Path) -> dict:
    with open(path, "rb") as f:
        return plistlib.load(f)


def test_adapter_argument_is_added_replaced_and_removed(tmp_path):
    m, runner = manager(tmp_path)
    app_plist(m.plist, fmt=plistlib.FMT_BINARY)
    current = Path("/Users/me/Library/Application Support/Hanni/nightlora/adapters/current")

    m.configure(current)
    data = load(m.plist)
    assert data["ProgramArguments"] == APP_ARGS + ["--adapter-path", str(current)]
    # Everything else the app put there is kept.
    assert data["KeepAlive"] is True and data["EnvironmentVariables"] == {"HF_HOME": "/Users/me/.cache/hf"}
    assert m.served_adapter() == str(current)

    m.configure(Path("/other"))
    assert load(m.plist)["ProgramArguments"] == APP_ARGS + ["--adapter-path", "/other"]

    m.configure(None)
    assert load(m.plist)["ProgramArguments"] == APP_ARGS
    assert runner.calls == []  # configure never touches launchd


def test_writing_the_same_config_twice_gives_identical_bytes(tmp_path):
    m, _ = manager(tmp_path)
    app_plist(m.plist)
    m.configure(Path("/a"))
    first = m.plist.read_bytes()
    inode = m.plist.stat().st_ino
    m.configure(Path("/a"))
    assert m.plist.read_bytes() == first
    assert m.plist.stat().st_ino == inode  # not even rewritten
    assert first.startswith(b"<?xml")
    assert oct(m.plist.stat().st_mode & 0o777) == "0o644"


def test_helpers_handle_the_inline_form():
    assert with_adapter(["p", "--adapter-path=/x", "--port", "1"], Path("/y")) == ["p", "--port", "1", "--adapter-path", "/y"]
    assert adapter_of(["p", "--adapter-path=/x"]) == "/x"
    assert adapter_of(["p"]) is None


@pytest.mark.parametrize("content, message", [
    (b"not a plist", "cannot read LaunchAgent plist"),
    (plistlib.dumps(["a"]), "not a LaunchAgent plist"),
    (plistlib.dumps({"Label": LABEL, "ProgramArguments": []}), "non-empty list of strings"),
    (plistlib.dumps({"Label": LABEL, "ProgramArguments": ["x", 3]}), "non-empty list of strings"),
    (plistlib.dumps({"ProgramArguments": ["x"]}), "Label is missing"),
    (plistlib.dumps({"Label": "other", "ProgramArguments": ["x"]}), "Label 'other', not server.label"),
])
def test_bad_plists_are_refused_and_left_alone(tmp_path, content, message):
    m, _ = manager(tmp_path)
    m.plist.write_bytes(content)
    with pytest.raises(ServerError, match=message):
        m.configure(Path("/a"))
    assert m.plist.read_bytes() == content


def test_missing_plist_is_created_from_the_command_template(tmp_path):
    cmd = ServerCommand(("{python}", "-m", "mlx_lm", "server", "--model", "{model}", "--adapter-path", "{adapter}",
                         "--port", "{port}"), model="/m", python="/py", port=8234)
    m, _ = manager(tmp_path, command=cmd, log_dir=tmp_path / "logs")
    m.configure(Path("/cur"))
    data = load(m.plist)
    assert data["Label"] == LABEL
    assert data["ProgramArguments"] == ["/py", "-m", "mlx_lm", "server", "--model", "/m", "--adapter-path", "/cur",
                                        "--port", "8234"]
    assert data["StandardErrorPath"] == str(tmp_path / "logs" / "server.log")
    m2, _ = manager(tmp_path / "none")
    with pytest.raises(ServerError, match="plist not found"):
        m2.configure(None)


def test_start_stop_and_status_use_the_gui_domain(tmp_path):
    runner = RecordingRunner().on_sequence(["launchctl", "print"], [(0, "state = running\n"), (113, "")])
    m, _ = manager(tmp_path, runner)
    app_plist(m.plist)
    m.start()
    assert m.is_running()
    m.stop()
    assert runner.calls == [
        ["launchctl", "bootstrap", "gui/501", str(m.plist)],
        ["launchctl", "print", f"gui/501/{LABEL}"],
        ["launchctl", "bootout", f"gui/501/{LABEL}"],
        ["launchctl", "print", f"gui/501/{LABEL}"],
    ]


@pytest.mark.parametrize("code", [3, 113])
def test_bootout_of_a_service_that_is_not_loaded_is_fine(tmp_path, code):
    runner = RecordingRunner().on(["launchctl", "bootout"], code, stderr="Boot-out failed: 3: No such process")
    m, _ = manager(tmp_path, runner)
    m.stop()
    assert runner.calls == [["launchctl", "bootout", f"gui/501/{LABEL}"]]


def test_bootout_that_leaves_it_loaded_is_an_error(tmp_path):
    runner = RecordingRunner().on(["launchctl", "bootout"], 1, stderr="Boot-out failed: 1: Operation not permitted")
    m, _ = manager(tmp_path, runner, stop_timeout=0.0)
    with pytest.raises(ServerError, match="cannot stop com.hanni.mlx-server: .*Operation not permitted"):
        m.stop()


def test_stop_waits_until_launchd_lets_go(tmp_path):
    runner = (RecordingRunner().on(["launchctl", "bootout"], 36, stderr="Boot-out failed: 36: Operation now in progress")
              .on_sequence(["launchctl", "print"], [(0, "state = running"), (0, "state = running"), (113, "")]))
    m, _ = manager(tmp_path, runner)
    m.stop()
    assert [c[1] for c in runner.calls] == ["bootout", "print", "print", "print"]


def test_bootstrap_of_a_still_loaded_label_reloads_it(tmp_path):
    runner = (RecordingRunner().on_sequence(["launchctl", "bootstrap"], [(5, ""), (0, "")])
              .on_sequence(["launchctl", "print"], [(0, "state = running"), (113, "")]))
    m, _ = manager(tmp_path, runner)
    app_plist(m.plist)
    m.start()
    assert [c[1] for c in runner.calls] == ["bootstrap", "print", "bootout", "print", "bootstrap"]


def test_failed_bootstrap_is_a_one_line_error(tmp_path):
    runner = (RecordingRunner().on(["launchctl", "bootstrap"], 5, stderr="Bootstrap failed: 5: Input/output error")
              .on(["launchctl", "print"], 113))
    m, _ = manager(tmp_path, runner)
    app_plist(m.plist)
    with pytest.raises(ServerError) as e:
        m.start()
    assert str(e.value) == (f"cannot start {LABEL}: `launchctl bootstrap gui/501 {m.plist}` exited 5: "
                            "Bootstrap failed: 5: Input/output error")


def test_running_states(tmp_path):
    runner = RecordingRunner().on_sequence(["launchctl", "print"], [
        (0, "\tstate = not running\n"), (113, ""), (0, "\tstate = spawn scheduled\n"), (0, "\tstate = running\n")])
    m, _ = manager(tmp_path, runner)
    assert [m.is_running() for _ in range(4)] == [False, False, True, True]


def test_the_apps_launchagent_names_the_served_model(tmp_path):
    m = LaunchdManager(app_plist(tmp_path / "a.plist"), "com.hanni.mlx-server", RecordingRunner(), uid=501)
    assert m.served_model() == "/Users/me/models/Qwen 3"
    assert LaunchdManager(tmp_path / "none.plist", "x", RecordingRunner(), uid=501).served_model() is None
