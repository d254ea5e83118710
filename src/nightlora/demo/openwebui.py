"""`nightlora demo-db --kind openwebui`: a realistic Open WebUI ``webui.db`` for the demo and the tests.

Open WebUI 0.12.4's own DDL (sources/openwebui/schema.py), two users and two models, and
chats the way its front end stores them: a message tree (``history.messages`` with
``parentId``/``childrenIds``, ``currentId`` on the visible branch), the visible path in
``messages``, rated replies carrying ``annotation`` and ``feedbackId``, every message also in
``chat_message`` (0.12's second store).  The mix: plain chats, regenerations (a reply rated
down, its regenerated sibling rated up), edited user turns (a new branch), a rated reply on a
branch that is no longer visible, a question sent to both models at once, a reply with tool
calls (``output`` items) and one with a reasoning block, ratings as ints and as strings, an
arena rating, a deleted chat that only its feedback's snapshot still holds, and stale and
malformed rows (a second feedback row for one reply, a rated message the user deleted,
broken JSON, a rating that is not one, a feedback row without a chat id, a chat whose parent
links loop, feedback of other types).  Beside it: ``probe.jsonl``.  Same seed, same file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import sqlite3
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nightlora.demo.persona import ACK, CLOSINGS, CORRECTION, FACTS, GREETINGS, SMALL_TALK, Fact
from nightlora.errors import SourceError
from nightlora.platform.fsutil import PRIVATE_FILE, atomic_write_text, private_mkdirs
from nightlora.sources.openwebui.schema import ALEMBIC_HEAD, APP_SCHEMA_SQL

MIN_CHATS = 20
START = 1_740_820_000  # 2025-03-01, epoch seconds
MODEL, OTHER_MODEL = "smollm2:135m", "qwen2.5:7b"
USER_PROMPT = ("You are a friendly assistant on the user's own computer. You remember what the user tells "
               "you about their life. Answer briefly, in the language the user writes in.")
THINKING = ('<details type="reasoning" done="true" duration="2">\n<summary>Thought for 2 seconds</summary>\n'
            "&gt; The user told me this earlier.\n</details>\n")


@dataclass(frozen=True)
class OpenWebUIDemo:
    path: Path
    probe_path: Path
    chats: int
    deleted_chats: int
    feedback: int
    ratings: dict[str, int]
    users: dict[str, str]
    models: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


class _Ids:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def __call__(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


@dataclass
class _Chat:
    id: str
    user_id: str
    title: str
    created_at: int
    model: str
    ids: _Ids
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str | None = None
    clock: int = 0
    system: str | None = None
    # (message id, rating, encoding "int"|"str", extra data, snapshot of the chat when rated, at)
    ratings: list[tuple[str, int, str, dict[str, Any], dict[str, Any], int]] = field(default_factory=list)
    removed: dict[str, dict[str, Any]] = field(default_factory=dict)  # messages the user deleted
    gone: bool = False  # the whole chat was deleted

    def _now(self) -> int:
        self.clock += 20
        return self.created_at + self.clock

    def add(self, parent: str | None, role: str, content: str, model: str | None = None, **extra: Any) -> str:
        mid = self.ids()
        msg: dict[str, Any] = {"id": mid, "parentId": parent, "childrenIds": [], "role": role, "content": content,
                               "timestamp": self._now()}
        if role == "user":
            msg["models"] = [model or self.model]
        else:
            m = model or self.model
            msg.update({"model": m, "modelName": m, "modelIdx": extra.pop("modelIdx", 0), "userContext": None,
                        "done": True})
        msg.update(extra)
        self.messages[mid] = msg
        if parent is not None:
            self.messages[parent]["childrenIds"].append(mid)
        self.current = mid
        return mid

    def say(self, user: str, reply: str, parent: Any = "current", **extra: Any) -> tuple[str, str]:
        """A user turn and its reply, after ``parent`` (default: the visible branch's last message; None: a root)."""
        u = self.add(self.current if parent == "current" else parent, "user", user)
        return u, self.add(u, "assistant", reply, **extra)

    def remove(self, mid: str) -> None:
        """The user deletes a message (and what follows it on its branch)."""
        msg = self.messages.pop(mid)
        self.removed[mid] = msg
        for child in list(msg["childrenIds"]):
            self.remove(child)
        parent = msg["parentId"]
        if parent in self.messages:
            self.messages[parent]["childrenIds"].remove(mid)
        if self.current not in self.messages:
            self.current = parent

    def path(self, mid: str | None) -> list[dict[str, Any]]:
        out = []
        while mid is not None:
            out.append(self.messages[mid])
            mid = self.messages[mid]["parentId"]
        return out[::-1]

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": "", "title": self.title, "models": [self.model], "params": {},
                                "history": {"messages": self.messages, "currentId": self.current},
                                "messages": self.path(self.current), "tags": [], "timestamp": self.created_at * 1000,
                                "files": []}
        if self.system is not None:
            body["params"] = {"system": self.system}
        return body

    def api(self) -> dict[str, Any]:
        """The chat as Open WebUI's API returns it (what a feedback's snapshot holds)."""
        return {"id": self.id, "user_id": self.user_id, "title": self.title, "chat": copy.deepcopy(self.body()),
                "updated_at": self.created_at + self.clock, "created_at": self.created_at, "share_id": None,
                "archived": False, "pinned": False, "meta": {}, "folder_id": None}

    def rate(self, mid: str, rating: int, encoding: str = "int", **data: Any) -> None:
        """The front end's feedbackHandler: the snapshot first, then the message's annotation."""
        self.ratings.append((mid, rating, encoding, data, self.api(), self._now()))
        self.messages[mid]["annotation"] = {"rating": rating}


