"""Open WebUI's own schema for the tables nightlora reads, as Open WebUI 0.12.4 creates them.

Produced by running the open-webui 0.12.4 wheel's alembic migrations (open_webui/migrations,
head ``0bd252b206fb``) on an empty SQLite file and reading back ``sqlite_master`` for
``user``, ``chat``, ``chat_message``, ``feedback``, ``model`` and ``alembic_version``.  What
the models (open_webui/models/feedbacks.py, chats.py) put in the JSON columns is in
/work/shared/notes/openwebui.md and source.py.  nightlora only reads webui.db: this DDL
builds the demo database and the tests' files.
"""

from __future__ import annotations

ALEMBIC_HEAD = "0bd252b206fb"

APP_SCHEMA_SQL = """
CREATE TABLE "user" (
    id VARCHAR NOT NULL,
    name VARCHAR,
    email VARCHAR,
    role VARCHAR,
    profile_image_url TEXT,
    last_active_at BIGINT,
    updated_at BIGINT,
    created_at BIGINT,
    username VARCHAR(50),
    bio TEXT,
    gender TEXT,
    date_of_birth DATE,
    profile_banner_image_url TEXT,
    timezone VARCHAR,
    presence_state VARCHAR,
    status_emoji VARCHAR,
    status_message TEXT,
    status_expires_at BIGINT,
    oauth JSON,
    info JSON,
    settings JSON, scim JSON, variables JSON,
    PRIMARY KEY (id)
);
CREATE UNIQUE INDEX uq_user_email_lower ON user (lower(email)) WHERE email IS NOT NULL;
CREATE TABLE chat (
    id VARCHAR NOT NULL,
    user_id VARCHAR,
    title TEXT,
    created_at BIGINT,
    updated_at BIGINT,
    share_id TEXT,
    archived BOOLEAN, chat JSON, pinned BOOLEAN, meta JSON DEFAULT '{}' NOT NULL, folder_id TEXT, tasks JSON, summary TEXT, last_read_at BIGINT, current_message_id TEXT, variables JSON, timer_at BIGINT,
    PRIMARY KEY (id),
    UNIQUE (share_id)
);
CREATE INDEX folder_id_idx ON chat (folder_id);
CREATE INDEX folder_id_user_id_idx ON chat (folder_id, user_id);
CREATE INDEX timer_at_idx ON chat (timer_at) WHERE timer_at IS NOT NULL;
CREATE INDEX updated_at_user_id_idx ON chat (updated_at, user_id);
CREATE INDEX user_id_archived_idx ON chat (user_id, archived);
CREATE INDEX user_id_folder_unread_idx ON chat (user_id, folder_id, archived, updated_at, last_read_at, id);
CREATE INDEX user_id_pinned_idx ON chat (user_id, pinned);
CREATE INDEX user_id_timer_at_idx ON chat (user_id, timer_at) WHERE timer_at IS NOT NULL;
CREATE INDEX user_id_updated_at_id_idx ON chat (user_id, updated_at DESC, id);
CREATE TABLE chat_message (
    id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    user_id TEXT,
    role TEXT NOT NULL,
    parent_id TEXT,
    content JSON,
    output JSON,
    model_id TEXT,
    files JSON,
    sources JSON,
    embeds JSON,
    done BOOLEAN,
    status_history JSON,
    error JSON,
    usage JSON,
    created_at BIGINT,
    updated_at BIGINT, context_summary TEXT, meta JSON,
    PRIMARY KEY (id),
    FOREIGN KEY(chat_id) REFERENCES chat (id) ON DELETE CASCADE
);
CREATE INDEX chat_message_chat_parent_idx ON chat_message (chat_id, parent_id);
CREATE INDEX chat_message_chat_role_done_idx ON chat_message (chat_id, role, done);
CREATE INDEX chat_message_model_created_idx ON chat_message (model_id, created_at);
CREATE INDEX chat_message_user_created_idx ON chat_message (user_id, created_at);
CREATE INDEX ix_chat_message_chat_id ON chat_message (chat_id);
CREATE INDEX ix_chat_message_created_at ON chat_message (created_at);
CREATE INDEX ix_chat_message_model_id ON chat_message (model_id);
CREATE INDEX ix_chat_message_user_id ON chat_message (user_id);
CREATE TABLE feedback (
    id TEXT NOT NULL,
    user_id TEXT,
    version BIGINT,
    type TEXT,
    data JSON,
    meta JSON,
    snapshot JSON,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (id)
);
CREATE TABLE "model" (
    id TEXT NOT NULL,
    user_id TEXT,
    base_model_id TEXT,
    name TEXT,
    params TEXT,
    meta TEXT,
    updated_at BIGINT,
    created_at BIGINT,
    is_active BOOLEAN DEFAULT 1 NOT NULL, version_id TEXT,
    PRIMARY KEY (id)
);
CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
"""
