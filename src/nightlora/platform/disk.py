"""Free disk space where a path will be written, and how much a folder holds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged user may still write on the file system of ``path`` (or of its nearest
    existing parent, for a folder not created yet); None when that cannot be read."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        try:
            return shutil.disk_usage(p).free
        except OSError:
            return None
    return st.f_bavail * st.f_frsize  # f_bavail: what is left for non-root users, not f_bfree


def tree_bytes(path: Path) -> int:
    """The size of the regular files under ``path`` (a file: its size; missing: 0). Links are not followed."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(p):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total
