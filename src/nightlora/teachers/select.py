"""Which contexts a teacher is asked about tonight.  Pure: records in, prompts out.

The candidates are the export's own records, so the teacher sees exactly the context the
training example has (the system prompt and every turn before the one to answer):

* ``negatives`` (the default): preference records, i.e. replies the user rated down; the
  teacher writes the reply that should have been given.
* ``agentic``: preference records and training examples, ranked by how many action words
  (remind, add, delete, напомни, добавь, ...) the user's message has, as the original did.
* ``all``: preference records, then training examples, in the export's order (rated first).

The user's message is cleaned as the original cleaned it: a message starting with
``[Action result`` is the app's plumbing, not a prompt; a ``[Current context]`` block before
the user's words is dropped (what the assistant saw is still sent: only the selection reads
the cleaned words); five characters or fewer is not a prompt.  Prompts whose cleaned words
start with the same 50 characters (case aside) are asked once.

Only contexts of conversations in the train split are asked: a teacher's answer about a
valid or test conversation would put that conversation's words into training.  A context
whose reply the user rated up, or that has a thumbs-up alternative, already has the user's
own answer; one whose target calls a tool is left to the user's data (a teacher's text
reply would teach the assistant not to call it).  Synthetic prompts (teachers/synthetic.py)
fill up to ``count`` only when the real ones run out.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from nightlora.dataset.messages import Message

ACTION_RESULT = "[Action result"
CURRENT_CONTEXT = "[Current context]"
KEY_CHARS = 50
MIN_CHARS = 5

# Words of a request to act: the original's (Russian stems) and their English counterparts.
ACTION_WORDS: tuple[str, ...] = (
    "запомни", "запиши", "добавь", "создай", "потратил", "купил", "удали", "заблокируй", "трекай",
    "таймер", "стоп", "настроение", "поел", "спал", "открой", "покажи", "сколько", "встреча",
    "событие", "напомни", "цель", "тренировка", "вес", "рецепт", "продукт", "аниме", "фильм", "книг",
    "расход", "доход", "бюджет", "заметк", "синхрон", "календар",
    "remember", "write down", "add", "create", "spent", "bought", "delete", "remove", "block", "track",
    "timer", "stop", "mood", "ate", "slept", "open", "show", "how much", "how many", "meeting", "event",
    "remind", "goal", "workout", "weight", "recipe", "note", "budget", "calendar", "schedule", "set ",
)

Origin = Literal["preference", "example", "synthetic"]


@dataclass(frozen=True)
class Prompt:
    origin: Origin
    text: str                           # the user's cleaned words (what dedupe and ranking read)
    system: str
    messages: tuple[Message, ...]       # the context after the system prompt; the last is the user's turn
    tools: tuple[dict[str, Any], ...] = ()
    conversation_id: Any = None
    message_index: int | None = None


@dataclass
class Selection:
    prompts: list[Prompt] = field(default_factory=list)
    looked_at: int = 0                  # candidate contexts read
    skipped: Counter = field(default_factory=Counter)  # reason -> contexts left out

    @property
    def synthetic(self) -> int:
        return sum(p.origin == "synthetic" for p in self.prompts)


def clean_user_text(text: Any) -> tuple[str | None, str | None]:
    """(the user's words, None) or (None, why this message is not a prompt)."""
    if not isinstance(text, str):
        return None, "not_text"
    clean = text.strip()
    if clean.startswith(ACTION_RESULT):
        return None, "action_result"
    if clean.startswith(CURRENT_CONTEXT):
        parts = clean.split("\n\n", 1)
        clean = parts[1].strip() if len(parts) > 1 else ""
    if len(clean) <= MIN_CHARS:
        return None, "too_short"
    return clean, None


def dedupe_key(text: str) -> str:
    return text[:KEY_CHARS].lower()


def action_score(text: str) -> int:
    lower = text.lower()
    return sum(1 for w in ACTION_WORDS if w in lower)


def _plain(msg: Message) -> Message:
    return {k: msg[k] for k in ("role", "content", "tool_calls", "tool_call_id", "name") if k in msg}


def _from_context(origin: Origin, context: list[Message], record: dict[str, Any]) -> tuple[Prompt | None, str | None]:
    if not context or context[0].get("role") != "system":
        return None, "no_system_prompt"
    if len(context) < 2 or context[-1].get("role") != "user":
        return None, "not_after_user"
    text, why = clean_user_text(context[-1].get("content"))
    if text is None:
        return None, why
    meta = record.get("meta") or {}
    return Prompt(origin, text, str(context[0].get("content") or ""), tuple(_plain(m) for m in context[1:]),
                  tuple(record.get("tools") or ()), meta.get("conversation_id"), meta.get("message_index")), None


USER_CHOSEN = ("alternative", "sibling")


def preference_prompt(record: dict[str, Any]) -> tuple[Prompt | None, str | None]:
    meta = record.get("meta") or {}
    if meta.get("split") != "train":
        return None, "held_out"
    # The user's own thumbs-up alternative answers it: a reply they rated up after re-asking,
    # or (Open WebUI) a regenerated sibling of the rated-down reply.
    if meta.get("chosen_from") in USER_CHOSEN:
        return None, "has_chosen"
    return _from_context("preference", list(record.get("prompt") or ()), record)


def example_prompt(record: dict[str, Any]) -> tuple[Prompt | None, str | None]:
    meta = record.get("meta") or {}
    if meta.get("source") != "feedback":
        return None, "not_from_feedback"
    if meta.get("split") != "train":
        return None, "held_out"
    if meta.get("rating") == 1:
        return None, "rated_up"
    if meta.get("tool_call"):
        return None, "tool_call_target"
    return _from_context("example", list(record.get("messages") or ())[:-1], record)


def select_prompts(
    preferences: Iterable[dict[str, Any]],
    examples: Iterable[dict[str, Any]],
    *,
    focus: str,
    count: int,
    system: str | None,
    synthetic: Sequence[str] = (),
) -> Selection:
    """The prompts to ask tonight, at most ``count``, best first."""
    sel = Selection()
    seen: set[str] = set()
    sources: list[tuple[Iterable[dict[str, Any]], Any]] = [(preferences, preference_prompt)]
    if focus in ("agentic", "all"):
        sources.append((examples, example_prompt))
    ranked: list[tuple[int, int, Prompt]] = []  # agentic: a heap of (score, -order) of the best ``count``
    order = 0
    for records, make in sources:
        if focus != "agentic" and len(sel.prompts) >= count:
            break
        for record in records:
            sel.looked_at += 1
            prompt, why = make(record)
            if prompt is None:
                sel.skipped[why] += 1
                continue
            key = dedupe_key(prompt.text)
            if key in seen:
                sel.skipped["duplicate"] += 1
                continue
            seen.add(key)
            order += 1
            if focus == "agentic":
                item = (action_score(prompt.text), -order, prompt)
                if len(ranked) < count:
                    heapq.heappush(ranked, item)  # type: ignore[misc]
                elif count and item[:2] > ranked[0][:2]:
                    heapq.heapreplace(ranked, item)  # type: ignore[misc]
                continue
            sel.prompts.append(prompt)
            if len(sel.prompts) >= count:
                break
    if focus == "agentic":
        sel.prompts = [p for _, _, p in sorted(ranked, key=lambda i: i[:2], reverse=True)]
    if system is not None:
        for text in synthetic:
            if len(sel.prompts) >= count:
                break
            if dedupe_key(text) in seen:
                continue
            seen.add(dedupe_key(text))
            sel.prompts.append(Prompt("synthetic", text, system, ({"role": "user", "content": text},)))
    return sel
