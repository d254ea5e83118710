"""One run at a time: an exclusive flock on ``<state>/run.lock``.

Why flock and not "a pid file that exists": the kernel releases a flock when
the holder's file descriptor closes, and a process that dies (kill -9, power
cut, OOM) closes all of them.  A killed run therefore never leaves a lock that
blocks the next night; what it leaves is only the text inside the file (its pid
and start time), which the next run reads to report "cleared a stale lock of
pid N" and then overwrites.  The file itself is never deleted: deleting it
would let a third run lock a new inode while a second still holds the old one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nightlora.errors import LockError, StateError
from nightlora.paths import StatePaths
from nightlora.platform.fsutil import PRIVATE_FILE, private_dir
from nightlora.platform.processes import process_identity


@dataclass(frozen=True)
class Holder:
    pid: int | None
    started_at: str | None = None
    identity: str | None = None
    argv: list[str] | None = None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "an unknown process"
        return who + (f", started {self.started_at}" if self.started_at else "")


def _parse(text: str) -> Holder | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    return Holder(data["pid"], data.get("started_at"), data.get("identity"), data.get("argv"))


class RunLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        #: The holder a killed run left in the file, found when we took the lock.
        self.stale: Holder | None = None

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> "RunLock":
        return cls(StatePaths(Path(state_dir)).lock)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> Holder | None:
        """Who wrote the lock file last (the live holder, or a dead one's leftovers)."""
        try:
            return _parse(self.path.read_text(encoding="utf-8"))
        except OSError:
            return None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            raise LockError(f"{self.path} is already held by this run")
        try:
            private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        except OSError as e:  # a state folder we may not write (another user's, read-only)
            raise StateError(f"cannot create the run lock {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockError(f"cannot lock {self.path}: {e.strerror}") from None
            h = self.holder()
            raise LockError(
                f"another nightlora run is in progress ({h.describe() if h else 'pid unknown'}); lock {self.path}"
            ) from None
        # We hold it: whatever the file says is a previous holder that is gone.
        old = os.read(fd, 65536).decode("utf-8", "replace")
        prev = _parse(old) if old.strip() else None
        self.stale = prev if prev is not None and prev.pid != os.getpid() else None
        me: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "identity": process_identity(os.getpid()),
            "argv": sys.argv,
        }
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty file: nobody holds it
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