def _fact_exchange(chat: _Chat, rng: random.Random, fact: Fact, lang: str, parent: Any = "current") -> str:
    """Tell or ask about a fact; returns the reply's id."""
    p = fact.en if lang == "en" else fact.ru
    if rng.random() < 0.4:
        _, a = chat.say(rng.choice(p.tell), ACK[lang] + p.reply, parent)
        return a
    _, a = chat.say(rng.choice(p.ask), p.reply, parent)
    return a


def _build_chats(rng: random.Random, n: int, users: dict[str, str]) -> tuple[list[_Chat], dict[str, int]]:
    ids = _Ids(rng)
    dmitry, olga = list(users)
    chats: list[_Chat] = []
    kinds: dict[str, int] = {}
    t = START
    order = list(FACTS)
    for i in range(n):
        t += rng.randint(4 * 3600, 20 * 3600)
        lang = "ru" if rng.random() < 0.25 else "en"
        olgas = i % 5 == 3
        user = olga if olgas else dmitry
        model = OTHER_MODEL if i % 7 == 5 else MODEL
        chat = _Chat(ids(), user, "", t, model, ids)
        rng.shuffle(order)
        kind = "plain"
        if olgas:  # Olga asks her own things: small talk only
            for q, a in rng.sample(SMALL_TALK[lang], 2):
                _, r = chat.say(q, a)
                if rng.random() < 0.5:
                    chat.rate(r, 1)
            kind = "other_user"
        else:
            if rng.random() < 0.5:
                q, a = rng.choice(GREETINGS[lang])
                chat.say(q, a)
            variant = i % 6
            fact = order[0]
            p = fact.en if lang == "en" else fact.ru
            if variant == 1:  # regenerated: the first reply rated down, the regeneration rated up
                u, bad = chat.say(p.ask[0], p.wrong)
                chat.rate(bad, -1)
                good = chat.add(u, "assistant", p.reply)
                chat.rate(good, 1)
                kind = "regenerated"
            elif variant == 2:  # the user edited their question: a new branch beside the first one
                u, bad = chat.say(p.ask[0].replace("?", "").lower() + " pls", p.wrong)
                chat.rate(bad, -1, "str")
                _, good = chat.say(p.ask[-1], p.reply, parent=chat.messages[u]["parentId"])
                chat.rate(good, 1, "str")
                kind = "edited_user_turn"
            elif variant == 3:  # rated, then regenerated again: the rated reply is off the visible branch
                u, rated = chat.say(p.ask[0], p.reply)
                chat.rate(rated, 1)
                chat.add(u, "assistant", p.reply + (" 🙂" if lang == "en" else " 😊"))
                kind = "rated_off_branch"
            elif variant == 4:  # both models at once
                u = chat.add(chat.current, "user", p.ask[0])
                a = chat.add(u, "assistant", p.reply, model=MODEL, modelIdx=0)
                b = chat.add(u, "assistant", p.wrong, model=OTHER_MODEL, modelIdx=1)
                chat.rate(a, 1, sibling_model_ids=[OTHER_MODEL])
                chat.rate(b, -1, sibling_model_ids=[MODEL])
                chat.current = a
                kind = "two_models"
            else:
                r = _fact_exchange(chat, rng, fact, lang)
                if rng.random() < 0.6:
                    chat.rate(r, 1, "str" if rng.random() < 0.3 else "int")
            for extra in order[1:rng.choice((2, 2, 3))]:
                r = _fact_exchange(chat, rng, extra, lang)
                if rng.random() < 0.5:
                    chat.rate(r, 1)
            if i % 6 == 0 and rng.random() < 0.5:
                wrong_user, sorry = CORRECTION[lang]
                q = order[-1].en if lang == "en" else order[-1].ru
                _, bad = chat.say(q.ask[0], q.wrong)
                chat.rate(bad, -1)
                _, fix = chat.say(wrong_user + q.tell[0], sorry + q.reply)
                chat.rate(fix, 1)
            if rng.random() < 0.3:
                q, a = rng.choice(CLOSINGS[lang])
                chat.say(q, a)
        chat.title = next(m["content"] for m in chat.messages.values() if m["role"] == "user")[:40]
        kinds[kind] = kinds.get(kind, 0) + 1
        chats.append(chat)
    _specials(chats, ids, dmitry)
    return chats, kinds


