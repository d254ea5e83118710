"""`nightlora demo-db`: a realistic Hanni database for the demo and the tests.

One persona (``demo_persona``) across many conversations in English and Russian, in the
app's own schema (sources/hanni/schema.py: AUTOINCREMENT, NOT NULLs, ``updated_at`` and its
triggers, the FTS5 index, WAL mode).  Older conversations use the ``[role, content]`` pair
format and fenced ``action`` blocks; newer ones use OpenAI objects, tool calls and
`` /no_think`` markers, and some hold proactive messages: a conversation the app opened
(``[Автономное сообщение Ханни]: …``) and, as spring builds stored them, a
``"proactive": true`` message rated up right after a rated-down reply.  Feedback has all
three ratings, the oldest of it already exported; a few ratings were changed later (the
app's ``INSERT OR REPLACE``: a new id, unexported), and the phone's sync filled the id
gaps that left.  A few rows are malformed the ways real rows can be.  Beside the database:
``system_prompt.txt`` and ``probe.jsonl``, the held-out questions about the persona.
Everything is a function of the seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from nightlora.demo.persona import (
    ACK, CLOSINGS, CORRECTION, FACTS, GREETINGS, PROACTIVE, SMALL_TALK, SYSTEM_PROMPT, Fact,
)
from nightlora.errors import SourceError
from nightlora.platform.fsutil import PRIVATE_FILE, atomic_write_text, private_mkdirs
from nightlora.sources.hanni.db import SCHEMA_SQL
from nightlora.sources.hanni.messages import PROACTIVE_MARKER
from nightlora.sources.hanni.schema import APP_SCHEMA_SQL

MIN_CONVERSATIONS = 20
START = datetime(2025, 3, 1, 9, 0, 0)
# The share of the history (oldest first) written in the pair format, and whose feedback is exported.
PAIR_ERA = 0.4
EXPORTED_ERA = 0.3

# A turn: (role, content, extra OpenAI keys, rating kind).  The kind decides how likely a rating is.
Turn = tuple[str, str | None, dict[str, Any], str | None]

_WEATHER = (("sunny", "солнечно"), ("cloudy", "облачно"), ("rainy", "дождливо"))
_TASKS = (
    ("Feed Murka", "20:00", "feed Murka", "покормить Мурку"),
    ("Call Olga", "19:00", "call Olga", "позвонить Ольге"),
    ("Pick up Sonya", "16:30", "pick up Sonya", "забрать Соню"),
    ("Walk Baron", "18:00", "walk Baron", "погулять с Бароном"),
)


# Every how-many-th newer conversation the app opened itself, and holds a flagged proactive message.
PROACTIVE_OPENING_EVERY, PROACTIVE_OPENING_AT = 6, 1
PROACTIVE_FLAGGED_EVERY, PROACTIVE_FLAGGED_AT = 9, 4
# A long conversation (a quiz over every fact): longer than the 20 messages the app sends its model.
LONG_EVERY, LONG_AT = 17, 10
# Ratings changed later, and the phone's sync rows that landed in the id gaps they left.
RERATES = ((1, 0), (0, 1), (1, -1))  # (rating before, after)


@dataclass(frozen=True)
class DemoResult:
    path: Path
    system_prompt_path: Path
    probe_path: Path
    conversations: int
    malformed: int
    feedback: int
    ratings: dict[str, int]
    exported_feedback: int
    proactive: dict[str, int]
    long_conversations: int
    rerated: int
    synced_into_gaps: int

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _fact_turns(rng: random.Random, fact: Fact, lang: str) -> list[Turn]:
    p = fact.en if lang == "en" else fact.ru
    kind = rng.choices(("tell", "recall", "wrong"), weights=(4, 5, 1))[0]
    if kind == "tell":
        return [("user", rng.choice(p.tell), {}, None), ("assistant", ACK[lang] + p.reply, {}, "ack")]
    ask = ("user", rng.choice(p.ask), {}, None)
    if kind == "recall":
        return [ask, ("assistant", p.reply, {}, "recall")]
    wrong_user, sorry = CORRECTION[lang]
    return [
        ask,
        ("assistant", p.wrong, {}, "wrong"),
        ("user", wrong_user + rng.choice(p.tell), {}, None),
        ("assistant", sorry + p.reply, {}, "fix"),
    ]


def _tool_turns(rng: random.Random, lang: str, call_no: int) -> list[Turn]:
    call_id = f"call_{call_no:05d}"
    if rng.random() < 0.5:
        temp = rng.randint(11, 27)
        sky_en, sky_ru = rng.choice(_WEATHER)
        ask = "What's the weather like today?" if lang == "en" else "Какая сегодня погода?"
        reply = f"It's {temp} °C and {sky_en} in Lisbon." if lang == "en" else f"В Лиссабоне {temp} °C, {sky_ru}."
        name, args, result = "get_weather", {"city": "Lisbon"}, {"city": "Lisbon", "temp_c": temp, "sky": sky_en}
    else:
        text, at, en, ru = rng.choice(_TASKS)
        ask = f"Remind me to {en} at {at}." if lang == "en" else f"Напомни {ru} в {at}."
        reply = f"Done: I'll remind you to {en} at {at}." if lang == "en" else f"Готово: напомню {ru} в {at}."
        name, args, result = "create_reminder", {"text": text, "time": at}, {"ok": True, "id": call_no}
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return [
        ("user", ask, {}, None),
        ("assistant", None, {"tool_calls": [call]}, "other"),
        ("tool", json.dumps(result), {"tool_call_id": call_id, "name": name}, None),
        ("assistant", reply, {}, "other"),
    ]


def _action_turns(rng: random.Random, lang: str) -> list[Turn]:
    text, at, en, ru = rng.choice(_TASKS)
    block = "```action\n" + json.dumps({"type": "reminder", "text": text, "time": at}) + "\n```"
    if lang == "en":
        return [
            ("user", f"Set a reminder to {en} at {at}.", {}, None),
            ("assistant", f"Sure.\n{block}", {}, "other"),
            ("user", f"[Action result: reminder created for {at}]", {}, None),
            ("assistant", f"Done, I'll remind you to {en} at {at}.", {}, "other"),
        ]
    return [
        ("user", f"Поставь напоминание {ru} в {at}.", {}, None),
        ("assistant", f"Конечно.\n{block}", {}, "other"),
        ("user", f"[Action result: reminder created for {at}]", {}, None),
        ("assistant", f"Готово, напомню {ru} в {at}.", {}, "other"),
    ]


def _conversation(rng: random.Random, facts: Iterator[Fact], newer: bool, call_no: int) -> list[Turn]:
    lang = "ru" if rng.random() < 0.3 else "en"
    middle: list[list[Turn]] = [_fact_turns(rng, next(facts), lang) for _ in range(rng.choice((2, 3, 3, 4)))]
    if rng.random() < 0.2:
        q, a = rng.choice(SMALL_TALK[lang])
        middle.append([("user", q, {}, None), ("assistant", a, {}, "other")])
    if rng.random() < 0.2:
        # Tool calls replaced fenced action blocks; newer conversations still have a few blocks.
        use_tools = newer and rng.random() < 0.7
        middle.append(_tool_turns(rng, lang, call_no) if use_tools else _action_turns(rng, lang))
    rng.shuffle(middle)
    turns: list[Turn] = []
    if rng.random() < 0.5:
        q, a = rng.choice(GREETINGS[lang])
        turns += [("user", q, {}, None), ("assistant", a, {}, "other")]
    for part in middle:
        turns += part
    if rng.random() < 0.3:
        q, a = rng.choice(CLOSINGS[lang])
        turns += [("user", q, {}, None), ("assistant", a, {}, "other")]
    return turns


def _lang(turns: list[Turn]) -> str:
    return "ru" if any(c and any("а" <= ch <= "я" for ch in c.lower()) for r, c, _, _ in turns if r == "user") else "en"


def _proactive_opening(turns: list[Turn], p: int) -> list[Turn]:
    """The app wrote first (chat.js stores it with its marker); the user answered it."""
    texts = PROACTIVE[_lang(turns)]
    kind = "proactive_up" if p % (2 * PROACTIVE_OPENING_EVERY) == PROACTIVE_OPENING_AT else "proactive"
    return [("assistant", f"{PROACTIVE_MARKER} {texts[p % len(texts)]}", {}, kind), *turns]


def _quiz(turns: list[Turn]) -> list[Turn]:
    """The user checks everything Hanni remembers, one fact after another."""
    lang = _lang(turns)
    quiz: list[Turn] = []
    for fact in FACTS:
        ph = fact.en if lang == "en" else fact.ru
        quiz += [("user", ph.ask[-1], {}, None), ("assistant", ph.reply, {}, "recall")]
    return [*turns, *quiz]


def _flagged_after_wrong(turns: list[Turn], p: int) -> list[Turn]:
    """A spring build's proactive message, rated up, right after a reply rated down."""
    lang = _lang(turns)
    fact = FACTS[p % len(FACTS)]
    ph = fact.en if lang == "en" else fact.ru
    wrong_user, sorry = CORRECTION[lang]
    texts = PROACTIVE[lang]
    # The user replied after it, so the app also prefixed it with its marker (chat.js).
    proactive = f"{PROACTIVE_MARKER} {texts[(p + 1) % len(texts)]}"
    return [
        *turns,
        ("user", ph.ask[0], {}, None),
        ("assistant", ph.wrong, {}, "wrong"),
        ("assistant", proactive, {"proactive": True}, "proactive_up"),
        ("user", wrong_user + ph.tell[0], {}, None),
        ("assistant", sorry + ph.reply, {}, None),
    ]


