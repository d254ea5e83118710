"""One conversation + its ratings -> training examples and preference pairs.  Pure: no I/O.

The messages come normalized from the source (dataset/messages.py); the rules below are
the same for every source.

Rules (docs/export.md explains why):

* Every assistant turn with text or tool calls that is not rated -1 is the target of one
  example: the system prompt and every turn before it as context, that turn last.
  User and tool messages are never targets.
* A turn rated -1 is never a target.  It becomes a preference record: its context as the
  prompt, it as the rejected reply, and as the chosen reply a 1-rated alternative that
  directly follows it, else the first assistant reply after the user's next message
  (unless that reply is rated -1 too), else none.
* Turns after a -1 turn are kept.  The rated-down reply stays in the context of later
  examples, because the user saw it and what follows (often a correction) refers to it;
  only targets are learned when the trainer masks the prompt.
* Stored ``system`` messages are dropped: the configured system prompt comes first instead.
  Their indexes still count, so feedback indexes keep pointing where the app meant.
* Rating 0 (withdrawn) counts as unrated.
* A turn the source marks context only (a proactive message, a reply by another model,
  a turn already exported on another path of the same chat) is never a target, a rejected
  or a chosen reply; an unprompted turn (one that answers no user message) is never the
  chosen reply of another.  Each such case is counted by reason (``cases``).
* ``history_window``: the app sends the model only its last N messages; each context is
  cut the same way (the system prompt still comes first).
* A rated-down turn with an explicit alternative (a regenerated sibling the user rated up)
  gets it as chosen (``chosen_from = "sibling"``) before the rules above are tried.
* An empty system prompt means the app sent none: examples then start with the conversation.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from nightlora.dataset.messages import Message, is_learnable, is_real
from nightlora.dataset.tools import infer_tools

MIN_REAL_MESSAGES = 2
RATINGS = (-1, 0, 1)


@dataclass
class ConversationExport:
    """What one conversation yields; ``skip_reason`` set means it yielded nothing."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    preferences: list[dict[str, Any]] = field(default_factory=list)
    skip_reason: str | None = None
    too_short: bool = False
    # One reason per feedback row that could not be applied (the conversation is still exported).
    feedback_problems: list[str] = field(default_factory=list)
    # Turns left out or handled by a special rule, by reason (the manifest's ``cases``).
    cases: Counter[str] = field(default_factory=Counter)


def _has_real_messages(messages: list[Message]) -> bool:
    real = 0
    for m in messages:
        real += is_real(m)
        if real >= MIN_REAL_MESSAGES:
            return True
    return False


def _valid_ratings(messages: list[Message], feedback: Mapping[Any, Any], problems: list[str]) -> dict[int, int]:
    ratings: dict[int, int] = {}
    for index, rating in feedback.items():
        if isinstance(rating, bool) or rating not in RATINGS:
            problems.append("feedback_bad_rating")
        elif isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(messages):
            problems.append("feedback_index_out_of_range")
        elif messages[index]["role"] != "assistant":
            problems.append("feedback_on_non_assistant")
        elif rating != 0:
            ratings[index] = rating
    return ratings


@dataclass(frozen=True)
class _Rules:
    """What the source says about some turns of one conversation (sources/base.py Conversation)."""

    context_only: Mapping[int, str]
    unprompted: Collection[int]
    alternatives: Mapping[int, tuple[Message, str | None]]
    message_ids: Mapping[int, str]
    cases: Counter[str]

    def barred(self, index: int) -> str | None:
        """Why this turn may not be a chosen reply (None: it may)."""
        return self.context_only.get(index) or ("unprompted" if index in self.unprompted else None)


def _chosen_for(messages: list[Message], ratings: dict[int, int], rejected: int,
                rules: _Rules) -> tuple[int | None, str | None]:
    """Index and kind of the reply preferred over the rejected one, if the conversation has one."""

    def allowed(i: int) -> bool:
        reason = rules.barred(i)
        if reason is not None:
            rules.cases[f"{reason}_not_chosen"] += 1
        return reason is None

    i = rejected + 1
    while i < len(messages) and messages[i]["role"] == "assistant":
        if ratings.get(i) == 1 and is_learnable(messages[i]) and allowed(i):
            return i, "alternative"
        i += 1
    while i < len(messages) and messages[i]["role"] != "user":
        i += 1
    for j in range(i + 1, len(messages)):
        msg = messages[j]
        if msg["role"] == "user":
            break
        if is_learnable(msg) and allowed(j):
            return (None, None) if ratings.get(j) == -1 else (j, "next_reply")
    return None, None


