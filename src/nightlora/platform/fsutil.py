"""Atomic, owner-only file writes: the files we write hold private conversations."""

from __future__ import annotations

import contextlib
import json
import os
import errno
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


class NotRegularFile(OSError):
    """A path that should be a file is a FIFO, a device, a socket or a folder: reading it could block forever."""


def read_regular_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file (a FIFO would hang an ordinary read).

    Opened with O_NONBLOCK so that opening a FIFO returns at once, then checked with fstat on the
    open descriptor (no race with a rename).  ``limit``: refuse files larger than this many bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            raise NotRegularFile(errno.EINVAL, f"is {kind}, not a file", str(path))
        if limit is not None and st.st_size > limit:
            raise NotRegularFile(errno.EFBIG, f"is larger than {limit} bytes", str(path))
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def private_mkdirs(path: Path) -> Path:
    """Create ``path`` and each missing parent 0700 whatever the umask (``mkdir -p`` makes parents
    with the umask's mode); folders that exist are left as they are."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not p.is_dir():
                raise
            continue
        os.chmod(p, PRIVATE_DIR)  # mkdir's mode is masked by the umask
    return path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only; an existing ``path`` is made 0700."""
    path = private_mkdirs(path)
    os.chmod(path, PRIVATE_DIR)
    return path


def make_private_tree(root: Path) -> None:
    """Files 0600 and folders 0700 under ``root`` (itself included), for what libraries wrote with
    the umask's modes (save_pretrained, safetensors) or what moved in with its own.  Symlinks are
    left alone (their mode means nothing; their targets are checked where they live)."""
    root = Path(root)
    if root.is_symlink():
        return
    if not root.is_dir():
        os.chmod(root, PRIVATE_FILE)
        return
    os.chmod(root, PRIVATE_DIR)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, PRIVATE_DIR)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, PRIVATE_FILE)


def create_private_file(path: Path) -> Path:
    """Make sure ``path`` exists as an owner-only file before a library (sqlite3) opens it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return Path(path)


def open_private_append(path: Path) -> IO[str]:
    """A text file opened for appending, created 0600 (an existing one is made 0600): logs."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write to a temp file beside ``path``; rename over it only if the block succeeds.

    Readers see either the old file or the complete new one, never a half-written one.
    """
    path = Path(path)
    private_mkdirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_FILE)
        if "b" in mode:
            f = os.fdopen(fd, mode)
        else:
            f = os.fdopen(fd, mode, encoding=encoding, newline="\n")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb", encoding=None) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a folder under a temp name beside ``final`` and rename it into place when complete.

    A crash or kill leaves only a ``.tmp`` folder, never a half-written ``final``.
    ``final`` must not exist yet (adapter versions are never overwritten).
    """
    final = Path(final)
    private_mkdirs(final.parent)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, PRIVATE_DIR)
    try:
        yield tmp
        make_private_tree(tmp)  # what libraries wrote inside (save_pretrained...) got the umask's modes
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_private_line(path: Path, line: str) -> None:
    """Append one line to an owner-only file (created 0600; an existing file is made 0600 too).

    One ``write`` of the whole line on an O_APPEND descriptor: lines from threads never interleave,
    and a kill leaves at most one truncated last line, which readers skip.
    """
    path = Path(path)
    private_mkdirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp(parent: Path) -> list[Path]:
    """Remove ``.NAME.*.tmp`` leftovers of killed writers under ``parent``; return what went."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