def _rating(rng: random.Random, kind: str | None, last: bool) -> int | None:
    """Users rate a minority of replies: wrong facts always down, corrections and recalls often up.

    Other replies are rated down only at the end of a conversation (the user gave up), so the
    demo's preference pairs are either a wrong fact and its correction, or a reply with no better one.
    """
    if kind is None:
        return None
    if kind == "wrong":
        return -1
    up = {"recall": 0.35, "fix": 0.6, "ack": 0.15, "other": 0.1}[kind]
    r = rng.random()
    if r < up:
        return 1
    if r < up + 0.05:
        return 0  # rated, then withdrawn
    if kind == "other" and last and r < up + 0.15:
        return -1
    return None


def _encode(turns: list[Turn], newer: bool, rng: random.Random) -> str:
    if not newer:
        return json.dumps([[role, content] for role, content, _, _ in turns], ensure_ascii=False)
    out = []
    for role, content, extra, _ in turns:
        if role == "user" and rng.random() < 0.3:
            content = f"{content} /no_think"
        out.append({"role": role, "content": content, **extra})
    return json.dumps(out, ensure_ascii=False)


# Rows as the app should never write them, but real databases have: the export must skip and count them.
_MALFORMED: tuple[str | None, ...] = (
    '[["user", "What is my cat called?"], ["assistant", "Your cat is ca',
    '{"role": "user", "content": "Hello?"}',
    '[{"role": "narrator", "content": "Dmitry walks in."}, {"role": "user", "content": "Hi"},'
    ' {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Bye"}]',
    '[["user", 42], ["assistant", "Forty-two?"], ["user", "Yes"], ["assistant", "OK."]]',
    json.dumps([  # only the plumbing of actions: no real messages
        ["user", "[Action result: timer finished]"],
        ["assistant", '```action\n{"type": "timer", "minutes": 5}\n```'],
        ["user", "[Action result: timer set for 5 minutes]"],
        ["assistant", '```action\n{"type": "notify", "text": "Tea is ready"}\n```'],
    ]),
)