def _meta(conversation_id: int | str, index: int, rating: int | None, split: str, target: Message,
          rules: _Rules) -> dict[str, Any]:
    meta = {
        "conversation_id": conversation_id,
        "message_index": index,
        "rating": rating,
        "source": "feedback",
        "split": split,
        # Templates without tool support render such a target as an empty reply: a trainer may drop it.
        "tool_call": "tool_calls" in target,
    }
    if index in rules.message_ids:
        meta["message_id"] = rules.message_ids[index]
    return meta


def conversation_examples(
    conversation_id: int | str,
    messages: list[Message],
    feedback: Mapping[Any, Any],
    system_prompt: str,
    *,
    split: str = "train",
    min_messages: int = 0,
    context_only: Mapping[int, str] | None = None,
    unprompted: Collection[int] = frozenset(),
    alternatives: Mapping[int, tuple[Message, str | None]] | None = None,
    message_ids: Mapping[int, str] | None = None,
    history_window: int | None = None,
) -> ConversationExport:
    """Examples and preference records of one conversation (``feedback``: message_index -> rating)."""
    result = ConversationExport()
    if len(messages) < min_messages:
        result.too_short = True
        return result
    if not _has_real_messages(messages):
        result.skip_reason = "too_few_real_messages"
        return result

    ratings = _valid_ratings(messages, feedback, result.feedback_problems)
    rules = _Rules(context_only or {}, unprompted, alternatives or {}, message_ids or {}, result.cases)
    head: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    # Every non-system message so far, and its index: a window is the tail of it.
    history: list[Message] = []
    positions: list[int] = []
    calls_tools = False  # most conversations never call a tool: skip looking for calls then
    # The tools of the last example, shared by the examples after it until the next call:
    # rebuilding them for every example would cost time quadratic in the conversation.
    tools: list[dict[str, Any]] | None = None
    seen_user = False
    for index, msg in enumerate(messages):
        if msg["role"] == "system":
            continue
        if msg["role"] == "user":
            seen_user = True
        if "tool_calls" in msg:
            calls_tools, tools = True, None
        if is_learnable(msg):
            rating = ratings.get(index)
            reason = rules.context_only.get(index)
            if reason is None and not seen_user and index not in rules.unprompted:
                # Nothing asked for it (a path whose start is lost, a reply before any user turn):
                # learning it would teach the model to speak first. Proactive turns the source
                # chose to train on are in ``unprompted``.
                reason = "before_any_user_turn"
            if reason is not None:
                result.cases[reason] += 1
                if rating is not None:
                    result.cases[f"{reason}_rated"] += 1
            else:
                if index in rules.unprompted:
                    result.cases["unprompted_target"] += 1
                start = 0
                if history_window is not None:
                    start = bisect_left(positions, index - history_window)
                    if start:
                        result.cases["context_windowed"] += 1
                context = [*head, *history[start:]] if start else [*head, *history]
                if rating == -1:
                    result.preferences.append(_preference(conversation_id, messages, ratings, index, context, split, rules))
                else:
                    example: dict[str, Any] = {"messages": [*context, msg]}
                    if calls_tools:
                        if start:  # a window may have cut calls off: these tools are this example's own
                            if window_tools := infer_tools(example["messages"]):
                                example["tools"] = window_tools
                        else:
                            if tools is None:
                                tools = infer_tools(example["messages"])
                            example["tools"] = tools
                    example["meta"] = _meta(conversation_id, index, rating, split, msg, rules)
                    result.examples.append(example)
        history.append(msg)
        positions.append(index)
    return result


def _preference(
    conversation_id: int | str,
    messages: list[Message],
    ratings: dict[int, int],
    index: int,
    context: list[Message],
    split: str,
    rules: _Rules,
) -> dict[str, Any]:
    rejected = messages[index]
    chosen_id: str | None = None
    if index in rules.alternatives:
        alternative, chosen_id = rules.alternatives[index]
        chosen: list[Message] | None = [alternative]
        chosen_index, chosen_from = None, "sibling"
    else:
        chosen_index, chosen_from = _chosen_for(messages, ratings, index, rules)
        chosen = [messages[chosen_index]] if chosen_index is not None else None
        if chosen_index is not None:
            chosen_id = rules.message_ids.get(chosen_index)
    record: dict[str, Any] = {"prompt": list(context), "chosen": chosen, "rejected": [rejected]}
    if tools := infer_tools([*context, rejected, *(chosen or ())]):
        record["tools"] = tools
    meta = _meta(conversation_id, index, -1, split, rejected, rules)
    meta["chosen_index"] = chosen_index
    meta["chosen_from"] = chosen_from
    if chosen_id is not None:
        meta["chosen_message_id"] = chosen_id
    record["meta"] = meta
    return record
