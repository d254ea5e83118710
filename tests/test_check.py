"""The feedback gate: unexported ratings of 1 and -1, from one snapshot."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nightlora.sources.base import FeedbackCounts
from nightlora.sources.hanni.db import feedback_counts
from nightlora.demo.database import build_demo_db, write_hanni_db
from nightlora.errors import SourceError

CONV = json.dumps([["user", "Hi"], ["assistant", "Hello"]])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "hanni.db"
    feedback = [
        (1, 1, 1, "t", 0), (1, 3, 1, "t", 0), (1, 5, -1, "t", 0),  # new: 2 up, 1 down
        (1, 7, 0, "t", 0), (1, 9, 2, "t", 0),                       # withdrawn, and not a rating the app writes
        (2, 1, 1, "t", 1), (2, 3, -1, "t", 1),                      # exported on an earlier night
        (2, 5, 1, "t", None),                                       # NULL exported still counts as new
    ]
    write_hanni_db(path, [(1, "a", None, None, 2, CONV), (2, "b", None, None, 2, CONV)], feedback)
    return path


def test_counts_only_new_ratings_of_one_and_minus_one(db: Path):
    c = feedback_counts(db, min_feedback=4)
    assert c == FeedbackCounts(positive=3, negative=1, total=4, min_feedback=4, due=True, high_water=8)
    assert not feedback_counts(db, min_feedback=5).due
    assert json.loads(json.dumps(c.to_dict()))["due"] is True


def test_no_feedback_at_all(tmp_path: Path):
    path = tmp_path / "hanni.db"
    write_hanni_db(path, [(1, "a", None, None, 2, CONV)], [])
    c = feedback_counts(path, 0)
    assert (c.total, c.high_water, c.due) == (0, None, True)
    assert not feedback_counts(path, 1).due


def test_counts_match_the_demo_database(tmp_path: Path):
    demo = build_demo_db(tmp_path / "hanni.db")
    with sqlite3.connect(demo.path) as conn:
        up, down = conn.execute(
            "SELECT SUM(rating = 1), SUM(rating = -1) FROM message_feedback WHERE exported = 0"
        ).fetchone()
    c = feedback_counts(demo.path, 10)
    assert (c.positive, c.negative, c.high_water) == (up, down, demo.feedback)
    assert c.due and up > 0 and down > 0


def test_missing_database(tmp_path: Path):
    with pytest.raises(SourceError, match="not found"):
        feedback_counts(tmp_path / "nope.db", 10)
