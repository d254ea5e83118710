"""Reading one stored conversation: both of Hanni's message formats, checked and normalized.

Older rows hold ``[role, content]`` pairs; newer rows hold OpenAI chat objects
(``role``, ``content`` that may be null, ``tool_calls``, ``tool_call_id``, ``name``).
Both become OpenAI chat dicts with only the keys chat templates know.  Text is never
altered, except that one trailing `` /no_think`` marker is removed as a suffix.
Anything unexpected raises ``BadConversation`` with a short reason, so the caller can
skip the row and count it.

Proactive messages (the app writing first, proactive.rs) are assistant turns that answer no
user message: a conversation that opens with one (the app's chat.js stores it as
``[Автономное сообщение Ханни]: …``), or one stored mid-conversation as
``{"role": "assistant", "content": …, "proactive": true}`` (spring builds), which the app
prefixes with the same marker once the user replies.  ``proactive_turns`` finds them.  What counts as a real or a learnable message, whatever the
source, is in dataset/messages.py.
"""

from __future__ import annotations

import json
from typing import Any

from nightlora.dataset.messages import ROLES, BadConversation, Message

NO_THINK = " /no_think"
PROACTIVE_MARKER = "[Автономное сообщение Ханни]:"


def parse_messages(raw: bytes | str | None) -> Any:
    """The ``messages`` column as JSON (bytes from ``CAST(messages AS BLOB)``, so bad UTF-8 is ours to catch)."""
    if raw is None:
        raise BadConversation("no_messages")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadConversation("bad_encoding") from None
    except (ValueError, RecursionError):
        raise BadConversation("bad_json") from None


def _text(value: Any, reason: str) -> str:
    if not isinstance(value, str):
        raise BadConversation(reason)
    # A JSON escape can smuggle in a lone surrogate, which no UTF-8 file can hold.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadConversation("bad_text") from None
    return value


def strip_no_think(text: str) -> str:
    return text[: -len(NO_THINK)] if text.endswith(NO_THINK) else text


def _tool_call(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise BadConversation("bad_tool_calls")
    fn = call.get("function")
    if not isinstance(fn, dict) or call.get("type", "function") != "function":
        raise BadConversation("bad_tool_calls")
    name = _text(fn.get("name"), "bad_tool_calls")
    args = fn.get("arguments")
    if isinstance(args, str):
        _text(args, "bad_tool_calls")
    elif isinstance(args, dict):
        _text(json.dumps(args, ensure_ascii=False), "bad_tool_calls")
    else:
        raise BadConversation("bad_tool_calls")
    out: dict[str, Any] = {}
    if call.get("id") is not None:
        out["id"] = _text(call["id"], "bad_tool_calls")
    out["type"] = "function"
    out["function"] = {"name": name, "arguments": args}
    return out


def _from_object(obj: dict[str, Any]) -> Message:
    role = obj.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise BadConversation("bad_role")
    content = obj.get("content")
    calls = obj.get("tool_calls")
    if (calls is not None and not isinstance(calls, list)) or (calls and role != "assistant"):
        raise BadConversation("bad_tool_calls")
    tool_calls = [_tool_call(c) for c in calls or ()]
    msg: Message = {"role": role}
    if content is None:
        # Only an assistant turn that calls tools may have no text (OpenAI format).  It is
        # written as "" because templates that concatenate content (SmolLM2's) fail on null.
        if not tool_calls:
            raise BadConversation("bad_content")
        msg["content"] = ""
    else:
        msg["content"] = strip_no_think(_text(content, "bad_content"))
    if tool_calls:
        msg["tool_calls"] = tool_calls
    if role == "tool" and "tool_call_id" in obj:
        msg["tool_call_id"] = _text(obj["tool_call_id"], "bad_tool_result")
    if obj.get("name") is not None:
        msg["name"] = _text(obj["name"], "bad_name")
    return msg


def _from_pair(pair: list[Any]) -> Message:
    if len(pair) != 2:
        raise BadConversation("bad_message")
    role, content = pair
    if not isinstance(role, str) or role not in ROLES or role == "tool":  # the pair format predates tools
        raise BadConversation("bad_role")
    return {"role": role, "content": strip_no_think(_text(content, "bad_content"))}


def normalize_messages(parsed: Any) -> list[Message]:
    """Every stored message, in order (indexes match ``message_feedback.message_index``)."""
    if not isinstance(parsed, list):
        raise BadConversation("not_a_list")
    out: list[Message] = []
    for item in parsed:
        if isinstance(item, dict):
            out.append(_from_object(item))
        elif isinstance(item, list):
            out.append(_from_pair(item))
        else:
            raise BadConversation("bad_message")
    return out


def proactive_turns(parsed: list[Any], messages: list[Message]) -> dict[int, str]:
    """Index -> why that assistant turn is proactive: ``proactive_opening`` (no user turn before
    it), ``proactive_flagged`` (stored with ``"proactive": true``), ``proactive_marker`` (the
    app's marker without the flag)."""
    out: dict[int, str] = {}
    user_seen = False
    for index, (item, msg) in enumerate(zip(parsed, messages)):
        role = msg["role"]
        if role == "user":
            user_seen = True
        elif role == "assistant":
            if not user_seen:
                out[index] = "proactive_opening"
            elif isinstance(item, dict) and item.get("proactive") is True:
                out[index] = "proactive_flagged"
            elif msg["content"].startswith(PROACTIVE_MARKER):
                out[index] = "proactive_marker"
    return out
