"""A conversation as plain text, for a teacher that takes one prompt (the `claude` CLI)."""

from __future__ import annotations

import json

from nightlora.teachers.base import TeacherRequest

INSTRUCTIONS = (
    "You are helping train a local AI assistant. Write the reply the assistant should give to the last "
    "user message of the conversation below: in its voice, following its system prompt, in the language "
    "the user writes in. If the request needs an action, include it the way the assistant's system "
    "prompt says actions are written."
)


def _arguments(raw: object) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)


def transcript(request: TeacherRequest) -> str:
    lines = []
    for m in request.messages:
        role, content = m.get("role"), m.get("content") or ""
        if role == "user":
            lines.append(f"User: {content}")
        elif role == "assistant":
            if content:
                lines.append(f"Assistant: {content}")
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                lines.append(f"Assistant called the tool {fn.get('name')} with {_arguments(fn.get('arguments'))}")
        elif role == "tool":
            name = f" ({m['name']})" if m.get("name") else ""
            lines.append(f"Tool result{name}: {content}")
    return "\n\n".join(lines)


def single_prompt(request: TeacherRequest) -> str:
    return (
        f"{INSTRUCTIONS}\n\n"
        f"The assistant's system prompt:\n{request.system}\n\n"
        f"The conversation so far:\n{transcript(request)}\n\n"
        "Output only the assistant's reply, nothing else."
    )
