"""One read snapshot of an app's SQLite file, for every source that reads one.

The app may be writing while we read: the file is opened read-only (``mode=ro`` plus
``PRAGMA query_only``) with a busy timeout, inside one read transaction taken at once, so
every query of a night sees the same moment.  In WAL mode the app keeps writing meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Iterator, Mapping

from nightlora.errors import SourceError

BUSY_TIMEOUT_S = 5.0


def check_columns(conn: sqlite3.Connection, path: Path, what: str, required: Mapping[str, set[str]]) -> None:
    problems = []  # all at once: a database of another app version may lack several
    for table, needed in required.items():
        have = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        if not have:
            problems.append(f"no {table} table")
            continue
        missing = sorted(needed - have)
        if missing:
            problems.append(f"{table} lacks {', '.join(missing)}")
    if problems:
        raise SourceError(f"{path} is not {what} ({'; '.join(problems)})")


@contextlib.contextmanager
def read_snapshot(db_path: Path, what: str, required: Mapping[str, set[str]]) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction; ``what`` names the file in errors ("a Hanni database")."""
    path = Path(db_path)
    if not path.is_file():
        raise SourceError(f"{what[2:] if what.startswith('a ') else what} not found: {path}")
    if not os.access(path, os.R_OK):
        raise SourceError(f"cannot read {path}: permission denied (run nightlora as the user who owns it)")
    try:
        conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
    except sqlite3.Error as e:
        raise SourceError(f"cannot open {path}: {e}") from None
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
        # A deferred transaction takes its snapshot at the first read: read now, before anything else.
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        check_columns(conn, path, what, required)
        yield conn
    except sqlite3.Error as e:
        hint = ""
        if "readonly" in str(e) and not os.access(path.parent, os.W_OK):
            # A WAL database is read through its -shm file, which SQLite creates beside it.
            hint = f" (a WAL database needs its folder {path.parent} writable, or the app running, to be read)"
        raise SourceError(f"cannot read {path}: {e}{hint}") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()
