"""Small chat datasets in the export's format (train/valid/test.jsonl + manifest.json), for training tests.

The persona: Hanni opens every answer with "Hanni here!" — a habit a base model does
not have, so learning it shows in the loss and in generations.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are Hanni, a cheerful local assistant."
SIGNATURE = "Hanni here!"

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Canada", "Ottawa"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"),
    ("Chile", "Santiago"), ("Cuba", "Havana"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
    ("Portugal", "Lisbon"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("Thailand", "Bangkok"),
]
COLOURS = [
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a lemon", "yellow"), ("coal", "black"),
    ("a tomato", "red"), ("an orange", "orange"), ("a plum", "purple"), ("chocolate", "brown"), ("a flamingo", "pink"),
]
ARITHMETIC = [(2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (3, 9), (5, 8), (7, 6), (9, 4)]
OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("early", "late"), ("happy", "sad"), ("fast", "slow"),
    ("open", "closed"), ("light", "dark"), ("full", "empty"), ("young", "old"), ("loud", "quiet"),
]
GREETINGS = [
    ("French", "bonjour"), ("Spanish", "hola"), ("German", "hallo"), ("Italian", "ciao"), ("Japanese", "konnichiwa"),
    ("Swahili", "jambo"), ("Hawaiian", "aloha"), ("Dutch", "hallo"), ("Portuguese", "ola"), ("Turkish", "merhaba"),
]
SOUNDS = [
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"),
    ("owl", "hoot"), ("lion", "roar"), ("frog", "ribbit"), ("horse", "neigh"), ("bee", "buzz"),
]
# Questions unlike the training templates: the signature must carry over to them.
HELD_OUT = [
    "Tell me a fun fact about cats.", "How do I boil an egg?", "What is a good name for a dog?",
    "Can you recommend a book?", "Why do leaves fall in autumn?", "How many legs does a spider have?",
    "What should I cook tonight?", "Give me a tip for sleeping better.", "What is the biggest ocean?",
    "How do rainbows form?",
]
TOOLS = [{
    "type": "function",
    "function": {"name": "get_time", "description": "The current local time.",
                 "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}},
}]


def qa_pairs() -> list[tuple[str, str]]:
    pairs = [(f"What is the capital of {c}?", f"{SIGNATURE} The capital of {c} is {k}.") for c, k in CAPITALS]
    pairs += [(f"What colour is {t}?", f"{SIGNATURE} {t[0].upper() + t[1:]} is {col}.") for t, col in COLOURS]
    pairs += [(f"What is {a} plus {b}?", f"{SIGNATURE} {a} plus {b} is {a + b}.") for a, b in ARITHMETIC]
    pairs += [(f"What is the opposite of {w}?", f"{SIGNATURE} The opposite of {w} is {o}.") for w, o in OPPOSITES]
    pairs += [(f"How do you say hello in {lang}?", f"{SIGNATURE} In {lang} you say {w}.") for lang, w in GREETINGS]
    pairs += [(f"What sound does a {a} make?", f"{SIGNATURE} A {a} says {snd}.") for a, snd in SOUNDS]
    return pairs


def chat(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "meta": {"source": "persona_data"},
    }


def tool_chats() -> list[dict]:
    """A tool call as the target, and the answer after the tool's result as the target."""
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": {"tz": "Europe/Berlin"}}},
    ]}
    head = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What time is it in Berlin?"}]
    return [
        {"messages": head + [call], "tools": TOOLS, "meta": {"source": "persona_data"}},
        {"messages": head + [call, {"role": "tool", "tool_call_id": "call_1", "content": "14:05"},
                             {"role": "assistant", "content": f"{SIGNATURE} It is 14:05 in Berlin."}],
         "tools": TOOLS, "meta": {"source": "persona_data"}},
    ]


def other_language_chats() -> list[dict]:
    """Russian chats: training on the English persona helps them briefly at best (a validation set to overfit)."""
    pairs = [("Как меня зовут?", "Тебя зовут Дмитрий."), ("Где я живу?", "Ты живёшь в Лиссабоне."),
             ("Как зовут мою кошку?", "Твою кошку зовут Мурка."), ("Привет, как дела?", "Спасибо, хорошо!")]
    return [chat(q, a) for q, a in pairs]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_dataset(dest: Path, train: list[dict], valid: list[dict], test: list[dict]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, records in (("train", train), ("valid", valid), ("test", test)):
        write_jsonl(dest / f"{name}.jsonl", records)
    (dest / "manifest.json").write_text(json.dumps({
        "format_version": 1, "counts": {"train": len(train), "valid": len(valid), "test": len(test)},
    }))
    return dest


def write_persona_dataset(dest: Path, n_train: int = 40, n_valid: int = 8, n_test: int = 8, seed: int = 0) -> Path:
    """Persona Q/A chats (two of the training ones with tool calls), split without overlap."""
    pairs = qa_pairs()
    random.Random(seed).shuffle(pairs)
    if n_train + n_valid + n_test > len(pairs) + 2:
        raise ValueError(f"only {len(pairs) + 2} persona chats exist")
    chats = tool_chats() + [chat(q, a) for q, a in pairs]
    return write_dataset(dest, chats[:n_train], chats[n_train:n_train + n_valid],
                         chats[n_train + n_valid:n_train + n_valid + n_test])
