"""The Anthropic Messages API as a teacher, through the official SDK (``anthropic`` on PyPI).

The conversation goes over in the API's own shapes: the system prompt as ``system``, the
turns as user/assistant messages (consecutive turns of one role merged), tool calls as
``tool_use`` blocks and their results as ``tool_result`` blocks, with the tools declared.
The SDK's own retries are off (``max_retries=0``): teachers/ask.py retries 429 and 5xx for
every teacher alike.  ``base_url`` points the SDK elsewhere (a proxy, a local server).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from nightlora.errors import TeacherError
from nightlora.platform.net import is_loopback_url
from nightlora.teachers.anthropic_api.config import AnthropicTeacherConfig
from nightlora.teachers.base import TeacherReply, TeacherRequest, retry_after

DEFAULT_BASE_URL = "https://api.anthropic.com"


def _input(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError):
        return {"arguments": raw}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def to_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages (no system) -> Messages API turns."""
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        role, text = m.get("role"), m.get("content") or ""
        if role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": str(m.get("tool_call_id") or ""), "content": text}])
        elif role == "assistant":
            blocks = [{"type": "text", "text": text}] if text.strip() else []
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": str(call.get("id") or ""), "name": str(fn.get("name")),
                               "input": _input(fn.get("arguments"))})
            add("assistant", blocks)
        elif text.strip():
            add("user", [{"type": "text", "text": text}])
    return out


def to_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        fn = t.get("function") or {}
        out.append({"name": fn.get("name"), "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}})
    return out


class AnthropicTeacher:
    kind = "anthropic"

    def __init__(self, cfg: AnthropicTeacherConfig, environ: Mapping[str, str] | None = None):
        self.cfg = cfg
        self.model = cfg.model
        self.base_url = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.loopback = is_loopback_url(self.base_url)
        self.environ = os.environ if environ is None else environ
        self._client: Any = None

    def payload(self, request: TeacherRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.cfg.reply_max_tokens,
                                "system": request.system, "messages": to_messages(request.messages)}
        if request.tools:
            body["tools"] = to_tools(request.tools)
        if self.cfg.temperature is not None:
            body["temperature"] = self.cfg.temperature
        return {"url": f"{self.base_url}/v1/messages", "body": body}

    def _sdk(self) -> Any:
        if self._client is None:
            import anthropic  # only when this teacher is used: an optional dependency

            key = self.environ.get(self.cfg.api_key_env)
            if not key:
                raise TeacherError(f"teacher.api_key_env names ${self.cfg.api_key_env}, which is not set", "unavailable")
            http = anthropic.DefaultHttpxClient(trust_env=False) if self.loopback else None
            self._client = anthropic.Anthropic(api_key=key, base_url=self.base_url, max_retries=0,
                                               timeout=self.cfg.timeout_s, http_client=http)
        return self._client

    def send(self, payload: dict[str, Any]) -> TeacherReply:
        try:
            import anthropic
        except ImportError:
            raise TeacherError("the anthropic teacher needs the `anthropic` package (pip install 'nightlora[anthropic]')",
                               "unavailable") from None
        client = self._sdk()
        where = payload["url"]
        try:
            msg = client.messages.create(**payload["body"])
        except anthropic.APITimeoutError:
            raise TeacherError(f"{where} did not answer within {self.cfg.timeout_s:g} s", "timeout") from None
        except anthropic.APIConnectionError as e:
            raise TeacherError(f"cannot connect to {where}: {e}", "unavailable") from None
        except anthropic.RateLimitError as e:
            raise TeacherError(f"{where} is rate limiting (429)", "rate_limited", retry_after(e.response.headers)) from None
        except anthropic.APIStatusError as e:
            detail = f"{where} answered {e.status_code}: {' '.join(str(e.message).split())[:200]}"
            if e.status_code >= 500:
                raise TeacherError(detail, "server_error", retry_after(e.response.headers)) from None
            raise TeacherError(detail, "unavailable") from None
        except (anthropic.APIResponseValidationError, ValueError, TypeError) as e:
            raise TeacherError(f"not a Messages API answer: {e}", "garbage") from None
        return parse_message(msg)


def parse_message(msg: Any) -> TeacherReply:
    try:
        text = "".join(b.text for b in msg.content if getattr(b, "type", None) == "text").strip()
        usage = msg.usage
        tokens = (getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None))
    except (AttributeError, TypeError):
        raise TeacherError(f"not a Messages API answer: {str(msg)[:200]!r}", "garbage") from None
    return TeacherReply(text, *[t if isinstance(t, int) else None for t in tokens],
                        truncated=getattr(msg, "stop_reason", None) == "max_tokens")


def build(cfg: AnthropicTeacherConfig, *, runner: Any = None, environ: Mapping[str, str] | None = None) -> AnthropicTeacher:
    return AnthropicTeacher(cfg, environ)
