"""Asking the live assistant a question over its OpenAI-compatible HTTP API."""

from __future__ import annotations

import httpx

from nightlora.errors import HealthError


def ask(base_url: str, question: str, *, max_tokens: int = 24, timeout: float = 120.0,
        system: str | None = None) -> str:
    """One chat completion at temperature 0; the reply's text (raises HealthError on failure)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as http:
            r = http.post(base_url.rstrip("/") + "/v1/chat/completions", json=body)
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"] or "")
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise HealthError(f"asking {base_url} failed: {type(e).__name__}: {e}") from None
