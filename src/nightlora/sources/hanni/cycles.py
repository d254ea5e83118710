"""The app's ``flywheel_cycles`` table, so the Hanni app shows what each night did.

The app's database is the user's: we write to it only when it is really Hanni's (it
has a ``conversations`` table), one short transaction at a time with a busy timeout,
and a failure there is logged to the run's log, never fatal: the app may hold a
lock, or be mid-migration, while we run at 3 a.m.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

from nightlora.platform.clock import now_local

BUSY_TIMEOUT_S = 5.0
# The app's own definition (Hanni's db.rs); used only when the table is missing.
FLYWHEEL_SCHEMA = """
CREATE TABLE IF NOT EXISTS flywheel_cycles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL DEFAULT 'running',
    train_pairs INTEGER DEFAULT 0,
    eval_score REAL,
    notes TEXT,
    adapter_path TEXT
)
"""

class HanniCycles:
    """The app's ``flywheel_cycles`` table, so the app shows what each night did."""

    def __init__(self, db_path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 log: Callable[[str], None] | None = None):
        self.db_path = Path(db_path)
        self.busy_timeout_s = busy_timeout_s
        self.log = log or (lambda msg: None)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # mode=rw: never create the app's database when it is missing.
        conn = sqlite3.connect(f"{self.db_path.resolve().as_uri()}?mode=rw", uri=True, timeout=self.busy_timeout_s)
        try:
            yield conn
        finally:
            conn.close()

    def is_hanni(self) -> bool:
        if not self.db_path.is_file():
            return False
        try:
            with self._connect() as conn:
                row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'conversations'").fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    def start(self, started_at: str | None = None) -> int | None:
        """Insert a 'running' cycle; its id, or None when this is not Hanni's database or it failed."""
        if not self.is_hanni():
            return None
        try:
            with self._connect() as conn, conn:
                conn.execute(FLYWHEEL_SCHEMA)
                cur = conn.execute(
                    "INSERT INTO flywheel_cycles (started_at, status) VALUES (?, 'running')",
                    (started_at or now_local(),),
                )
                return int(cur.lastrowid)
        except sqlite3.Error as e:
            self.log(f"could not record the run in {self.db_path}: {e}")
            return None

    def unfinished(self, cycle_ids: list[int]) -> set[int]:
        """Which of ``cycle_ids`` the app's table still shows as running (a read; nothing is written)."""
        if not cycle_ids or not self.is_hanni():
            return set()
        marks = ", ".join("?" for _ in cycle_ids)
        try:
            with self._connect() as conn:
                rows = conn.execute(f"SELECT id FROM flywheel_cycles WHERE status = 'running' AND id IN ({marks})",
                                    cycle_ids).fetchall()
        except sqlite3.Error as e:
            self.log(f"could not read the runs recorded in {self.db_path}: {e}")
            return set()
        return {r[0] for r in rows}

    def finish(
        self,
        cycle_id: int,
        status: str,
        *,
        train_pairs: int | None = None,
        eval_score: float | None = None,
        notes: str | None = None,
        adapter_path: str | None = None,
        finished_at: str | None = None,
    ) -> bool:
        try:
            with self._connect() as conn, conn:
                cur = conn.execute(
                    "UPDATE flywheel_cycles SET finished_at = ?, status = ?, train_pairs = COALESCE(?, train_pairs), "
                    "eval_score = ?, notes = ?, adapter_path = ? WHERE id = ?",
                    (finished_at or now_local(), status, train_pairs, eval_score, notes, adapter_path, cycle_id),
                )
                return cur.rowcount == 1
        except sqlite3.Error as e:
            self.log(f"could not record the run's end in {self.db_path}: {e}")
            return False