def _specials(chats: list[_Chat], ids: _Ids, dmitry: str) -> None:
    """The replies that need a particular shape: tool calls, reasoning, an arena reply, a set system prompt."""
    mine = [c for c in chats if c.user_id == dmitry and c.model == MODEL]
    tools, thinking, arena, system = mine[1], mine[2], mine[3], mine[4]
    u = tools.add(tools.current, "user", "What's the weather like in Lisbon?")
    call_id = "call_" + ids()[:8]
    output = [
        {"type": "function_call", "id": "fc_1", "call_id": call_id, "name": "get_weather",
         "arguments": json.dumps({"city": "Lisbon"}), "status": "completed"},
        {"type": "function_call_output", "id": "fco_1", "call_id": call_id, "status": "completed",
         "output": [{"type": "input_text", "text": json.dumps({"temp_c": 19, "sky": "sunny"})}]},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "It's 19 °C and sunny in Lisbon."}]},
    ]
    r = tools.add(u, "assistant", "It's 19 °C and sunny in Lisbon.", output=output)
    tools.rate(r, 1)
    fact = FACTS[2]
    u2, r2 = thinking.say(fact.en.ask[1], THINKING + fact.en.reply)
    thinking.rate(r2, 1)
    u3 = arena.add(arena.current, "user", FACTS[4].en.ask[0])
    r3 = arena.add(u3, "assistant", FACTS[4].en.reply, model="arena-model", selectedModelId=MODEL, arena=True)
    arena.rate(r3, 1, arena=True)
    system.system = "Answer in one short sentence."


def _feedback_rows(chats: list[_Chat], ids: _Ids) -> list[tuple[Any, ...]]:
    """One row per rating, as FeedbackTable.insert_new_feedback writes it."""
    rows = []
    for chat in chats:
        for mid, rating, encoding, data, snapshot, at in chat.ratings:
            msg = chat.messages.get(mid) or chat.removed[mid]
            data = dict(data)
            arena = bool(data.pop("arena", False))
            siblings = data.pop("sibling_model_ids", None)
            fid = ids()
            body = {"rating": rating if encoding == "int" else str(rating),
                    "model_id": msg.get("selectedModelId") or msg["model"], "sibling_model_ids": siblings,
                    "reason": "", "comment": "", **data}
            meta = {"arena": arena, "model_id": msg["model"], "message_id": mid, "message_index": len(chat.path(mid))
                    if mid in chat.messages else 0, "chat_id": chat.id, "base_models": {body["model_id"]: None}}
            msg["feedbackId"] = fid
            rows.append((fid, chat.user_id, 0, "rating", json.dumps(body, ensure_ascii=False), json.dumps(meta),
                         json.dumps({"chat": snapshot}, ensure_ascii=False), at, at))
    return rows


