"""Consumed feedback: which feedback of each source a promoted night has used.

The gate counts only feedback that is not here, so a night that did not put an
adapter live (rejected, rolled back, failed) leaves its feedback to be counted again
the next night.  Keys are the source's feedback ids as text; ``source`` is the
source's ``key`` (its kind and where its data is), so two databases never mix.

Beside it, the feedback each night noticed marked as used by something else (the app's
own exporter): ``check`` warns only about what no night has noticed yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from nightlora.platform.clock import now_local
from nightlora.state.db import StateDB


def consumed(db: StateDB, source: str) -> frozenset[str]:
    rows = db.conn.execute("SELECT key FROM consumed_feedback WHERE source = ?", (source,))
    return frozenset(r[0] for r in rows)


def consume(db: StateDB, source: str, keys: Iterable[str], run_id: int | None) -> int:
    """Record ``keys`` as consumed by ``run_id``, in one transaction; how many were new."""
    at = now_local()
    with db.conn:
        cur = db.conn.executemany(
            "INSERT OR IGNORE INTO consumed_feedback (source, key, run_id, consumed_at) VALUES (?, ?, ?, ?)",
            ((source, k, run_id, at) for k in keys),
        )
    return max(cur.rowcount, 0)


def consumed_in(state_db: Path, source: str) -> frozenset[str]:
    """``consumed`` for commands that only read (check, export): no state db yet means nothing consumed."""
    if not Path(state_db).is_file():
        return frozenset()
    with StateDB(state_db) as db:
        return consumed(db, source)


# The same table holds, under its own name per source, the feedback each night noticed marked
# used by something else: a second set of keys, not consumed ones.
_ELSEWHERE = "{}#marked-elsewhere"


def noticed_elsewhere(db: StateDB, source: str) -> frozenset[str]:
    return consumed(db, _ELSEWHERE.format(source))


def notice_elsewhere(db: StateDB, source: str, keys: Iterable[str], run_id: int | None) -> int:
    """Record that a night saw ``keys`` marked used by something else; how many were new."""
    return consume(db, _ELSEWHERE.format(source), keys, run_id)


def noticed_elsewhere_in(state_db: Path, source: str) -> frozenset[str]:
    """``noticed_elsewhere`` for commands that only read: no state db yet means nothing noticed."""
    return consumed_in(state_db, _ELSEWHERE.format(source))
