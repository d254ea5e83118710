"""Chat messages as every source hands them to the dataset rules: OpenAI chat dicts.

A source turns its own storage into these (sources/hanni/messages.py reads Hanni's two
formats) and raises ``BadConversation`` for what it cannot read; the rules here say
which messages a person wrote or read and which ones hold something to learn.
"""

from __future__ import annotations

import re
from typing import Any

ROLES = frozenset({"system", "user", "assistant", "tool"})
# An assistant's fenced action block and the app's reply to it are the plumbing of an action,
# not conversation (Hanni wrote them before it had tool calls).
ACTION_BLOCK = re.compile(r"```action\b")
ACTION_RESULT = "[Action result:"

Message = dict[str, Any]


class BadConversation(ValueError):
    """A stored conversation that cannot be exported; ``reason`` names why (it keys the manifest)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _blank(text: str) -> bool:
    return not text or text.isspace()  # str.strip() would copy every message


def is_real(msg: Message) -> bool:
    """A user or assistant message a person wrote or read, not the plumbing of an action."""
    if msg["role"] not in ("user", "assistant"):
        return False
    text = msg["content"]
    if _blank(text) or ACTION_BLOCK.search(text):
        return False
    return not (msg["role"] == "user" and text.startswith(ACTION_RESULT))


def is_learnable(msg: Message) -> bool:
    """An assistant turn with something to learn: text or a tool call."""
    return msg["role"] == "assistant" and (not _blank(msg["content"]) or "tool_calls" in msg)
