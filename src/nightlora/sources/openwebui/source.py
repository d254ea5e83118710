"""The Open WebUI source: thumbs up/down from ``webui.db``, read from one snapshot, never written.

What Open WebUI stores (models/feedbacks.py, models/chats.py, the chat front end's
``feedbackHandler``):

* ``feedback``: one row per rated reply, ``type = "rating"``; ``data.rating`` 1 or -1 (an int,
  or a string from other clients), ``data.model_id`` the model that wrote it (for an arena
  reply the real one; ``meta.model_id`` is then "arena-model" and ``meta.arena`` true);
  ``meta.chat_id``, ``meta.message_id``; ``snapshot.chat`` the whole chat when it was rated.
  A changed rating updates the same row (new ``updated_at``).  There is no "exported" flag:
  which feedback nightlora used is only in its own state db (a key ``id@updated_at``, so a
  changed rating counts as new again).
* ``chat``: ``chat.history.messages`` maps message ids to messages with ``parentId``; every
  regeneration and every edited user turn is a branch.

Each rated reply is learned on its own path (root -> it, by ``parentId``), not the visible
branch.  A chat yields one linear conversation per rated reply that no other path goes
through, and its visible branch when that goes through a rated reply (what the user did
next, often a correction, is kept); turns a previous path of the chat already exported
are context only there.  A reply rated down whose sibling (same parent) is rated up makes a preference pair.
The live chat is read first; a chat that was deleted is rebuilt from the snapshots its
feedback rows keep.  Filters: ``user_ids`` (who rated), ``model_ids`` (which model's replies
are targets: train the adapter for the model that was rated), ``arena``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

from nightlora.dataset.messages import BadConversation, Message, is_learnable
from nightlora.dataset.system_prompt import SystemPrompt, load_system_prompt
from nightlora.paths import PROBE
from nightlora.sources.base import Conversation, FeedbackCounts, SeenFeedback
from nightlora.sources.openwebui import tree
from nightlora.sources.openwebui.config import OpenWebUISourceConfig
from nightlora.sources.openwebui.messages import convert_message, model_of, parse_json
from nightlora.sources.readonly import read_snapshot

WHAT = "an Open WebUI database"
REQUIRED_COLUMNS = {
    "feedback": {"id", "user_id", "type", "data", "meta", "snapshot", "created_at", "updated_at"},
    "chat": {"id", "user_id", "chat", "created_at"},
}
RATINGS = {1: 1, -1: -1, 0: 0, "1": 1, "-1": -1, "0": 0}


@dataclass(frozen=True)
class Rating:
    id: str
    key: str  # what the consumed cursor records: id@updated_at
    user_id: str | None
    chat_id: str
    message_id: str
    rating: int  # 1, -1, or 0 (withdrawn)
    model: str | None
    arena: bool
    updated_at: int
    new: bool = True  # not consumed by a promoted night yet
    rowid: int | None = None  # where the row is, whatever its id holds (Open WebUI's are uuids; a copy's may be NULL)

    @property
    def order(self) -> tuple[int, str]:
        """Older first; ties by id as text (ids of a hand-made table may mix types)."""
        return self.updated_at, str(self.id)


def feedback_key(fid: str, updated_at: Any) -> str:
    return f"{fid}@{updated_at}"


def _rating_of(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):  # a list or an object is no rating
        return None
    return RATINGS.get(value.strip() if isinstance(value, str) else value)


class OpenWebUISnapshot:
    """Everything below reads the same moment of webui.db."""

    def __init__(self, conn: sqlite3.Connection, cfg: OpenWebUISourceConfig, consumed: Collection[str],
                 default_prompt: str | None):
        self.conn = conn
        self.cfg = cfg
        self.consumed = consumed
        self.default_prompt = default_prompt
        self._cases: Counter[str] = Counter()
        self._seen: list[str] = []
        self._ratings: list[Rating] = []
        self._high_water: int | None = None
        self._read_feedback()

    # --- feedback rows ------------------------------------------------------------------

    def _read_feedback(self) -> None:
        users, models = set(self.cfg.user_ids), set(self.cfg.model_ids)
        latest: dict[tuple[str, str], Rating] = {}
        for rowid, fid, user_id, kind, data, meta, updated_at in self.conn.execute(
            "SELECT rowid, id, user_id, type, data, meta, updated_at FROM feedback ORDER BY created_at, id, rowid"
        ):
            if isinstance(updated_at, int) and (self._high_water is None or updated_at > self._high_water):
                self._high_water = updated_at
            if kind != "rating":
                self._cases["feedback_not_a_rating"] += 1  # comments, arena comparisons
                continue
            if users and user_id not in users:
                self._cases["feedback_other_user"] += 1
                continue
            key = feedback_key(fid, updated_at)
            new = key not in self.consumed
            try:
                data, meta = parse_json(data) or {}, parse_json(meta) or {}
            except (ValueError, UnicodeDecodeError):
                data = meta = None
            if not isinstance(data, dict) or not isinstance(meta, dict):
                self._cases["feedback_bad_json"] += 1
                if new:
                    self._seen.append(key)  # nothing to learn from it, ever: consumed with the rest
                continue
            arena = meta.get("arena") is True
            model = data.get("model_id") if isinstance(data.get("model_id"), str) else None
            if arena and not self.cfg.arena:
                self._cases["feedback_arena"] += 1
                continue
            if models and model not in models:
                self._cases["feedback_other_model"] += 1
                continue
            if new:
                self._seen.append(key)
            rating = _rating_of(data.get("rating"))
            chat_id, message_id = meta.get("chat_id"), meta.get("message_id")
            if rating is None:
                self._cases["feedback_bad_rating"] += 1
            elif not isinstance(chat_id, str) or not chat_id or not isinstance(message_id, str) or not message_id:
                self._cases["feedback_no_message"] += 1
            else:
                # Consumed or not, every current rating shapes the export (a reply rated down
                # last month is still no target); only the gate and ``seen`` leave consumed ones out.
                r = Rating(fid, key, user_id, chat_id, message_id, rating, model, arena,
                           updated_at if isinstance(updated_at, int) else 0, new, rowid)
                old = latest.get((chat_id, message_id))
                if old is not None:
                    # Two rows for one reply (the front end lost the first one's id): the newer one holds.
                    self._cases["feedback_superseded"] += 1
                    if old.order > r.order:
                        continue
                latest[(chat_id, message_id)] = r
        self._ratings = list(latest.values())

    def counts(self, min_feedback: int) -> FeedbackCounts:
        positive = sum(r.rating == 1 and r.new for r in self._ratings)
        negative = sum(r.rating == -1 and r.new for r in self._ratings)
        total = positive + negative
        return FeedbackCounts(positive, negative, total, min_feedback, total >= min_feedback, self._high_water)

    def seen(self) -> SeenFeedback:
        return SeenFeedback(self._high_water, (), len(self._seen), tuple(self._seen))

    def orphans(self) -> int:
        """Ratings whose chat is gone and whose row kept no snapshot of it."""
        by_chat = defaultdict(list)
        for r in self._ratings:
            by_chat[r.chat_id].append(r)
        lost = 0
        for chat_id, ratings in by_chat.items():
            if self._live_chat(chat_id) is None and not self._snapshot_messages(ratings)[0]:
                lost += len(ratings)
        return lost

    def marked_elsewhere(self) -> list[str]:
        return []  # Open WebUI keeps no record of what an exporter used

    def cases(self) -> Counter[str]:
        return self._cases

    # --- chats --------------------------------------------------------------------------

    def _live_chat(self, chat_id: str) -> tuple[Any, Any, Any] | None:
        row = self.conn.execute("SELECT user_id, chat, created_at FROM chat WHERE id = ?", (chat_id,)).fetchone()
        return row

    def _snapshot_messages(self, ratings: list[Rating]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The history a deleted chat's feedback rows kept, later snapshots winning; and its chat JSON."""
        merged: dict[str, Any] = {}
        chat: dict[str, Any] = {}
        for r in sorted(ratings, key=lambda r: r.order):
            (raw,) = self.conn.execute("SELECT snapshot FROM feedback WHERE rowid = ?", (r.rowid,)).fetchone()
            try:
                snap = parse_json(raw)
                inner = snap["chat"]["chat"]
                messages = inner["history"]["messages"]
            except (ValueError, UnicodeDecodeError, KeyError, TypeError):
                continue
            if isinstance(messages, dict):
                merged.update(messages)
                chat = inner if isinstance(inner, dict) else chat
        return merged, chat

    def _user_prompt(self, user_id: Any) -> str | None:
        try:
            row = self.conn.execute('SELECT settings FROM "user" WHERE id = ?', (user_id,)).fetchone()
            settings = parse_json(row[0]) if row else None
        except (sqlite3.Error, ValueError, UnicodeDecodeError):
            return None
        system = settings.get("ui", {}).get("system") if isinstance(settings, dict) and isinstance(settings.get("ui"), dict) else None
        return system if isinstance(system, str) and system.strip() else None

    def _system_prompt(self, chat: dict[str, Any], user_id: Any) -> str | None:
        """What Open WebUI sent: the chat's params.system, else the user's settings one (``params?.system ||
        $settings.system``); else the configured file's; else none at all ("")."""
        params = chat.get("params") if isinstance(chat.get("params"), dict) else {}
        for candidate in (params.get("system"), chat.get("system"), self._user_prompt(user_id)):
            if isinstance(candidate, str) and candidate.strip():
                return candidate
        return self.default_prompt if self.default_prompt is not None else ""

    def conversations(self) -> Iterator[Conversation]:
        by_chat: dict[str, list[Rating]] = defaultdict(list)
        for r in self._ratings:
            by_chat[r.chat_id].append(r)
        order = []
        for chat_id, ratings in by_chat.items():
            live = self._live_chat(chat_id)
            created = live[2] if live is not None and isinstance(live[2], int) else min(r.updated_at for r in ratings)
            order.append((created, chat_id, live))
        for _, chat_id, live in sorted(order, key=lambda t: (t[0], t[1])):
            yield from self._chat_conversations(chat_id, by_chat[chat_id], live)

    def _chat_conversations(self, chat_id: str, ratings: list[Rating], live: Any) -> Iterator[Conversation]:
        if live is not None:
            owner, raw, _ = live
            try:
                chat = parse_json(raw)
                messages = chat["history"]["messages"]
            except (ValueError, UnicodeDecodeError, KeyError, TypeError):
                yield Conversation(chat_id, rated=True, skip_reason="bad_chat_json")
                return
            if not isinstance(chat, dict) or not isinstance(messages, dict):
                yield Conversation(chat_id, rated=True, skip_reason="bad_chat_json")
                return
        else:
            messages, chat = self._snapshot_messages(ratings)
            if not messages:
                self._cases["feedback_chat_missing"] += len(ratings)
                return
            owner = ratings[0].user_id
            self._cases["chat_from_snapshot"] += 1
        usable: dict[str, Rating] = {}
        for r in ratings:
            msg = messages.get(r.message_id)
            if r.rating == 0:
                self._cases["feedback_withdrawn"] += 1
            elif not isinstance(msg, dict):
                self._cases["feedback_message_deleted"] += 1  # the user deleted it (or its branch) since
            elif msg.get("role") != "assistant":
                self._cases["feedback_on_non_assistant"] += 1
            else:
                usable[r.message_id] = r
        if not usable:
            return
        history = chat.get("history") if isinstance(chat.get("history"), dict) else {}
        current = history.get("currentId") if isinstance(history.get("currentId"), str) else None
        yield from ChatPaths(chat_id, messages, usable, self.cfg.model_ids, self._cases,
                             self._system_prompt(chat, owner), current).conversations()


