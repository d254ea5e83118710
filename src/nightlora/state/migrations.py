"""The state database's schema, as numbered migrations (in the style of simonw/llm).

Each migration is a function decorated with ``@migration``; ``migrate`` applies,
in order, each one whose name is not yet in ``_migrations``, inside its own
transaction.  Running ``migrate`` again does nothing.  Never edit or reorder a
released migration: add a new one.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Callable

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def applied(conn: sqlite3.Connection) -> list[str]:
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    return [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(conn: sqlite3.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; return the names applied now."""
    applied(conn)
    conn.commit()
    now_applied = []
    for fn in migrations if migrations is not None else MIGRATIONS:
        # One explicit transaction for the migration and its record, or neither: sqlite3's
        # implicit transactions would not cover DDL (CREATE/ALTER).  IMMEDIATE takes the write
        # lock first, so a second process waits and then finds the migration done.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (fn.__name__,)).fetchone():
                conn.rollback()
                continue
            fn(conn)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                (fn.__name__, datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        now_applied.append(fn.__name__)
    return now_applied


@migration
def m001_runs(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            status TEXT NOT NULL DEFAULT 'running',
            stage TEXT,
            exit_code INTEGER,
            train_pairs INTEGER,
            eval_score REAL,
            adapter_version TEXT,
            run_dir TEXT,
            notes TEXT
        )
        """
    )
    conn.execute("CREATE INDEX runs_started_at ON runs (started_at)")


@migration
def m002_runs_hanni_cycle(conn: sqlite3.Connection) -> None:
    # The flywheel_cycles row this run also wrote in the app's database, if any.
    conn.execute("ALTER TABLE runs ADD COLUMN hanni_cycle_id INTEGER")


@migration
def m003_deploys(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE deploys (
            id INTEGER PRIMARY KEY,
            run_id INTEGER REFERENCES runs(id),
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            requested TEXT,
            outcome TEXT NOT NULL,
            live TEXT,
            detail TEXT
        )
        """
    )


@migration
def m004_consumed_feedback(conn: sqlite3.Connection) -> None:
    # The feedback each promoted night used, per source (state/cursor.py): the gate counts
    # only what is not here, whatever the source's own flags say.
    conn.execute(
        """
        CREATE TABLE consumed_feedback (
            source TEXT NOT NULL,
            key TEXT NOT NULL,
            run_id INTEGER REFERENCES runs(id),
            consumed_at TEXT NOT NULL,
            PRIMARY KEY (source, key)
        ) WITHOUT ROWID
        """
    )
