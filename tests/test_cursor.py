"""Consumed feedback: nightlora's own record, per source, in its state db."""

from __future__ import annotations

from nightlora.state import cursor
from nightlora.state.db import StateDB


def test_consume_records_each_key_once_per_source(tmp_path):
    with StateDB.for_state_dir(tmp_path) as db:
        assert cursor.consumed(db, "hanni:/a.db") == frozenset()
        assert cursor.consume(db, "hanni:/a.db", ["1", "2", "3"], run_id=None) == 3
        assert cursor.consume(db, "hanni:/a.db", ["3", "4"], run_id=None) == 1  # 3 was already there
        assert cursor.consume(db, "hanni:/b.db", ["1"], run_id=None) == 1
        assert cursor.consumed(db, "hanni:/a.db") == {"1", "2", "3", "4"}
        assert cursor.consumed(db, "hanni:/b.db") == {"1"}


def test_reading_without_a_state_db_creates_none(tmp_path):
    assert cursor.consumed_in(tmp_path / "state.db", "hanni:/a.db") == frozenset()
    assert not (tmp_path / "state.db").exists()
