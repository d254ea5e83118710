"""The run lock: one run at a time, and a killed run never blocks the next night."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nightlora.errors import LockError
from nightlora.pipeline.lock import RunLock
from server_fixtures import kill_pid

HOLD = textwrap.dedent(
    """
    import sys, time
    from nightlora.pipeline.lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path, request):
    """Another process (a second run) that takes the lock and keeps it."""
    def start() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run.lock")], stdout=subprocess.PIPE, text=True)
        request.addfinalizer(lambda: kill_pid(p.pid))
        assert p.stdout.readline().strip() == "held"
        return p
    return start


def test_second_run_gets_lockerror_with_the_holders_pid(tmp_path, holder):
    p = holder()
    with pytest.raises(LockError) as e:
        RunLock(tmp_path / "run.lock").acquire()
    assert f"another nightlora run is in progress (pid {p.pid}, started " in str(e.value)
    assert e.value.exit_code == 10


def test_a_killed_run_leaves_a_stale_lock_that_is_cleared(tmp_path, holder):
    p = holder()
    os.kill(p.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the flock with the process
    p.wait()
    lock = RunLock(tmp_path / "run.lock").acquire()
    try:
        assert lock.stale is not None and lock.stale.pid == p.pid
        assert lock.holder().pid == os.getpid()
    finally:
        lock.release()
    assert (tmp_path / "run.lock").read_text() == ""  # released: empty, but the file stays
    with RunLock(tmp_path / "run.lock") as again:
        assert again.stale is None and again.held
    assert not again.held


def test_within_one_process_a_second_lock_is_refused_too(tmp_path):
    with RunLock.for_state_dir(tmp_path) as first:
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            RunLock.for_state_dir(tmp_path).acquire()
        with pytest.raises(LockError, match="already held by this run"):
            first.acquire()
    assert oct((tmp_path / "run.lock").stat().st_mode & 0o777) == "0o600"


def test_children_do_not_inherit_the_lock(tmp_path):
    lock = RunLock(tmp_path / "run.lock").acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)
    try:
        lock.release()
        # If the child had inherited the descriptor, it would still hold the flock now.
        with RunLock(tmp_path / "run.lock"):
            pass
    finally:
        kill_pid(child.pid)
