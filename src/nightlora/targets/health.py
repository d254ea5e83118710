"""Is the assistant answering? Poll the server until it is ready, then ask it one real question.

Ready: ``GET /health`` says ``{"status": "ok"}`` (mlx_lm), or ``GET /v1/models``
answers a JSON model list.  Neither is proof on its own: mlx_lm answers
``/v1/models`` with 200 and an empty body when the Hugging Face cache folder is
missing, and says ``ok`` while it is still loading.  So healthy means: a chat
completion at temperature 0 came back with non-empty text.

mlx_lm answers ``/health`` with 503 ``{"status": "unavailable"}`` only once its
generation thread has died (the model or adapter failed to load); that cannot
heal, so it ends the wait at once instead of at the deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from nightlora.errors import HealthError

DEFAULT_PROMPT = "Reply with one short greeting."


class _NotYet(Exception):
    """Not healthy yet; worth asking again."""


class _Fatal(Exception):
    """Will not become healthy; stop waiting."""


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    url: str
    reason: str = ""          # one line when not ok
    ready_s: float | None = None  # until the server first answered /health or /v1/models (None: never)
    chat_s: float | None = None   # the successful chat completion alone
    total_s: float = 0.0
    attempts: int = 0
    reply: str = ""
    models: list[str] = field(default_factory=list)
    adapter: str | None = None    # the adapter version the server was serving when checked (None: none)

    def raise_for_health(self) -> "HealthResult":
        if not self.ok:
            raise HealthError(f"the server at {self.url} is not healthy: {self.reason}")
        return self


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class _Poll:
    client: httpx.Client
    base: str
    prompt: str
    max_tokens: int
    model: str | None
    alive: Callable[[], bool] | None
    clock: Callable[[], float]
    deadline: float
    attempts: int = 0
    ready_at: float | None = None
    models: list[str] = field(default_factory=list)
    reply: str = ""
    chat_s: float | None = None

    def _get(self, path: str) -> httpx.Response:
        try:
            return self.client.get(self.base + path, timeout=min(10.0, max(0.5, self.deadline - self.clock())))
        except httpx.HTTPError as e:
            raise _NotYet(f"no answer from {self.base} ({type(e).__name__})") from None

    def _probe(self) -> None:
        """Return when the server answers and does not say it is loading; the chat decides the rest.

        Raises _NotYet while it cannot be reached or says 503, _Fatal when it says it never will work.
        """
        r = self._get("/health")
        body = _json(r)
        if r.status_code == 200 and isinstance(body, dict) and body.get("status") in ("ok", "healthy", "ready"):
            return
        if r.status_code == 503:
            if body == {"status": "unavailable"}:
                raise _Fatal("the server cannot generate (/health: unavailable): its model or adapter failed to load")
            raise _NotYet(f"/health answered 503: {_one_line(r.text) or 'empty body'}")
        m = self._get("/v1/models")
        listing = _json(m)
        if m.status_code == 200 and isinstance(listing, dict) and isinstance(listing.get("data"), list):
            self.models = [str(d.get("id")) for d in listing["data"] if isinstance(d, dict)]
        elif m.status_code == 503:
            raise _NotYet("/v1/models answered 503")
        # Any other answer (404, an empty 200) proves nothing by itself: the chat must.

    def _chat(self) -> str:
        payload: dict[str, Any] = {
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": False,
        }
        if self.model:
            payload["model"] = self.model
        # The first request may wait for the model to finish loading: allow all the time left.
        try:
            r = self.client.post(
                self.base + "/v1/chat/completions", json=payload,
                timeout=max(1.0, self.deadline - self.clock()),
            )
        except httpx.HTTPError as e:
            raise _NotYet(f"chat completion failed ({type(e).__name__})") from None
        if r.status_code != 200:
            raise _NotYet(f"chat completion answered {r.status_code}: {_one_line(r.text) or 'empty body'}")
        body = _json(r)
        try:
            text = body["choices"][0]["message"]["content"]
        except (TypeError, KeyError, IndexError):
            raise _NotYet(f"chat completion answered no choices: {_one_line(r.text) or 'empty body'}") from None
        if not isinstance(text, str) or not text.strip():
            raise _NotYet("chat completion returned no text")
        return text

    def attempt(self) -> None:
        self.attempts += 1
        if self.alive is not None and not self.alive():
            raise _Fatal("the server process is not running (it exited or was never started)")
        # Probed before every chat attempt, not just once: mlx_lm may say ok, then fail to
        # load the adapter; only /health then tells that waiting longer is pointless.
        self._probe()
        if self.ready_at is None:
            self.ready_at = self.clock()
        t0 = self.clock()
        self.reply = self._chat()
        self.chat_s = self.clock() - t0


def check_health(
    base_url: str,
    *,
    timeout: float = 120.0,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 16,
    model: str | None = None,
    adapter: str | None = None,
    alive: Callable[[], bool] | None = None,
    client: httpx.Client | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    max_wait: float = 2.0,
) -> HealthResult:
    """Poll ``base_url`` with exponential back-off (0.2 s doubling up to ``max_wait``) until
    healthy or ``timeout`` seconds passed.  ``alive`` (e.g. the manager's is_running) ends the
    wait early when the server's process is gone.  ``model`` is sent as the request's model (a
    server that serves adapters by name answers with that adapter); ``adapter`` is only recorded."""
    base = base_url.rstrip("/")
    start = clock()
    deadline = start + timeout
    own = client is None
    # trust_env=False: a proxy from the environment must not stand between us and localhost.
    http = client or httpx.Client(trust_env=False)
    poll = _Poll(http, base, prompt, max_tokens, model, alive, clock, deadline)

    def wait(rs: RetryCallState) -> float:
        backoff = min(max_wait, 0.2 * 2 ** (rs.attempt_number - 1))
        return max(0.0, min(backoff, deadline - clock()))

    retrying = Retrying(
        stop=lambda rs: clock() >= deadline,
        wait=wait,
        retry=retry_if_exception_type(_NotYet),
        sleep=sleep,
        reraise=True,
    )
    reason = ""
    try:
        retrying(poll.attempt)
    except _NotYet as e:
        reason = f"not healthy after {timeout:g} s: {e}"
    except _Fatal as e:
        reason = str(e)
    finally:
        if own:
            http.close()
    return HealthResult(
        ok=not reason,
        url=base,
        reason=reason,
        ready_s=None if poll.ready_at is None else poll.ready_at - start,
        chat_s=poll.chat_s if not reason else None,
        total_s=clock() - start,
        attempts=poll.attempts,
        reply=poll.reply if not reason else "",
        models=poll.models,
        adapter=adapter,
    )


@dataclass(frozen=True)
class HealthCheck:
    """``check_health`` with its settings bound, to hand to deploy()."""

    base_url: str
    timeout: float = 120.0
    prompt: str = DEFAULT_PROMPT
    max_tokens: int = 16
    model: str | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, alive: Callable[[], bool] | None = None, adapter: str | None = None) -> HealthResult:
        return check_health(
            self.base_url, timeout=self.timeout, prompt=self.prompt, max_tokens=self.max_tokens,
            model=self.model, adapter=adapter, alive=alive, clock=self.clock, sleep=self.sleep,
        )
