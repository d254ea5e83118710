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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

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


def _chosen_for(messages: list[Message], ratings: dict[int, int], rejected: int) -> tuple[int | None, str | None]:
    """Index and kind of the reply preferred over the rejected one, if the conversation has one."""
    i = rejected + 1
    while i < len(messages) and messages[i]["role"] == "assistant":
        if ratings.get(i) == 1 and is_learnable(messages[i]):
            return i, "alternative"
        i += 1
    while i < len(messages) and messages[i]["role"] != "user":
        i += 1
    for j in range(i + 1, len(messages)):
        msg = messages[j]
        if msg["role"] == "user":
            break
        if is_learnable(msg):
            return (None, None) if ratings.get(j) == -1 else (j, "next_reply")
    return None, None


def _meta(conversation_id: int | str, index: int, rating: int | None, split: str, target: Message) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "message_index": index,
        "rating": rating,
        "source": "feedback",
        "split": split,
        # Templates without tool support render such a target as an empty reply: a trainer may drop it.
        "tool_call": "tool_calls" in target,
    }


def conversation_examples(
    conversation_id: int | str,
    messages: list[Message],
    feedback: Mapping[Any, Any],
    system_prompt: str,
    *,
    split: str = "train",
    min_messages: int = 0,
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
    system: Message = {"role": "system", "content": system_prompt}
    context: list[Message] = [system]
    calls_tools = False  # most conversations never call a tool: skip looking for calls then
    # The tools of the last example, shared by the examples after it until the next call:
    # rebuilding them for every example would cost time quadratic in the conversation.
    tools: list[dict[str, Any]] | None = None
    for index, msg in enumerate(messages):
        if msg["role"] == "system":
            continue
        if "tool_calls" in msg:
            calls_tools, tools = True, None
        if is_learnable(msg):
            rating = ratings.get(index)
            if rating == -1:
                result.preferences.append(_preference(conversation_id, messages, ratings, index, context, split))
            else:
                example: dict[str, Any] = {"messages": [*context, msg]}
                if calls_tools:
                    if tools is None:
                        tools = infer_tools(example["messages"])
                    example["tools"] = tools
                example["meta"] = _meta(conversation_id, index, rating, split, msg)
                result.examples.append(example)
        context.append(msg)
    return result


def _preference(
    conversation_id: int | str,
    messages: list[Message],
    ratings: dict[int, int],
    index: int,
    context: list[Message],
    split: str,
) -> dict[str, Any]:
    rejected = messages[index]
    chosen_index, chosen_from = _chosen_for(messages, ratings, index)
    chosen = [messages[chosen_index]] if chosen_index is not None else None
    record: dict[str, Any] = {"prompt": list(context), "chosen": chosen, "rejected": [rejected]}
    if tools := infer_tools([*context, rejected, *(chosen or ())]):
        record["tools"] = tools
    meta = _meta(conversation_id, index, -1, split, rejected)
    meta["chosen_index"] = chosen_index
    meta["chosen_from"] = chosen_from
    record["meta"] = meta
    return record
