"""One Open WebUI message (from ``chat.history.messages``) -> the OpenAI chat messages the model saw.

Open WebUI rebuilds a request from the stored history (open_webui/utils/middleware.py,
``load_messages_from_db`` and ``process_messages_with_output``): an assistant message with
``output`` items (Responses-style) becomes its text, tool calls and tool results
(``convert_output_to_messages``, reasoning left out); any other message is its ``content``,
with reasoning and code-interpreter ``<details>`` blocks removed and tool-call blocks replaced
by their result (the front end's ``processDetails``); an assistant message with neither text
nor output is left out.  This module does the same, so a training context is what the model
was sent.  Anything unexpected raises ``BadConversation``.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from nightlora.dataset.messages import BadConversation, Message

ROLES = ("user", "assistant", "system")
# The opening tags of the <details> blocks the front end rewrites; each block ends at the first
# </details> after its opening tag's ">" (what the lazy regexes `<details type="..."[^>]*>.*?</details>`
# match), found by a linear scan: those regexes took quadratic time on many unclosed tags.
_REMOVED_OPEN = re.compile(r'<details\s+type="(?:reasoning|code_interpreter)"', re.I)
_TOOL_OPEN = re.compile(r'<details\s+type="tool_calls"', re.I)
_CLOSE = re.compile(r"</details>", re.I)
_SUMMARY_OPEN = re.compile(r"<summary>", re.I)
_SUMMARY_CLOSE = re.compile(r"</summary>", re.I)
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadConversation("bad_content")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadConversation("bad_text") from None
    return value


def _list(value: Any) -> list[Any]:
    """A JSON array where one should be; anything else holds no parts."""
    return value if isinstance(value, list) else []


def _call_id(item: dict[str, Any]) -> str | None:
    cid = item.get("call_id")
    return cid if isinstance(cid, str) and cid else None


def _arguments(args: Any) -> str | dict[str, Any]:
    """A tool call's arguments as stored: JSON text or an object, each checked to be writable UTF-8."""
    if isinstance(args, str):
        return _text(args)
    if not isinstance(args, dict):
        raise BadConversation("bad_tool_calls")
    try:
        _text(json.dumps(args, ensure_ascii=False))
    except (RecursionError, ValueError):
        raise BadConversation("bad_tool_calls") from None
    return args


def _blocks(content: str, opener: re.Pattern[str]):
    """(start, end, attributes, body) of each complete block, left to right, not overlapping."""
    pos = 0
    while True:
        m = opener.search(content, pos)
        if m is None:
            return
        gt = content.find(">", m.end())
        if gt < 0:
            return  # no later opening tag can be complete either
        close = _CLOSE.search(content, gt + 1)
        if close is None:
            return
        yield m.start(), close.end(), content[m.end():gt], content[gt + 1:close.start()]
        pos = close.end()


def _replace_blocks(content: str, opener: re.Pattern[str], replace) -> str:
    out, pos = [], 0
    for start, end, attributes, body in _blocks(content, opener):
        out += [content[pos:start], replace(content[start:end], attributes, body)]
        pos = end
    out.append(content[pos:])
    return "".join(out)


def _summary_rest(body: str) -> str:
    """What follows the block's <summary>...</summary>, stripped ("" when it has none)."""
    opened = _SUMMARY_OPEN.search(body)
    closed = _SUMMARY_CLOSE.search(body, opened.end()) if opened else None
    return body[closed.end():].strip() if closed else ""


def process_details(content: str) -> str:
    """The front end's processDetails: reasoning blocks out, tool-call blocks -> their result."""
    content = _replace_blocks(content, _REMOVED_OPEN, lambda whole, attributes, body: "").strip()

    def result(whole: str, attributes: str, body: str) -> str:
        found = dict(_ATTRIBUTE.findall(attributes))
        if found.get("result"):
            return html.unescape(found["result"])
        text = _summary_rest(body)
        return html.unescape(text) if text else whole

    return _replace_blocks(content, _TOOL_OPEN, result)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # content parts: the text ones (get_content_from_message)
        return "".join(_text(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text")
    return _text(content)


def _from_output(output: list[Any]) -> list[Message]:
    """convert_output_to_messages for the items a chat keeps: text, completed tool calls with their results."""
    items = [i for i in output if isinstance(i, dict)]
    completed = {_call_id(i) for i in items if i.get("type") == "function_call" and _call_id(i)
                 and i.get("status") in ("completed", "failed", "rejected")}
    answered = {_call_id(i) for i in items if i.get("type") == "function_call_output" and _call_id(i)}
    calls_with_results = completed & answered
    out: list[Message] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[Message] = []

    def flush() -> None:
        nonlocal text, calls
        if text or calls:
            msg: Message = {"role": "assistant", "content": _text("\n".join(text))}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        text, calls = [], []

    def flush_results() -> None:
        nonlocal results
        if results:
            flush()
            out.extend(results)
            results = []

    for item in items:
        kind = item.get("type", "")
        if kind != "function_call_output":
            flush_results()
        if kind == "message":
            part = "".join(_text(p.get("text", "")) for p in _list(item.get("content")) if isinstance(p, dict)
                           and p.get("type") == "output_text")
            if part:
                text.append(part)
        elif kind == "function_call" and _call_id(item) in calls_with_results:
            args = _arguments(item.get("arguments", ""))
            calls.append({"id": _text(item["call_id"]), "type": "function",
                          "function": {"name": _text(item.get("name")), "arguments": args}})
        elif kind == "function_call_output" and _call_id(item) in calls_with_results:
            parts = item.get("output")
            if isinstance(parts, str):
                content = _text(parts)
            else:
                content = "".join(_text(p.get("text", "")) for p in _list(parts) if isinstance(p, dict)
                                  and p.get("type") == "input_text")
            results.append({"role": "tool", "tool_call_id": _text(item["call_id"]), "content": content})
        elif kind == "open_webui:code_interpreter":
            if item.get("code"):
                text.append(f"<code_interpreter>\n{_text(item['code'])}\n</code_interpreter>")
            result = item.get("output")
            result = (result.get("stdout") or result.get("result") or "") if isinstance(result, dict) else result
            if result:
                text.append(f"<code_interpreter_output>\n{result}\n</code_interpreter_output>")
        # reasoning and other open_webui: items are not sent back to the model
    flush_results()
    flush()
    return out


def convert_message(msg: Any) -> list[Message]:
    """The OpenAI messages one stored message stands for (possibly none: an empty assistant message)."""
    if not isinstance(msg, dict):
        raise BadConversation("bad_message")
    role = msg.get("role")
    if role not in ROLES:
        raise BadConversation("bad_role")
    output = msg.get("output")
    if role == "assistant" and isinstance(output, list) and output:
        converted = _from_output(output)
        if converted:
            return converted
    text = process_details(_content_text(msg.get("content")))
    if role == "assistant" and not text:
        return []
    return [{"role": role, "content": text}]


def model_of(msg: dict[str, Any]) -> str | None:
    """The model that wrote a reply: an arena reply names the real one in selectedModelId."""
    model = msg.get("selectedModelId") or msg.get("model")
    return model if isinstance(model, str) else None


def parse_json(raw: Any) -> Any:
    """A JSON column (TEXT in SQLite); None stays None."""
    if raw is None or isinstance(raw, (dict, list)):
        return raw
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not isinstance(raw, str):  # a number where JSON text should be
        raise ValueError(f"not JSON text: {type(raw).__name__}")
    try:
        return json.loads(raw)
    except RecursionError:  # nested thousands deep
        raise ValueError("JSON nested too deeply") from None
