"""``<state>/status.json``: what the nightly run is doing, for the app to poll.

Written atomically (readers see the old or the new document, never half of
one).  ``expected_end`` is the start plus the median of recent runs' durations,
so the app can say "back around 03:40" while the server is down.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Sequence

from nightlora.paths import StatePaths
from nightlora.platform.fsutil import atomic_write_json

State = Literal["idle", "running", "done", "failed"]


def _now() -> datetime:
    return datetime.now().astimezone()


@dataclass(frozen=True)
class Status:
    state: State
    stage: str | None = None
    started: str | None = None
    expected_end: str | None = None
    adapter_version: str | None = None
    message: str = ""
    server_down: bool = False  # True while the assistant is stopped for training
    pid: int = field(default_factory=os.getpid)
    updated: str = field(default_factory=lambda: _now().isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expected_end(started: datetime, past_durations_s: Sequence[float], *, min_runs: int = 1) -> datetime | None:
    """Start + the median of past durations (robust to one odd night); None without history."""
    usable = [d for d in past_durations_s if d > 0]
    if len(usable) < min_runs:
        return None
    return started + timedelta(seconds=statistics.median(usable))


def write_status(path: Path, status: Status) -> Status:
    atomic_write_json(path, status.to_dict())
    return status


def read_status(path: Path) -> Status | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Status(**data)
    except (OSError, ValueError, TypeError):
        return None


class StatusWriter:
    """Keeps the run's fixed facts (start, expected end) and rewrites the file at each change."""

    def __init__(self, path: Path, *, started: datetime | None = None, past_durations_s: Sequence[float] = ()):
        self.path = Path(path)
        start = started or _now()
        end = expected_end(start, past_durations_s)
        self.current = Status(
            state="running",
            started=start.isoformat(timespec="seconds"),
            expected_end=end.isoformat(timespec="seconds") if end else None,
        )

    @classmethod
    def for_state_dir(cls, state_dir: Path, **kw: Any) -> "StatusWriter":
        return cls(StatePaths(Path(state_dir)).status, **kw)

    def update(self, **changes: Any) -> Status:
        changes.setdefault("updated", _now().isoformat(timespec="seconds"))
        changes.setdefault("pid", os.getpid())
        self.current = replace(self.current, **changes)
        return write_status(self.path, self.current)

    def stage(self, stage: str, message: str = "", **changes: Any) -> Status:
        return self.update(state="running", stage=stage, message=message, **changes)

    def done(self, message: str, *, failed: bool = False, **changes: Any) -> Status:
        changes.setdefault("server_down", False)
        return self.update(state="failed" if failed else "done", message=message, **changes)
