"""The process manager with real child processes: pid identity, SIGTERM then SIGKILL, logs."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time

import pytest

from nightlora.errors import ServerError
from nightlora.targets.mlx_lm.command import ServerCommand
from nightlora.targets.health import check_health
from nightlora.platform.processes import process_identity
from nightlora.targets.mlx_lm.process import PidRecord, ProcessManager
from server_fixtures import RecordingRunner, fake_server_script, free_port, kill_pid  # noqa: F401


@pytest.fixture
def pm(tmp_path, request):
    made: list[ProcessManager] = []

    def make(template, **kw) -> ProcessManager:
        cmd = ServerCommand(tuple(template), model="unused", port=free_port())
        m = ProcessManager(cmd, tmp_path / "state", **kw)
        made.append(m)
        return m

    def cleanup():
        for m in made:
            rec = m.record()
            if rec is not None and process_identity(rec.pid) == rec.start_time:
                kill_pid(rec.pid)
            if m._child is not None:
                kill_pid(m._child.pid)
    request.addfinalizer(cleanup)
    return make


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return process_identity(pid) is None  # a zombie awaiting its reaper


def test_start_health_stop_with_a_real_http_server(pm, fake_server_script):
    m = pm(["{python}", str(fake_server_script), "{host}", "{port}"])
    m.start()
    rec = m.record()
    assert rec.argv == [sys.executable, str(fake_server_script), "127.0.0.1", str(m.command.port)]
    assert rec.start_time == process_identity(rec.pid) and m.is_running()
    assert os.getpgid(rec.pid) == rec.pid  # its own session and process group
    assert stat.S_IMODE(m.pid_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(m.log_path.stat().st_mode) == 0o600
    # It answers: /health says ok (its chat fails, so it is not healthy, with the reason).
    h = check_health(m.command.base_url, timeout=3, alive=m.is_running)
    assert not h.ok and h.ready_s is not None and "chat completion answered 500" in h.reason
    with pytest.raises(ServerError, match=f"already running \\(pid {rec.pid}\\)"):
        m.start()
    m.stop()
    assert gone(rec.pid) and not m.pid_file.exists() and not m.is_running()
    assert "starting [" in m.log_path.read_text()
    m.stop()  # stopping a stopped server is fine


def test_a_later_invocation_stops_the_server_by_its_pid_file(pm, fake_server_script):
    first = pm(["{python}", str(fake_server_script), "{host}", "{port}"])
    first.start()
    pid = first.record().pid
    later = ProcessManager(first.command, first.state_dir)  # e.g. `nightlora rollback` the next morning
    assert later.is_running()
    later.stop()
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        first._child.poll()
        time.sleep(0.05)
    assert gone(pid)


def test_a_recycled_pid_is_never_signalled(pm):
    m = pm(["{python}", "-c", "pass"])
    # A pid file left by a crash, whose pid now belongs to someone else: this very test process.
    m.pid_file.parent.mkdir(parents=True, exist_ok=True)
    m.pid_file.write_text(json.dumps(PidRecord(os.getpid(), "proc:1", ["old"], "log", "then").__dict__))
    assert not m.is_running()
    m.stop()  # must not SIGTERM us
    assert not m.pid_file.exists()
    m.pid_file.write_text("garbage")
    assert m.record() is None and not m.is_running()


def test_a_server_that_ignores_sigterm_gets_sigkill(pm, tmp_path):
    ready = tmp_path / "ready"
    code = ("import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)")
    m = pm(["{python}", "-c", code, str(ready)], stop_timeout=0.5)
    m.start()
    pid = m.record().pid
    while not ready.exists():
        time.sleep(0.02)
    t0 = time.monotonic()
    m.stop()
    assert gone(pid) and time.monotonic() - t0 < 5
    assert m._child.returncode == -9


def test_a_server_that_exits_at_once(pm):
    m = pm(["{python}", "-c", "import sys; sys.exit(3)"])
    try:
        m.start()
    except ServerError as e:  # it may already be gone when start() looks
        assert "exited at once (code 3)" in str(e)
    else:
        h = check_health(m.command.base_url, timeout=10, alive=m.is_running)
        assert not h.ok and "not running" in h.reason and h.total_s < 5
        assert m.exit_code() == 3


def test_a_port_taken_by_someone_else_is_refused(pm):
    m = pm(["{python}", "-c", "pass"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", m.command.port))
        s.listen()
        with pytest.raises(ServerError, match=r"port \d+ on 127.0.0.1 is in use .*server.manager = \"none\""):
            m.start()
    assert m.record() is None


def test_a_missing_program_is_a_server_error(pm):
    m = pm(["/nonexistent/python", "-V"])
    with pytest.raises(ServerError, match="cannot start the server \\(/nonexistent/python\\)"):
        m.start()


def test_identity_without_proc_uses_ps(tmp_path):
    runner = RecordingRunner().on(["ps"], 0, "Ss   Tue Nov 25 15:33:02 2026\n")
    assert process_identity(4242, runner, proc_root=tmp_path / "no-proc") == "ps:Tue Nov 25 15:33:02 2026"
    assert runner.calls == [["ps", "-o", "stat=", "-o", "lstart=", "-p", "4242"]]
    assert runner.envs == [{"LC_ALL": "C"}]  # a locale must not change the date's words
    zombie = RecordingRunner().on(["ps"], 0, "Z    Tue Nov 25 15:33:02 2026\n")
    assert process_identity(4242, zombie, proc_root=tmp_path / "no-proc") is None
    missing = RecordingRunner().on(["ps"], 1, "")
    assert process_identity(4242, missing, proc_root=tmp_path / "no-proc") is None
    assert process_identity(0) is None
