"""Hanni's own schema for the three tables nightlora reads, as the app creates it.

Taken from the app's source (github.com/sultanjakhan/hanni, desktop/src-tauri/src/db.rs:
``init_db``, ``migrate_conversations_category`` and ``migrate_sync_meta``, schema version 10;
lib.rs opens the file in WAL mode).  What matters to nightlora:

* ``AUTOINCREMENT`` ids: a deleted id is never reused, so a re-rating (the app's
  ``INSERT OR REPLACE``) always gets a new, higher id with ``exported = 0``;
* ``updated_at`` on all three tables, set by an AFTER INSERT trigger when a row comes
  without one and bumped by an AFTER UPDATE trigger: every UPDATE we make is followed by
  the trigger's own, so ``total_changes`` counts each row twice (``rowcount`` does not);
* the owner sync (sync_owner.rs) upserts rows by the other device's ids, so a row can land
  in an id gap, or replace a row with the same id and a newer ``updated_at``;
* an FTS5 index kept by triggers on ``conversations``.

nightlora never runs this on the user's database: the demo database and the tests build
real files with it.
"""

from __future__ import annotations

# The app writes updated_at as local time with a "T" (strftime below), so that it sorts with
# the RFC 3339 values the sync writes.
TIMESTAMP_SQL = "strftime('%Y-%m-%dT%H:%M:%f','now','localtime')"
SCHEMA_VERSION = 10
SYNCED_TABLES = ("conversations", "message_feedback", "flywheel_cycles")

_TABLES = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    summary TEXT,
    message_count INTEGER DEFAULT 0,
    messages TEXT NOT NULL
);

CREATE VIRTUAL TABLE IF NOT EXISTS conversations_fts USING fts5(
    summary, messages,
    content='conversations', content_rowid='id'
);

CREATE TRIGGER IF NOT EXISTS conv_ai AFTER INSERT ON conversations BEGIN
    INSERT INTO conversations_fts(rowid, summary, messages) VALUES (new.id, COALESCE(new.summary, ''), new.messages);
END;
CREATE TRIGGER IF NOT EXISTS conv_ad AFTER DELETE ON conversations BEGIN
    INSERT INTO conversations_fts(conversations_fts, rowid, summary, messages) VALUES('delete', old.id, COALESCE(old.summary, ''), old.messages);
END;
CREATE TRIGGER IF NOT EXISTS conv_au AFTER UPDATE ON conversations BEGIN
    INSERT INTO conversations_fts(conversations_fts, rowid, summary, messages) VALUES('delete', old.id, COALESCE(old.summary, ''), old.messages);
    INSERT INTO conversations_fts(rowid, summary, messages) VALUES (new.id, COALESCE(new.summary, ''), new.messages);
END;

CREATE TABLE IF NOT EXISTS message_feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL,
    message_index INTEGER NOT NULL,
    rating INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    exported INTEGER DEFAULT 0,
    UNIQUE(conversation_id, message_index)
);

CREATE INDEX IF NOT EXISTS idx_conversations_started ON conversations(started_at);
CREATE INDEX IF NOT EXISTS idx_message_feedback_conv ON message_feedback(conversation_id);

CREATE TABLE IF NOT EXISTS flywheel_cycles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL DEFAULT 'running',
    train_pairs INTEGER DEFAULT 0,
    eval_score REAL,
    notes TEXT,
    adapter_path TEXT
);

ALTER TABLE conversations ADD COLUMN category TEXT;

CREATE TABLE IF NOT EXISTS sync_tombstones (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    row_id TEXT NOT NULL,
    deleted_at TEXT NOT NULL DEFAULT (datetime('now')),
    UNIQUE(table_name, row_id)
);
CREATE INDEX IF NOT EXISTS idx_sync_tombstones_deleted_at ON sync_tombstones(deleted_at);
"""


def _sync_meta(table: str) -> str:
    """migrate_sync_meta's column and triggers for one table."""
    return f"""
ALTER TABLE {table} ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';
CREATE TRIGGER {table}_set_updated_at_on_insert AFTER INSERT ON {table} FOR EACH ROW
WHEN NEW.updated_at IS NULL OR NEW.updated_at = ''
BEGIN
    UPDATE {table} SET updated_at = {TIMESTAMP_SQL} WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER {table}_bump_updated_at AFTER UPDATE ON {table} FOR EACH ROW
WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE {table} SET updated_at = {TIMESTAMP_SQL} WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER {table}_tombstone AFTER DELETE ON {table} FOR EACH ROW
BEGIN
    INSERT OR REPLACE INTO sync_tombstones (table_name, row_id, deleted_at)
    VALUES ('{table}', OLD.id, {TIMESTAMP_SQL});
END;
"""


APP_SCHEMA_SQL = _TABLES + "".join(_sync_meta(t) for t in SYNCED_TABLES) + f"PRAGMA user_version = {SCHEMA_VERSION};\n"

# The app's re-rating (commands_data.rs rate_message): the old row goes, a new one comes with a new id.
RATE_SQL = (
    "INSERT OR REPLACE INTO message_feedback (conversation_id, message_index, rating, created_at)"
    " VALUES (?, ?, ?, ?)"
)
