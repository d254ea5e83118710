"""The health check's back-off and verdicts, against a real scripted HTTP server and a fake clock.

(Against a real mlx_lm server it runs in test_deploy.py.)
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nightlora.config import Config
from nightlora.errors import HealthError
from nightlora.targets.health import HealthCheck, check_health
from server_fixtures import free_port

OK_CHAT = (200, json.dumps({"choices": [{"message": {"role": "assistant", "content": "Hi there!"}}]}))


class Scripted:
    """An HTTP server answering each path from a script; the last answer of a path repeats."""

    def __init__(self, script: dict[str, list[tuple[int, str]]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.requests: list[tuple[str, str, dict | None]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, method):
                body = None
                if method == "POST":
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((method, self.path, body))
                answers = outer.script.get(self.path, [(404, "")])
                code, text = answers.pop(0) if len(answers) > 1 else answers[0]
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]


@pytest.fixture
def scripted(request):
    made = []

    def make(script):
        s = Scripted(script)
        made.append(s)
        return s
    yield make
    for s in made:
        s.httpd.shutdown()
        s.httpd.server_close()


class FakeTime:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(round(s, 3))
        self.now += s


def run(url, t: FakeTime, **kw):
    return check_health(url, clock=t.clock, sleep=t.sleep, **kw)


def test_waits_with_exponential_backoff_until_ready_then_asks_a_real_question(scripted):
    loading = (503, json.dumps({"error": {"message": "Loading model"}}))
    s = scripted({"/health": [loading, loading, loading, (200, '{"status": "ok"}')],
                  "/v1/chat/completions": [OK_CHAT]})
    t = FakeTime()
    h = run(s.url, t, timeout=60, prompt="Say hi.", max_tokens=7)
    assert h.ok and h.reply == "Hi there!" and h.reason == ""
    assert t.sleeps == [0.2, 0.4, 0.8]
    assert h.attempts == 4 and h.ready_s == pytest.approx(1.4) and h.total_s == pytest.approx(1.4)
    (method, path, body), = [r for r in s.requests if r[0] == "POST"]
    assert path == "/v1/chat/completions"
    assert body == {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 7, "temperature": 0,
                    "stream": False}


def test_gives_up_at_the_deadline_with_the_last_reason(scripted):
    s = scripted({"/health": [(503, "busy")]})
    t = FakeTime()
    h = run(s.url, t, timeout=10)
    assert not h.ok and h.reason == "not healthy after 10 s: /health answered 503: busy"
    assert t.sleeps[:5] == [0.2, 0.4, 0.8, 1.6, 2.0] and max(t.sleeps) == 2.0  # capped
    assert sum(t.sleeps) == pytest.approx(10.0)  # the last wait is cut to the deadline
    assert h.ready_s is None and h.chat_s is None and h.reply == ""
    with pytest.raises(HealthError) as e:
        h.raise_for_health()
    assert str(e.value) == f"the server at {s.url} is not healthy: not healthy after 10 s: /health answered 503: busy"


def test_an_empty_models_answer_is_not_health_by_itself(scripted):
    # mlx_lm without its HF cache folder: /v1/models is 200 with an empty body. Here /health is
    # missing too, and the chat answers nothing: not healthy.
    s = scripted({"/v1/models": [(200, "")],
                  "/v1/chat/completions": [(200, json.dumps({"choices": [{"message": {"content": "  "}}]}))]})
    t = FakeTime()
    h = run(s.url, t, timeout=3)
    assert not h.ok and h.reason.endswith("chat completion returned no text")
    assert s.paths()[:3] == ["/health", "/v1/models", "/v1/chat/completions"]


def test_the_chat_is_the_proof_when_no_endpoint_says_ready(scripted):
    s = scripted({"/v1/models": [(200, "")], "/v1/chat/completions": [OK_CHAT]})
    h = run(s.url, FakeTime(), timeout=3)
    assert h.ok and h.reply == "Hi there!" and h.models == []


def test_a_models_list_counts_as_ready(scripted):
    listing = json.dumps({"object": "list", "data": [{"id": "/models/smollm2"}]})
    s = scripted({"/health": [(404, "Not Found")], "/v1/models": [(200, listing)], "/v1/chat/completions": [OK_CHAT]})
    h = run(s.url, FakeTime(), timeout=3, model="default_model")
    assert h.ok and h.models == ["/models/smollm2"]
    assert s.requests[-1][2]["model"] == "default_model"


def test_chat_errors_are_retried_and_reported(scripted):
    s = scripted({"/health": [(200, '{"status": "ok"}')],
                  "/v1/chat/completions": [(500, '{"error": "boom"}'), (200, "not json"), OK_CHAT]})
    t = FakeTime()
    h = run(s.url, t, timeout=30)
    assert h.ok and h.attempts == 3 and t.sleeps == [0.2, 0.4]
    s2 = scripted({"/health": [(200, '{"status": "ok"}')], "/v1/chat/completions": [(500, '{"error": "boom"}')]})
    h2 = run(s2.url, FakeTime(), timeout=1)
    assert not h2.ok and h2.reason == 'not healthy after 1 s: chat completion answered 500: {"error": "boom"}'


def test_mlx_lm_unavailable_ends_the_wait_at_once(scripted):
    # What mlx_lm answers once its generation thread died (model or adapter failed to load).
    s = scripted({"/health": [(503, '{"status": "unavailable"}')]})
    t = FakeTime()
    h = run(s.url, t, timeout=120)
    assert not h.ok and "failed to load" in h.reason
    assert h.attempts == 1 and t.sleeps == []


def test_a_dead_process_ends_the_wait_at_once(scripted):
    s = scripted({"/health": [(503, "")]})
    t = FakeTime()
    h = run(s.url, t, timeout=120, alive=lambda: False)
    assert not h.ok and h.reason == "the server process is not running (it exited or was never started)"
    assert s.requests == [] and t.sleeps == []


def test_nothing_listening():
    t = FakeTime()
    h = run(f"http://127.0.0.1:{free_port()}", t, timeout=1)
    assert not h.ok and "no answer from" in h.reason and "ConnectError" in h.reason


def test_health_check_from_config():
    from nightlora.cli.wiring import build_target

    cfg = Config.model_validate({"target": {"host": "0.0.0.0", "port": 9001, "health_timeout": 42}})
    hc = build_target(cfg).check
    assert hc.base_url == "http://127.0.0.1:9001" and hc.timeout == 42