class ChatPaths:
    """One chat's rated replies -> linear conversations, one per path no other path goes through."""

    def __init__(self, chat_id: str, messages: dict[str, Any], ratings: dict[str, Rating], model_ids: list[str],
                 cases: Counter[str], system_prompt: str | None, current: str | None = None):
        self.current = current
        self.chat_id = chat_id
        self.messages = messages
        self.ratings = ratings
        self.models = set(model_ids)
        self.cases = cases
        self.system_prompt = system_prompt
        self.emitted: set[str] = set()  # message ids already learned (or rejected) on an earlier path

    def _converted(self, mid: str) -> list[Message]:
        return convert_message(self.messages[mid])

    def _sibling_alternative(self, mid: str) -> tuple[Message, str] | None:
        """The latest sibling of a rated-down reply that the user rated up, by an allowed model."""
        best = None
        for sid in tree.ordered(self.messages, tree.siblings(self.messages, mid)):
            r = self.ratings.get(sid)
            if r is None or r.rating != 1 or (self.models and model_of(self.messages[sid]) not in self.models):
                continue
            try:
                converted = self._converted(sid)
            except BadConversation:
                continue
            if len(converted) == 1 and is_learnable(converted[0]):
                best = (converted[0], sid)
        return best

    def conversations(self) -> Iterator[Conversation]:
        paths: dict[str, list[str]] = {}
        for mid in tree.ordered(self.messages, self.ratings):
            path, problem = tree.path_to(self.messages, mid)
            if problem in ("history_cycle", "bad_parent", "message_missing"):
                self.cases[f"feedback_{problem}"] += 1
                continue
            if problem:
                self.cases[problem] += 1
            paths[mid] = path
        # The visible branch, when it goes through a rated reply: what the user did next (typically
        # the correction after a reply rated down) is kept, as in a linear chat.
        if self.current is not None and self.current not in paths:
            visible, problem = tree.path_to(self.messages, self.current)
            if problem in (None, "path_truncated") and any(m in paths for m in visible):
                paths[self.current] = visible
        for leaf in tree.leaves(paths):
            yield self._linear(paths[leaf])

    def _linear(self, path: list[str]) -> Conversation:
        out: list[Message] = []
        ratings: dict[int, int] = {}
        context_only: dict[int, str] = {}
        alternatives: dict[int, tuple[Message, str | None]] = {}
        message_ids: dict[int, str] = {}
        try:
            for mid in path:
                msg = self.messages[mid]
                converted = self._converted(mid)
                if not converted:  # an empty reply: Open WebUI leaves it out of what it sends
                    if mid in self.ratings and mid not in self.emitted:
                        self.cases["feedback_on_empty_reply"] += 1
                    continue
                start = len(out)
                out.extend(converted)
                last = len(out) - 1
                for i in range(start, len(out)):
                    message_ids[i] = mid
                if msg.get("role") != "assistant":
                    continue
                r = self.ratings.get(mid)
                if mid in self.emitted:
                    reason = "on_another_path"  # its example came from the chat's earlier path
                elif self.models and model_of(msg) not in self.models:
                    reason = "other_model"
                else:
                    reason = None
                for i in range(start, len(out)):
                    if reason is not None:
                        context_only[i] = reason
                    elif r is not None and r.rating == -1 and i < last:
                        context_only[i] = "part_of_rated_down_reply"  # the tool calls of a reply rated down
                if r is not None:
                    ratings[last] = r.rating
                    if r.rating == -1 and reason is None:
                        alt = self._sibling_alternative(mid)
                        if alt is not None:
                            alternatives[last] = alt
                            self.cases["sibling_pair"] += 1
        except BadConversation as e:
            return Conversation(self.chat_id, rated=True, skip_reason=e.reason)
        self.emitted.update(m for m in path if self.messages[m].get("role") == "assistant")
        return Conversation(self.chat_id, out, ratings, True, context_only=context_only, alternatives=alternatives,
                            split_key=self.chat_id, message_ids=message_ids, system_prompt=self.system_prompt)