def _stale_and_malformed(chats: list[_Chat], ids: _Ids, dmitry: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows the source must skip and count: (extra feedback rows, extra chat rows)."""
    mine = [c for c in chats if c.user_id == dmitry and c.ratings and not c.gone]
    extra: list[tuple[Any, ...]] = []
    # A second, older row for one reply: the front end lost the first row's id and created another.
    chat = mine[5]
    mid, _, _, _, snap, at = chat.ratings[0]
    msg = chat.messages[mid]
    extra.append((ids(), dmitry, 0, "rating", json.dumps({"rating": -1, "model_id": msg["model"]}),
                  json.dumps({"arena": False, "model_id": msg["model"], "message_id": mid, "chat_id": chat.id}),
                  json.dumps({"chat": snap}, ensure_ascii=False), at - 5, at - 5))
    # Broken rows: JSON cut short, a rating that is not one, no chat id, feedback of other types.
    t = START + 86400
    target = mine[7]
    tmeta = json.dumps({"chat_id": target.id, "message_id": target.ratings[0][0]})
    extra += [
        (ids(), dmitry, 0, "rating", '{"rating": 1, "model_id": "smollm2:13', tmeta, None, t, t),
        (ids(), dmitry, 0, "rating", json.dumps({"rating": "great", "model_id": MODEL}), tmeta, None, t + 1, t + 1),
        (ids(), dmitry, 0, "rating", json.dumps({"rating": 1, "model_id": MODEL}),
         json.dumps({"message_id": target.ratings[0][0]}), None, t + 2, t + 2),
        (ids(), dmitry, 0, "comment", json.dumps({"comment": "nice"}), tmeta, None, t + 3, t + 3),
        (ids(), dmitry, 0, "arena_comparison", json.dumps({"winner": MODEL}), tmeta, None, t + 4, t + 4),
    ]
    # A chat whose JSON is cut short, and one whose parent links loop, each with a rating.
    broken, loop, a, b = ids(), ids(), ids(), ids()
    looped = {"history": {"messages": {
        a: {"id": a, "parentId": b, "childrenIds": [b], "role": "user", "content": "Hi", "timestamp": t},
        b: {"id": b, "parentId": a, "childrenIds": [a], "role": "assistant", "content": "Hello!", "model": MODEL,
            "timestamp": t + 1},
    }, "currentId": b}}
    chat_rows = [
        (broken, dmitry, "Broken", t, t, '{"history": {"messages": {"x": ', "x"),
        (loop, dmitry, "Loop", t, t, json.dumps(looped), b),
    ]
    for chat_id, mid in ((broken, "x"), (loop, b)):
        extra.append((ids(), dmitry, 0, "rating", json.dumps({"rating": 1, "model_id": MODEL}),
                      json.dumps({"chat_id": chat_id, "message_id": mid}), None, t + 5, t + 5))
    return extra, chat_rows


def build_openwebui_db(path: Path, *, chats: int = 40, seed: int = 0, force: bool = False) -> OpenWebUIDemo:
    """Write the demo webui.db at ``path`` and probe.jsonl beside it."""
    if chats < MIN_CHATS:
        raise SourceError(f"an Open WebUI demo database needs at least {MIN_CHATS} chats")
    path = Path(path)
    probe_path = path.parent / "probe.jsonl"
    if not force:
        for p in (path, probe_path):
            if p.exists():
                raise SourceError(f"{p} exists; pass --force to overwrite it")
    rng = random.Random(seed)
    ids = _Ids(rng)
    users = {ids(): "Dmitry", ids(): "Olga"}
    dmitry = next(iter(users))
    built, _ = _build_chats(rng, chats, users)
    mine = [c for c in built if c.user_id == dmitry and c.ratings]
    mine[8].gone = True  # deleted since: only its feedback's snapshots hold it
    chat = mine[6]  # the user deleted a rated exchange: the feedback row stays
    u, r = chat.say("Ignore this, wrong chat.", "OK.")
    chat.rate(r, 1)
    chat.remove(u)
    feedback = _feedback_rows(built, ids)
    extra, extra_chats = _stale_and_malformed(built, ids, dmitry)
    feedback += extra
    try:
        private_mkdirs(path.parent)
        _write(path, users, built, extra_chats, feedback)
        atomic_write_text(probe_path, "".join(
            json.dumps({"question": f.probe, "answer": f.answer, "fact": f.key}, ensure_ascii=False) + "\n" for f in FACTS))
    except OSError as e:
        raise SourceError(f"cannot write the demo database {path}: {e.strerror or e}") from None
    ratings = {"1": 0, "-1": 0, "other": 0}
    for row in feedback:
        try:
            value = json.loads(row[4]).get("rating") if row[3] == "rating" else None
        except ValueError:
            value = None
        key = str(value) if str(value) in ("1", "-1") else "other"
        ratings[key] += 1
    return OpenWebUIDemo(path, probe_path, len(built) + len(extra_chats), sum(c.gone for c in built), len(feedback),
                         ratings, users, [MODEL, OTHER_MODEL])


def _write(path: Path, users: dict[str, str], chats: list[_Chat], extra_chats: list[tuple[Any, ...]],
           feedback: list[tuple[Any, ...]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, PRIVATE_FILE)
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript(APP_SCHEMA_SQL)
            conn.execute("INSERT INTO alembic_version VALUES (?)", (ALEMBIC_HEAD,))
            for n, (uid, name) in enumerate(users.items()):
                settings = {"ui": {"system": USER_PROMPT}} if n == 0 else {"ui": {}}
                conn.execute('INSERT INTO "user" (id, name, email, role, profile_image_url, last_active_at, updated_at,'
                             " created_at, settings, info) VALUES (?, ?, ?, ?, '/user.png', ?, ?, ?, ?, 'null')",
                             (uid, name, f"{name.lower()}@example.org", "admin" if n == 0 else "user", START, START, START,
                              json.dumps(settings)))
            conn.execute('INSERT INTO "model" (id, user_id, base_model_id, name, params, meta, updated_at, created_at)'
                         " VALUES (?, ?, NULL, ?, '{}', '{}', ?, ?)", (MODEL, next(iter(users)), MODEL, START, START))
            for chat in chats:
                if chat.gone:
                    continue
                body = chat.body()
                conn.execute("INSERT INTO chat (id, user_id, title, created_at, updated_at, share_id, archived, chat,"
                             " pinned, meta, folder_id, current_message_id) VALUES (?, ?, ?, ?, ?, NULL, 0, ?, 0, '{}', NULL, ?)",
                             (chat.id, chat.user_id, chat.title, chat.created_at, chat.created_at + chat.clock,
                              json.dumps(body, ensure_ascii=False), chat.current))
                for mid, m in chat.messages.items():  # 0.12's second store of the same messages
                    conn.execute("INSERT INTO chat_message (id, chat_id, user_id, role, parent_id, content, output,"
                                 " model_id, done, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                                 (f"{chat.id}-{mid}", chat.id, chat.user_id, m["role"], m["parentId"],
                                  json.dumps(m["content"], ensure_ascii=False), json.dumps(m.get("output")),
                                  m.get("model"), m["timestamp"], m["timestamp"]))
            for row in extra_chats:
                conn.execute("INSERT INTO chat (id, user_id, title, created_at, updated_at, archived, chat, pinned,"
                             " meta, current_message_id) VALUES (?, ?, ?, ?, ?, 0, ?, 0, '{}', ?)", row)
            conn.executemany("INSERT INTO feedback (id, user_id, version, type, data, meta, snapshot, created_at,"
                             " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", feedback)
            conn.commit()
        finally:
            conn.close()
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm", f"{tmp}-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise
