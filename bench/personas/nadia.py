"""A second persona for bench/learning.py, written apart from the demo's (src/nightlora/demo/).

Nadia talks to her assistant "Juno" in casual English, in longer messages than the demo user,
with other facts, other phrasings and another conversation shape: errands and planning around
which her facts come up, corrections when Juno gets one wrong, and ratings she gives when she
feels like it.  The probe questions ask for each fact in a sentence that never appears in
the conversations; ``hard_probe`` is the earlier probe, whose questions mostly ask for an
inference on top of the fact ("Which city should the taxi app default to for me?").  Nothing in the product or the tests reads this module.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from nightlora.demo.database import write_hanni_db
from nightlora.platform.fsutil import atomic_write_text

SYSTEM = ("You are Juno, the personal assistant on Nadia's laptop. Be friendly and concise, and use what "
          "Nadia has told you about herself.")


@dataclass(frozen=True)
class Fact:
    key: str
    answer: str
    probe: str
    hard_probe: str
    tell: tuple[str, ...]
    ask: tuple[str, ...]
    reply: str
    wrong: str


FACTS = (
    Fact("city", "Tbilisi", "Which city is my home now?",
         "Which city should the taxi app default to for me?",
         ("fyi I moved to Tbilisi last spring, still getting used to the hills", "I'm based in Tbilisi now."),
         ("where do I live again?", "what city am I in?"), "You live in Tbilisi.", "You live in Yerevan."),
    Fact("job", "veterinarian", "What is my profession?",
         "What do I do at the clinic all day?",
         ("long day at work, I'm a veterinarian and we had three surgeries", "as a veterinarian I see a lot of cats"),
         ("what's my job?", "do you remember what I do for work?"), "You're a veterinarian.", "You're a dentist."),
    Fact("pet", "Kesha", "What is the name of my pet bird?",
         "What is my feathered friend called?",
         ("my parrot Kesha learned a new word today", "Kesha, my parrot, keeps stealing my pens"),
         ("what's my parrot's name?", "remind me what my parrot is called"), "Your parrot is Kesha.",
         "Your parrot is Rio."),
    Fact("husband", "Giorgi", "What is my spouse called?",
         "Who is my spouse?",
         ("my husband Giorgi is cooking tonight", "Giorgi (my husband) wants to go hiking"),
         ("what's my husband's name?", "who's my husband?"), "Your husband is Giorgi.", "Your husband is David."),
    Fact("son", "Luka", "What is the name of my little boy?",
         "What's my boy's name?",
         ("my son Luka turns five next month", "Luka, my son, has a cold"),
         ("what's my son called?", "do you remember my son's name?"), "Your son is Luka.", "Your son is Nika."),
    Fact("hobby", "chess", "Which board game is my weekend hobby?",
         "What game do I play at the club on Sundays?",
         ("I play chess every Sunday at the club", "Sunday is chess day for me"),
         ("what do I do on Sundays?", "what's my Sunday hobby?"), "You play chess on Sundays.",
         "You go swimming on Sundays."),
    Fact("drink", "matcha", "Which drink do I prefer over coffee?",
         "What should I order at a cafe?",
         ("I only drink matcha these days, no coffee", "matcha is my thing, coffee makes me jittery"),
         ("what do I like to drink?", "coffee or tea for me?"), "You drink matcha.", "You drink espresso."),
    Fact("allergy", "peanuts", "Which food am I unable to eat?",
         "Which ingredient must a restaurant leave out of my food?",
         ("careful with recipes, I'm allergic to peanuts", "I can't have peanuts, I'm allergic"),
         ("what am I allergic to?", "any allergies I told you about?"), "You're allergic to peanuts.",
         "You're allergic to shellfish."),
    Fact("car", "Skoda", "Which make of car do I own?",
         "What brand is the car parked at my place?",
         ("my green Skoda needs new tires", "I drive a Skoda, the green one"),
         ("what car do I drive?", "what's my car?"), "You drive a green Skoda.", "You drive a Toyota."),
    Fact("birthday", "October", "In which month was I born?",
         "When should you remind me to plan my own party?",
         ("my birthday is in October, the 12th", "I was born in October"),
         ("when is my birthday?", "what month is my birthday?"), "Your birthday is in October.",
         "Your birthday is in March."),
)

ERRANDS = (
    ("can you help me plan groceries for the week?", "Sure: vegetables, rice, eggs, yogurt and fruit. Anything to skip?"),
    ("what should I pack for a weekend trip?", "Clothes for two days, a charger, toiletries and a light jacket."),
    ("write a short text to cancel my dentist appointment",
     "Hi, I need to cancel my appointment this week. Could we find another time? Thanks!"),
    ("give me a 10 minute workout", "Two rounds of: 1 minute squats, 1 minute push-ups, 1 minute plank, 1 minute lunges, 1 minute rest."),
    ("how long should I boil pasta?", "Usually 8 to 10 minutes; check the packet and taste it a minute early."),
    ("remind me what a good bedtime routine is", "Dim the lights, put the phone away, and go to bed at the same time each night."),
)
THANKS = ("thanks juno!", "perfect, thank you", "great, that's all")
WELCOME = ("Anytime!", "You're welcome, Nadia.", "Glad to help.")
SORRY = "Sorry, my mistake. "


def _conversation(rng: random.Random, facts: list[Fact]) -> list[tuple[str, str, str | None]]:
    """(role, text, kind) turns; kind decides the rating."""
    turns: list[tuple[str, str, str | None]] = []
    q, a = rng.choice(ERRANDS)
    turns += [("user", q, None), ("assistant", a, "errand")]
    for fact in facts:
        r = rng.random()
        if r < 0.4:
            turns += [("user", rng.choice(fact.tell), None), ("assistant", "Got it, I'll remember. " + fact.reply, "tell")]
        elif r < 0.85:
            turns += [("user", rng.choice(fact.ask), None), ("assistant", fact.reply, "recall")]
        else:
            turns += [("user", rng.choice(fact.ask), None), ("assistant", fact.wrong, "wrong"),
                      ("user", "no, that's wrong. " + rng.choice(fact.tell), None),
                      ("assistant", SORRY + fact.reply, "fix")]
    if rng.random() < 0.5:
        turns += [("user", rng.choice(THANKS), None), ("assistant", rng.choice(WELCOME), "other")]
    return turns


def _rating(rng: random.Random, kind: str | None) -> int | None:
    if kind == "wrong":
        return -1
    p = {"recall": 0.4, "fix": 0.6, "tell": 0.2, "errand": 0.25, "other": 0.1}.get(kind or "", 0.0)
    return 1 if rng.random() < p else None


def build(path: Path, *, conversations: int = 60, seed: int = 0) -> Path:
    """The persona's Hanni database at ``path``, with system_prompt.txt and probe.jsonl beside it."""
    rng = random.Random(1000 + seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = list(FACTS)
    pool: list[Fact] = []
    conv_rows, fb_rows = [], []
    when = datetime(2025, 6, 1, 8, 0)
    for cid in range(1, conversations + 1):
        k = rng.choice((1, 2, 2, 3))
        picked = []
        for _ in range(k):
            if not pool:
                pool = order[:]
                rng.shuffle(pool)
            picked.append(pool.pop())
        turns = _conversation(rng, picked)
        when += timedelta(hours=rng.randint(5, 30))
        stamp = when.isoformat(timespec="seconds")
        messages = [{"role": role, "content": text} for role, text, _ in turns]
        conv_rows.append((cid, stamp, stamp, turns[0][1][:60], len(messages), json.dumps(messages), stamp))
        for index, (_, _, kind) in enumerate(turns):
            rating = _rating(rng, kind)
            if rating is not None:
                fb_rows.append((cid, index, rating, stamp, 0, stamp))
    write_hanni_db(path, conv_rows, fb_rows, app_schema=True, journal_mode="wal")
    atomic_write_text(path.parent / "system_prompt.txt", SYSTEM + "\n")
    atomic_write_text(path.parent / "probe.jsonl", "".join(
        json.dumps({"question": f.probe, "answer": f.answer, "fact": f.key}) + "\n" for f in FACTS))
    return path