class OpenWebUISource:
    kind = "openwebui"

    def __init__(self, cfg: OpenWebUISourceConfig):
        self.cfg = cfg
        self.db_path = cfg.db_path
        self.history_window = cfg.history_window

    @property
    def key(self) -> str:
        return f"openwebui:{self.db_path.expanduser().absolute()}"

    @property
    def location(self) -> str:
        return str(self.db_path.absolute())

    @property
    def system_prompt_path(self) -> Path | None:
        return self.cfg.system_prompt_path

    @property
    def probe_path(self) -> Path:
        return self.db_path.parent / PROBE

    def system_prompt(self) -> tuple[SystemPrompt, list[str]]:
        """The configured file, for chats that had no prompt of their own; none configured: no system message."""
        if self.cfg.system_prompt_path is None:
            return SystemPrompt("", None, False), []
        return load_system_prompt(self.cfg.system_prompt_path)

    @contextlib.contextmanager
    def snapshot(self, consumed: Collection[str] = frozenset()) -> Iterator[OpenWebUISnapshot]:
        default = self.system_prompt()[0].text if self.cfg.system_prompt_path is not None else None
        with read_snapshot(self.db_path, WHAT, REQUIRED_COLUMNS) as conn:
            yield OpenWebUISnapshot(conn, self.cfg, consumed, default)

    def mark_consumed(self, seen: SeenFeedback) -> int:
        return 0  # webui.db has no such record: the consumed cursor in nightlora's state db is the only one

    def app_recorder(self, log: Callable[[str], None] | None = None) -> None:
        return None
