"""vLLM's HTTP API as the switch uses it: the model list, loading and unloading a LoRA, one chat.

Errors carry vLLM's own message (``{"error": {"message": ...}}``), e.g. a missing path or
a rank above ``--max-lora-rank``, so the night's log says what vLLM said.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from nightlora.errors import ServerError


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return " ".join(str(err["message"]).split())
        if body.get("detail"):
            return " ".join(str(body["detail"]).split())
    return " ".join(r.text.split())[:300] or f"HTTP {r.status_code}"


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None
    model: str | None   # the name the answer came from, as the server reports it


class VllmApi:
    def __init__(self, base_url: str, client: httpx.Client | None = None, timeout: float = 120.0):
        self.base = base_url.rstrip("/")
        # trust_env=False: a proxy from the environment must not stand between us and the server.
        self.http = client or httpx.Client(trust_env=False, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> httpx.Response:
        try:
            return self.http.post(self.base + path, json=payload, **({"timeout": timeout} if timeout else {}))
        except httpx.HTTPError as e:
            raise ServerError(f"vLLM at {self.base} did not answer {path}: {type(e).__name__}: {e}") from None

    def models(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        try:
            r = self.http.get(self.base + "/v1/models", timeout=timeout)
        except httpx.HTTPError as e:
            raise ServerError(f"vLLM at {self.base} did not answer /v1/models: {type(e).__name__}") from None
        if r.status_code != 200:
            raise ServerError(f"vLLM at {self.base} answered /v1/models with {r.status_code}: {_message(r)}")
        data = r.json().get("data") if isinstance(r.json(), dict) else None
        return [d for d in data or [] if isinstance(d, dict)]

    def base_model(self) -> str:
        """vLLM's name for its base model: the first listed model that is no adapter."""
        for m in self.models():
            if not m.get("parent"):
                return str(m["id"])
        raise ServerError(f"vLLM at {self.base} lists no base model")

    def loras(self) -> list[str]:
        return [str(m["id"]) for m in self.models() if m.get("parent")]

    def load(self, name: str, path: str) -> None:
        r = self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if r.status_code != 200:
            raise ServerError(f"vLLM did not load {name} from {path}: {_message(r)}")

    def unload(self, name: str) -> None:
        r = self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if r.status_code not in (200, 404):  # 404: not loaded, which is what we wanted
            raise ServerError(f"vLLM did not unload {name}: {_message(r)}")

    def chat(self, model: str, prompt: str, max_tokens: int, timeout: float = 60.0) -> Reply:
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": max_tokens, "temperature": 0, "stream": False}
        r = self._post("/v1/chat/completions", payload, timeout=timeout)
        if r.status_code != 200:
            raise ServerError(f"chat completion for {model} answered {r.status_code}: {_message(r)}")
        body = r.json()
        try:
            choice = body["choices"][0]
            return Reply(str(choice["message"]["content"] or ""), choice.get("finish_reason"), body.get("model"))
        except (TypeError, KeyError, IndexError):
            raise ServerError(f"chat completion for {model} answered no choices: {r.text[:200]}") from None
