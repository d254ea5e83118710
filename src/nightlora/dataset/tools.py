"""The ``tools`` list an example needs when its messages call tools.

Hanni's database stores the calls but not the tool schemas, and chat templates that
render tool calls also expect the tools to be declared.  We declare the smallest schema
the calls justify: each function by name, its parameters being the argument keys seen
in the calls, typed by the JSON values seen (several types become a list of types).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from nightlora.dataset.messages import Message

_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: bool is an int in Python
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for py, name in _JSON_TYPES:
        if isinstance(value, py):
            return name
    return "string"


def _arguments(raw: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def infer_tools(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """One function declaration per tool name called in ``messages``, in order of first call."""
    params: dict[str, dict[str, list[str]]] = {}
    for msg in messages:
        for call in msg.get("tool_calls", ()):
            fn = call["function"]
            props = params.setdefault(fn["name"], {})
            for key, value in _arguments(fn["arguments"]).items():
                types = props.setdefault(key, [])
                t = _json_type(value)
                if t not in types:
                    types.append(t)
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "parameters": {
                    "type": "object",
                    "properties": {k: {"type": t[0] if len(t) == 1 else t} for k, t in props.items()},
                },
            },
        }
        for name, props in params.items()
    ]
