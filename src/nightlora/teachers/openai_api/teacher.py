"""Any OpenAI-compatible chat endpoint as a teacher: OpenAI, vLLM, a local `mlx_lm server`.

POST {base_url}/chat/completions with the assistant's system prompt first, then the
conversation as it was (tool calls and results included, with the tools declared): the
teacher sees exactly what the assistant saw, and answers as its next turn.

httpx rather than the ``openai`` SDK: one endpoint and one JSON shape, httpx is already
how nightlora talks HTTP (platform/openai_client.py), and the retry policy stays ours
(teachers/ask.py) instead of being shared with an SDK's own.  The key is read from the
environment variable ``api_key_env`` names at send time, never stored in the config.
A loopback base_url never goes through a proxy from the environment.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import httpx

from nightlora.errors import TeacherError
from nightlora.platform.net import is_loopback_url
from nightlora.teachers.base import TeacherReply, TeacherRequest, retry_after
from nightlora.teachers.openai_api.config import OpenAITeacherConfig


def _short(body: str) -> str:
    return " ".join(body.split())[:200]


class OpenAITeacher:
    kind = "openai"

    def __init__(self, cfg: OpenAITeacherConfig, environ: Mapping[str, str] | None = None):
        self.cfg = cfg
        self.model = cfg.model
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.loopback = is_loopback_url(cfg.base_url)
        self.environ = os.environ if environ is None else environ
        self._http = httpx.Client(trust_env=not self.loopback, timeout=cfg.timeout_s)

    def payload(self, request: TeacherRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": request.system}, *request.messages],
            "max_tokens": self.cfg.reply_max_tokens,
        }
        if request.tools:
            body["tools"] = list(request.tools)
        if self.cfg.temperature is not None:
            body["temperature"] = self.cfg.temperature
        return {"url": self.url, "body": body}

    def _headers(self) -> dict[str, str]:
        env = self.cfg.api_key_env
        if not env:
            return {}
        key = self.environ.get(env)
        if not key:
            raise TeacherError(f"teacher.api_key_env names ${env}, which is not set", "unavailable")
        return {"Authorization": f"Bearer {key}"}

    def send(self, payload: dict[str, Any]) -> TeacherReply:
        headers = self._headers()
        try:
            r = self._http.post(payload["url"], json=payload["body"], headers=headers)
        except httpx.TimeoutException:
            raise TeacherError(f"{self.url} did not answer within {self.cfg.timeout_s:g} s", "timeout") from None
        except httpx.ConnectError as e:
            raise TeacherError(f"cannot connect to {self.url}: {e}", "unavailable") from None
        except httpx.TransportError as e:  # the connection broke mid-answer
            raise TeacherError(f"{self.url}: {type(e).__name__}: {e}", "server_error") from None
        if r.status_code == 429:
            raise TeacherError(f"{self.url} is rate limiting (429)", "rate_limited", retry_after(r.headers))
        if r.status_code >= 500:
            raise TeacherError(f"{self.url} answered {r.status_code}: {_short(r.text)}", "server_error",
                               retry_after(r.headers))
        if r.status_code != 200:
            raise TeacherError(f"{self.url} answered {r.status_code}: {_short(r.text)}", "unavailable")
        return parse_completion(r)


def parse_completion(r: httpx.Response) -> TeacherReply:
    try:
        data = r.json()
        choice = data["choices"][0]
        text = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise TeacherError(f"not a chat completion: {_short(r.text)!r}", "garbage") from None
    if text is None:  # a reply that only calls tools, or says nothing: an answer, not a usable one
        text = ""
    if not isinstance(text, str):
        raise TeacherError(f"not a chat completion: {_short(r.text)!r}", "garbage")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = [usage.get(k) if isinstance(usage.get(k), int) else None for k in ("prompt_tokens", "completion_tokens")]
    return TeacherReply(text.strip(), tokens[0], tokens[1], truncated=choice.get("finish_reason") == "length")


def build(cfg: OpenAITeacherConfig, *, runner: Any = None, environ: Mapping[str, str] | None = None) -> OpenAITeacher:
    return OpenAITeacher(cfg, environ)