@dataclass
class _Rows:
    conversations: list[tuple[Any, ...]]
    feedback: list[tuple[Any, ...]]
    # (conversation id, message index) of unrated replies a user could rate on another device
    unrated: list[tuple[int, int, str]]
    proactive: dict[str, int]
    long: int = 0
    kinds: dict[tuple[int, int], str | None] = field(default_factory=dict)
    end: datetime = START


def _stamp(t: datetime) -> str:
    """updated_at as the app's triggers write it (local time, milliseconds)."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _rows(n: int, seed: int) -> _Rows:
    rng = random.Random(seed)
    order = list(FACTS)

    def fact_cycle() -> Iterator[Fact]:
        while True:  # every fact as often as the others, in a seeded order
            rng.shuffle(order)
            yield from order

    facts = fact_cycle()
    malformed_at = {(i + 1) * n // (len(_MALFORMED) + 1): raw for i, raw in enumerate(_MALFORMED)}
    out = _Rows([], [], [], {"opening": 0, "flagged": 0})
    when = START
    first_newer = int(n * PAIR_ERA) + 1
    for cid in range(1, n + 1):
        when += timedelta(hours=rng.randint(6, 20), minutes=rng.randint(0, 59))
        ended = when + timedelta(minutes=rng.randint(1, 15))
        newer = cid > n * PAIR_ERA
        p = cid - first_newer - sum(first_newer <= m < cid for m in malformed_at)  # among well-formed newer ones
        if cid in malformed_at:
            raw = malformed_at[cid]
            out.conversations.append((cid, when.isoformat(), ended.isoformat(), None, 4, raw, _stamp(ended)))
            continue
        turns = _conversation(rng, facts, newer, cid)
        if newer:
            if p % PROACTIVE_OPENING_EVERY == PROACTIVE_OPENING_AT:
                turns = _proactive_opening(turns, p)
                out.proactive["opening"] += 1
            if p % PROACTIVE_FLAGGED_EVERY == PROACTIVE_FLAGGED_AT:
                turns = _flagged_after_wrong(turns, p)
                out.proactive["flagged"] += 1
            if p % LONG_EVERY == LONG_AT:
                turns = _quiz(turns)
                out.long += 1
        out.conversations.append(
            (cid, when.isoformat(), ended.isoformat(), _summary(turns), len(turns), _encode(turns, newer, rng), _stamp(ended))
        )
        exported = int(cid <= n * EXPORTED_ERA)
        for index, (role, _, _, kind) in enumerate(turns):
            out.kinds[(cid, index)] = kind
            if kind in ("proactive", "proactive_up"):
                rating = 1 if kind == "proactive_up" else None
            else:
                rating = _rating(rng, kind, index == len(turns) - 1)
            rated_at = when + timedelta(seconds=30 * (index + 1))
            if rating is not None:
                out.feedback.append((cid, index, rating, rated_at.isoformat(), exported, _stamp(rated_at)))
            elif role == "assistant" and kind in ("recall", "ack", "fix"):
                out.unrated.append((cid, index, _stamp(ended + timedelta(days=2))))
    _add_stray_feedback(out.conversations, out.feedback)
    out.end = when
    return out


def _summary(turns: list[Turn]) -> str:
    first = next((c for role, c, _, _ in turns if role == "user" and c), "")
    return first[:60]


def _add_stray_feedback(conversations: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]) -> None:
    """Feedback the export must skip: an index past the end, and a rating on a user message (index 0)."""
    def opens_with_user(raw: str) -> bool:
        first = json.loads(raw)[0]
        return (first[0] if isinstance(first, list) else first["role"]) == "user"

    # Malformed rows have no summary; one the app opened has an assistant turn at index 0.
    well_formed = [row for row in conversations if row[3] is not None and opens_with_user(row[5])]
    for (cid, started, *_), index in ((well_formed[-1], 57), (well_formed[-2], 0)):
        feedback.append((cid, index, 1, started, 0, _stamp(datetime.fromisoformat(started))))


def _later_edits(rows: _Rows) -> Callable[[sqlite3.Connection], tuple[int, int, list[tuple[int, int]]]]:
    """What the app did after the rows were first written: ratings changed, the phone synced.

    A changed rating is the app's INSERT OR REPLACE (rate_message): the old row goes, a new one
    gets the next id, unexported.  The phone's owner sync then upserts its own rows by its own
    ids (sync_owner.rs), and these land in the gaps the re-ratings left.
    """
    picked: list[tuple[int, int, int, int, str]] = []  # (old id, conversation, index, new rating, when)
    for before, after in RERATES:
        for fid, (cid, index, rating, created, exported, _) in enumerate(rows.feedback[:-2], 1):  # not the strays
            if rating == before and rows.kinds.get((cid, index)) in ("recall", "other", "ack", "fix") and \
                    all(cid != c or index != i for _, c, i, _, _ in picked):
                # Older ratings (already exported) are the ones a user comes back to change.
                picked.append((fid, cid, index, after, created))
                break
    phone = list(reversed(rows.unrated))[: len(picked)]

    def edit(conn: sqlite3.Connection) -> tuple[int, int, list[tuple[int, int]]]:
        for n, (_, cid, index, after, _) in enumerate(picked, 1):
            later = rows.end + timedelta(hours=n)  # the user scrolled back to old chats lately
            conn.execute(
                "INSERT OR REPLACE INTO message_feedback (conversation_id, message_index, rating, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)", (cid, index, after, later.isoformat(), _stamp(later)),
            )
        for (gap, *_), (cid, index, stamp) in zip(picked, phone):
            conn.execute(
                "INSERT INTO message_feedback (id, conversation_id, message_index, rating, created_at, exported, updated_at)"
                " VALUES (?, ?, ?, 1, ?, 0, ?)", (gap, cid, index, stamp.replace("T", " ")[:19], stamp),
            )
        final = conn.execute("SELECT rating, COALESCE(exported, 0) FROM message_feedback").fetchall()
        return len(picked), min(len(picked), len(phone)), final

    return edit


def build_demo_db(path: Path, *, conversations: int = 90, seed: int = 0, force: bool = False) -> DemoResult:
    """Write the demo database at ``path`` and its system prompt and probe questions beside it."""
    if conversations < MIN_CONVERSATIONS:
        raise SourceError(f"a demo database needs at least {MIN_CONVERSATIONS} conversations")
    path = Path(path)
    prompt_path = path.parent / "system_prompt.txt"
    probe_path = path.parent / "probe.jsonl"
    if not force:
        for p in (path, prompt_path, probe_path):
            if p.exists():
                raise SourceError(f"{p} exists; pass --force to overwrite it")
    rows = _rows(conversations, seed)
    edits = _later_edits(rows)
    try:
        private_mkdirs(path.parent)
        changed = write_hanni_db(path, rows.conversations, rows.feedback, app_schema=True, journal_mode="wal", then=edits)
        atomic_write_text(prompt_path, SYSTEM_PROMPT + "\n")
        atomic_write_text(
            probe_path,
            "".join(
                json.dumps({"question": f.probe, "answer": f.answer, "fact": f.key}, ensure_ascii=False) + "\n"
                for f in FACTS
            ),
        )
    except OSError as e:
        raise SourceError(f"cannot write the demo database {path}: {e.strerror or e}") from None
    # Read back inside the build (a reader opened on the WAL file now would leave -wal/-shm beside it).
    rerated, synced, final = changed
    ratings = {"1": 0, "-1": 0, "0": 0}
    for rating, _ in final:
        ratings[str(rating)] += 1
    return DemoResult(
        path=path,
        system_prompt_path=prompt_path,
        probe_path=probe_path,
        conversations=len(rows.conversations),
        malformed=len(_MALFORMED),
        feedback=len(final),
        ratings=ratings,
        exported_feedback=sum(e for _, e in final),
        proactive=rows.proactive,
        long_conversations=rows.long,
        rerated=rerated,
        synced_into_gaps=synced,
    )


def write_hanni_db(
    path: Path,
    conversations: Iterable[tuple[Any, ...]],
    feedback: Iterable[tuple[Any, ...]],
    *,
    journal_mode: str | None = None,
    app_schema: bool = False,
    then: Callable[[sqlite3.Connection], Any] | None = None,
) -> Any:
    """Write a new Hanni database at ``path`` (replacing any), for the demo and for tests.

    ``conversations``: (id, started_at, ended_at, summary, message_count, messages[, updated_at])
    rows; ``feedback``: (conversation_id, message_index, rating, created_at, exported[,
    updated_at]) rows, whose ids follow their order.  ``app_schema``: the app's own DDL
    (sources/hanni/schema.py), else the bare columns the export reads (db.SCHEMA_SQL), which
    also takes rows the app's NOT NULLs refuse.  ``then(conn)`` runs last, in the same
    transaction (the app's later writes); its result is returned.  The file is built under a
    temp name and renamed into place.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, PRIVATE_FILE)
        conn = sqlite3.connect(tmp)
        try:
            if journal_mode:
                conn.execute(f"PRAGMA journal_mode = {journal_mode}")
            conn.executescript(APP_SCHEMA_SQL if app_schema else SCHEMA_SQL)
            conv_cols = ["id", "started_at", "ended_at", "summary", "message_count", "messages", "updated_at"]
            fb_cols = ["conversation_id", "message_index", "rating", "created_at", "exported", "updated_at"]
            for row in conversations:
                cols = conv_cols[: len(row)]
                conn.execute(f"INSERT INTO conversations ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", row)
            for row in feedback:
                cols = fb_cols[: len(row)]
                conn.execute(f"INSERT INTO message_feedback ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", row)
            result = then(conn) if then is not None else None
            conn.commit()
        finally:
            conn.close()
        # An old database's journal beside the new file would be replayed into it.
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, path)
        return result
    except BaseException:
        for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm", f"{tmp}-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise
