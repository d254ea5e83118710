"""What each run did: the tool's own state database, and the app's own record when it keeps one.

``<state>/state.db`` is ours (schema in migrations.py): runs, deploys, and the feedback
each promoted night consumed (state/cursor.py).  The app's record (Hanni's
flywheel_cycles) comes from the source (``Source.app_recorder``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol

from nightlora.errors import StateError
from nightlora.paths import StatePaths
from nightlora.platform.clock import now_local
from nightlora.platform.fsutil import create_private_file, private_dir
from nightlora.state.migrations import migrate

BUSY_TIMEOUT_S = 5.0
# postponed: a resource guard (battery, disk, memory) kept the night from training; the next one tries again
FINAL_STATUSES = ("completed", "skipped", "postponed", "rejected", "rolled_back", "failed", "interrupted")


def state_error(path: Path, e: sqlite3.Error) -> StateError:
    """A failure of the state database as the one-line error the CLI reports (exit 14)."""
    hint = " (another process holds it; try again when it is done)" if "locked" in str(e) or "busy" in str(e) else ""
    return StateError(f"nightlora's state database {path}: {e}{hint}")


@dataclass(frozen=True)
class RunRecord:
    id: int
    started_at: str
    finished_at: str | None = None
    status: str = "running"
    stage: str | None = None
    exit_code: int | None = None
    train_pairs: int | None = None
    eval_score: float | None = None
    adapter_version: str | None = None
    run_dir: str | None = None
    notes: str | None = None
    hanni_cycle_id: int | None = None

    @property
    def duration_s(self) -> float | None:
        if not self.finished_at:
            return None
        try:
            return (datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)).total_seconds()
        except ValueError:
            return None


_RUN_COLUMNS = tuple(f.name for f in fields(RunRecord))
_UPDATABLE = frozenset(_RUN_COLUMNS) - {"id", "started_at"}


class StateDB:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            private_dir(self.path.parent)
            create_private_file(self.path)  # sqlite3 would create it 0644; its -wal and -journal take its mode
        except OSError as e:
            raise StateError(f"cannot use nightlora's state folder {self.path.parent}: {e.strerror or e}") from None
        try:
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as e:
            raise state_error(self.path, e) from None
        self.conn.row_factory = sqlite3.Row
        try:
            migrate(self.conn)
        except sqlite3.Error as e:  # locked by another writer beyond the busy timeout, not a database, ...
            self.conn.close()
            raise state_error(self.path, e) from None

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> "StateDB":
        return cls(StatePaths(Path(state_dir)).state_db)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "StateDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _row(self, run_id: int) -> RunRecord:
        row = self.conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StateError(f"{self.path} has no run {run_id}")
        return RunRecord(**dict(row))

    def start_run(self, *, run_dir: Path | str | None = None, stage: str = "start", started_at: str | None = None) -> RunRecord:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO runs (started_at, status, stage, run_dir) VALUES (?, 'running', ?, ?)",
                (started_at or now_local(), stage, None if run_dir is None else str(run_dir)),
            )
        return self._row(int(cur.lastrowid))

    def update_run(self, run_id: int, **values: Any) -> RunRecord:
        bad = set(values) - _UPDATABLE
        if bad:
            raise ValueError(f"runs has no updatable column {', '.join(sorted(bad))}")
        if values:
            cols = ", ".join(f"{k} = ?" for k in values)
            with self.conn:
                self.conn.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*values.values(), run_id))
        return self._row(run_id)

    def finish_run(self, run_id: int, status: str, exit_code: int, **values: Any) -> RunRecord:
        return self.update_run(run_id, status=status, exit_code=exit_code,
                               finished_at=values.pop("finished_at", None) or now_local(), **values)

    def run(self, run_id: int) -> RunRecord:
        return self._row(run_id)

    def recent_runs(self, limit: int = 20) -> list[RunRecord]:
        rows = self.conn.execute(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [RunRecord(**dict(r)) for r in rows]

    def durations(self, limit: int = 10, statuses: tuple[str, ...] = ("completed", "rolled_back")) -> list[float]:
        """How long the last runs that went through training took, in seconds (newest first)."""
        marks = ", ".join("?" for _ in statuses)
        rows = self.conn.execute(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE finished_at IS NOT NULL AND status IN ({marks}) "
            "ORDER BY id DESC LIMIT ?", (*statuses, limit),
        ).fetchall()
        out = [RunRecord(**dict(r)).duration_s for r in rows]
        return [d for d in out if d is not None and d >= 0]

    def record_deploy(self, run_id: int | None, action: str, outcome: str, *, requested: str | None,
                      live: str | None, detail: str | None = None) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO deploys (run_id, at, action, requested, outcome, live, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, now_local(), action, requested, outcome, live, detail),
            )

    def deploys(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM deploys ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]


class AppRecorder(Protocol):
    """Where the app itself shows what each night did (a source's, e.g. Hanni's flywheel_cycles)."""

    def start(self, started_at: str | None = None) -> int | None: ...
    def finish(self, cycle_id: int, status: str, **values: Any) -> bool: ...
    def unfinished(self, cycle_ids: list[int]) -> set[int]:
        """Which of these records the app still shows as running (read only)."""
        ...


class RunRecorder:
    """One run's record in both places (ours, and the app's when it keeps one): a row at the start,
    completed at the end."""

    def __init__(self, state: StateDB, app: AppRecorder | None = None):
        self.state = state
        self.app = app

    def start(self, run_dir: Path | str | None = None) -> RunRecord:
        rec = self.state.start_run(run_dir=run_dir)
        cycle = self.app.start(rec.started_at) if self.app is not None else None
        if cycle is not None:
            rec = self.state.update_run(rec.id, hanni_cycle_id=cycle)
        return rec

    def stage(self, run_id: int, stage: str, **values: Any) -> RunRecord:
        return self.state.update_run(run_id, stage=stage, **values)

    def finish(
        self,
        run_id: int,
        status: str,
        exit_code: int,
        *,
        train_pairs: int | None = None,
        eval_score: float | None = None,
        adapter_version: str | None = None,
        adapter_path: str | None = None,
        notes: str | None = None,
    ) -> RunRecord:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}")
        rec = self.state.finish_run(run_id, status, exit_code, train_pairs=train_pairs, eval_score=eval_score,
                                    adapter_version=adapter_version, notes=notes)
        if self.app is not None and rec.hanni_cycle_id is None:
            # The app's database was locked when the run started: its record is made now, whole.
            cycle = self.app.start(rec.started_at)
            if cycle is not None:
                rec = self.state.update_run(rec.id, hanni_cycle_id=cycle)
        if self.app is not None and rec.hanni_cycle_id is not None:
            self.app.finish(rec.hanni_cycle_id, status, train_pairs=train_pairs, eval_score=eval_score,
                              notes=notes, adapter_path=adapter_path, finished_at=rec.finished_at)
        return rec

    def resync_app(self, records: list[RunRecord], adapter_path: Callable[[RunRecord], str | None]) -> list[int]:
        """Finished runs whose end the app missed (its database was locked then, or the run was killed
        between the two records): complete the app's record from ours.  Returns the runs repaired."""
        if self.app is None:
            return []
        done = {r.hanni_cycle_id: r for r in records if r.status != "running" and r.hanni_cycle_id is not None}
        repaired = []
        for cycle in sorted(self.app.unfinished(list(done))):
            r = done[cycle]
            if self.app.finish(cycle, r.status, train_pairs=r.train_pairs, eval_score=r.eval_score, notes=r.notes,
                               adapter_path=adapter_path(r), finished_at=r.finished_at):
                repaired.append(r.id)
        return repaired
