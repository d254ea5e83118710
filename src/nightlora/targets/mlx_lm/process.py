"""Manager "process": the server is a child process this tool starts and stops itself.

The child runs in its own session (so a Ctrl-C in the terminal that started a
run does not reach it and it outlives us), writes to a log file, and is
remembered in a pid file together with its start time.  Before signalling we
check that the pid still belongs to that same process: a pid file that
survived a reboot or a crash must never make us kill an unrelated process that
got the recycled pid.  Nothing here ever looks processes up by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from nightlora.errors import ServerError
from nightlora.paths import StatePaths
from nightlora.platform.fsutil import PRIVATE_FILE, atomic_write_json, private_dir
from nightlora.platform.net import port_in_use
from nightlora.platform.processes import process_identity
from nightlora.platform.runner import CommandRunner, SubprocessRunner
from nightlora.targets.mlx_lm.command import ServerCommand

LOG_ROTATE_BYTES = 20 * 1024 * 1024
START_MARK = "--- nightlora"  # begins the line written to the log before each start


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_time: str  # opaque identity: /proc starttime ticks on Linux, `ps lstart` elsewhere
    argv: list[str]
    log: str
    started_at: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ProcessManager:
    name = "process"

    def __init__(
        self,
        command: ServerCommand,
        state_dir: Path,
        *,
        adapter: Path | None = None,
        runner: CommandRunner | None = None,
        stop_timeout: float = 20.0,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.command = command
        self.state_dir = Path(state_dir)
        self.adapter = adapter
        self.runner = runner or SubprocessRunner()
        self.stop_timeout = stop_timeout
        self.env = dict(env) if env is not None else None
        self.sleep = sleep
        self.pid_file = StatePaths(self.state_dir).server_pid
        self.log_path = StatePaths(self.state_dir).server_log
        self._child: subprocess.Popen[bytes] | None = None

    def describe(self) -> str:
        return f"process manager: pid file {self.pid_file}, log {self.log_path}, {self.command.base_url}"

    def configure(self, adapter: Path | None) -> None:
        self.adapter = adapter

    def served_model(self) -> str | None:
        return None  # the command is built from the config

    def argv(self) -> list[str]:
        return self.command.argv(self.adapter)

    # -- pid file --------------------------------------------------------------------------

    def record(self) -> PidRecord | None:
        try:
            data = json.loads(self.pid_file.read_text())
            return PidRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            # An unreadable pid file names no process we could safely signal.
            return None

    def _alive(self, rec: PidRecord) -> bool:
        if self._child is not None and self._child.pid == rec.pid:
            self._child.poll()  # reap our own child so it does not linger as a zombie
        return process_identity(rec.pid, self.runner) == rec.start_time

    def is_running(self) -> bool:
        rec = self.record()
        return rec is not None and self._alive(rec)

    def exit_code(self) -> int | None:
        """The child's exit status when this object started it and it has ended."""
        return None if self._child is None else self._child.poll()

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 32768))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def last_error(self, limit: int = 200) -> str:
        """The last line that names an error since the latest start, for failure reasons."""
        text = self.log_tail(200)
        since_start = text.rsplit(START_MARK, 1)[-1]
        errors = [ln for ln in since_start.splitlines() if "Error" in ln or "error" in ln]
        return " ".join(errors[-1].split())[:limit] if errors else ""

    # -- start / stop ----------------------------------------------------------------------

    def _open_log(self) -> int:
        private_dir(self.log_path.parent)
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        return os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)

    def start(self) -> None:
        rec = self.record()
        if rec is not None and self._alive(rec):
            raise ServerError(f"the server is already running (pid {rec.pid}); stop it first")
        if port_in_use(self.command.host, self.command.port):
            raise ServerError(
                f"port {self.command.port} on {self.command.host} is in use by a process nightlora did not start; "
                "stop it, or set server.manager = \"none\" if that server is not ours to manage"
            )
        argv = self.argv()
        private_dir(self.state_dir)
        fd = self._open_log()
        try:
            os.write(fd, f"{START_MARK} {_now()}: starting {json.dumps(argv)}\n".encode())
            env = None if self.env is None else {**os.environ, **self.env}
            try:
                child = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, env=env, cwd=self.state_dir,
                )
            except OSError as e:
                raise ServerError(f"cannot start the server ({argv[0]}): {e.strerror or e}") from None
        finally:
            os.close(fd)
        self._child = child
        ident = process_identity(child.pid, self.runner)
        if ident is None:
            code = child.wait(timeout=5)
            raise ServerError(f"the server exited at once (code {code}); see {self.log_path}: {self.log_tail(1)}")
        atomic_write_json(self.pid_file, asdict(PidRecord(child.pid, ident, argv, str(self.log_path), _now())))

    def _wait_gone(self, rec: PidRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(rec):
            if time.monotonic() >= deadline:
                return False
            self.sleep(0.05)
        return True

    def _signal(self, rec: PidRecord, sig: int) -> None:
        # The child leads its own session, so its process group id is its pid: signal the
        # whole group (workers it may have spawned), but only if that is still so.
        try:
            if os.getpgid(rec.pid) == rec.pid:
                os.killpg(rec.pid, sig)
            else:
                os.kill(rec.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        rec = self.record()
        if rec is None:
            return
        if not self._alive(rec):
            self.pid_file.unlink(missing_ok=True)  # stale: that process is gone (or the pid was reused)
            return
        self._signal(rec, signal.SIGTERM)
        if not self._wait_gone(rec, self.stop_timeout):
            self._signal(rec, signal.SIGKILL)
            if not self._wait_gone(rec, 10.0):
                raise ServerError(f"the server (pid {rec.pid}) did not exit after SIGKILL")
        if self._child is not None and self._child.pid == rec.pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=1)
        self._wait_port_free(10.0)
        self.pid_file.unlink(missing_ok=True)

    def _wait_port_free(self, timeout: float) -> None:
        """A multi-threaded server's leader turns zombie before its other threads have closed
        the listening socket; a restart right away would find the port taken."""
        deadline = time.monotonic() + timeout
        while port_in_use(self.command.host, self.command.port, timeout=0.2):
            if time.monotonic() >= deadline:
                raise ServerError(f"port {self.command.port} is still in use after the server (pid file "
                                  f"{self.pid_file}) exited")
            self.sleep(0.05)
