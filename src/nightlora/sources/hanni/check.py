"""The feedback gate: is there enough new feedback to make training worth a night?

New feedback is a row not yet exported whose rating is 1 (thumbs up) or -1 (thumbs down);
0 means the user withdrew the rating, and anything else is not a rating the app writes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nightlora.sources.hanni.db import UNEXPORTED, feedback_high_water, open_snapshot


@dataclass(frozen=True)
class FeedbackCounts:
    positive: int
    negative: int
    total: int
    min_feedback: int
    due: bool
    high_water: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_feedback(conn: sqlite3.Connection, min_feedback: int) -> FeedbackCounts:
    """The gate's counts, read inside the caller's snapshot (see ``hanni_db.open_snapshot``)."""
    positive, negative = conn.execute(
        f"SELECT COALESCE(SUM(rating = 1), 0), COALESCE(SUM(rating = -1), 0)"
        f" FROM message_feedback WHERE {UNEXPORTED}"
    ).fetchone()
    total = positive + negative
    return FeedbackCounts(positive, negative, total, min_feedback, total >= min_feedback, feedback_high_water(conn))


def feedback_counts(db_path: Path, min_feedback: int) -> FeedbackCounts:
    with open_snapshot(db_path) as conn:
        return count_feedback(conn, min_feedback)
