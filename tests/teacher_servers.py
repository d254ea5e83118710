"""Teachers for the distillation tests: real HTTP servers on 127.0.0.1 speaking the real protocols.

``ChatServer`` speaks OpenAI's chat completions (POST /v1/chat/completions) and Anthropic's
Messages API (POST /v1/messages), with the status codes, error bodies and headers those
APIs send, and records every request it gets.  Each request is answered by the next
scripted behaviour ("hang", a status code, "garbage") or, when the script is empty, by a
reply built from the last user message.  ``fake_claude`` writes a stand-in `claude`
executable that records its argv and answers.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                return " ".join(b.get("text", "") for b in c if b.get("type") == "text")
            return str(c)
    return ""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class ChatServer:
    script: list[Any] = field(default_factory=list)  # "hang" | int status | "garbage" | "empty"
    received: list[Received] = field(default_factory=list)
    reply: str = "Teacher: {last}"
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                server.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                anthropic = self.path == "/v1/messages"
                headers = server.received[-1].headers
                if anthropic and not (headers.get("anthropic-version") and (
                        headers.get("x-api-key") or headers.get("authorization", "").startswith("Bearer "))):
                    return self._send(401, {"type": "error", "error": {"type": "authentication_error",
                                                                        "message": "no API key or version"}})
                step = server.script.pop(0) if server.script else None
                if step == "hang":
                    server.release.wait(30)
                    return
                if step == "garbage":
                    return self._send(200, b"<html>this is not json</html>")
                if isinstance(step, int):
                    kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(step, "api_error")
                    err = ({"type": "error", "error": {"type": kind, "message": "scripted"}} if anthropic
                           else {"error": {"message": "scripted", "type": kind}})
                    return self._send(step, err, {"retry-after": "0"} if step == 429 else None)
                text = "" if step == "empty" else server.reply.format(last=last_user_text(body["messages"]))
                if anthropic:
                    return self._send(200, {
                        "id": "msg_01", "type": "message", "role": "assistant", "model": body["model"],
                        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                        "usage": {"input_tokens": 11, "output_tokens": 7},
                    })
                return self._send(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_claude(bin_dir: Path, log: Path, answer: str = "Claude: ok", exit_code: int = 0) -> Path:
    """A `claude` on PATH that appends its argv (one JSON line per call) to ``log`` and prints ``answer``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "claude"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import json, sys
        with open({str(log)!r}, "a", encoding="utf-8") as f:
            f.write(json.dumps(sys.argv, ensure_ascii=False) + "\\n")
        print({answer!r})
        sys.exit({exit_code})
    """))
    os.chmod(exe, 0o755)
    return exe


def demo_export(root: Path, conversations: int = 24) -> tuple[Path, Path]:
    """A demo Hanni database under ``root`` and its real export: (database, export folder)."""
    from nightlora.cli.wiring import build_source
    from nightlora.config import load_config
    from nightlora.dataset.system_prompt import load_system_prompt
    from nightlora.dataset.writer import export_dataset
    from nightlora.demo.database import build_demo_db

    db = root / "hanni" / "hanni.db"
    if not db.exists():
        build_demo_db(db, conversations=conversations)
    source = build_source(load_config(None, environ={}, overrides={"source.data_dir": str(db.parent)}))
    out = root / f"data-{len(list(root.glob('data-*')))}"
    export_dataset(source, out, load_system_prompt(source.system_prompt_path)[0])
    return db, out


# A user's own identifiers and secrets, as people paste them into a chat.
PRIVATE = {
    "email": "olga.ivanova@example.com",
    "phone": "+7 701 123 45 67",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "key": "sk-proj-AbCdEf1234567890AbCdEf1234567890",
}
PRIVATE_MESSAGE = (
    "[Current context]\nToday: 2026-02-13, Thursday\nTime: 14:30\n\n"
    f"Please email my bank at {PRIVATE['email']} from my card {PRIVATE['card']} and IBAN {PRIVATE['iban']}; "
    f"call me at {PRIVATE['phone']}. My OpenAI key is {PRIVATE['key']}. It costs 12 400₸, version 2.13.0."
)


def add_rated_down_conversation(db: Path, user_text: str = PRIVATE_MESSAGE) -> int:
    """A new conversation in the train split whose assistant reply is rated down (unexported); its id."""
    import sqlite3

    from nightlora.dataset.split import split_of

    with sqlite3.connect(db) as conn:
        conv_id = conn.execute("SELECT max(id) FROM conversations").fetchone()[0] + 1
        while split_of(conv_id) != "train":
            conv_id += 1
        messages = [{"role": "user", "content": user_text}, {"role": "assistant", "content": "I can't do that."},
                    {"role": "user", "content": "Why not? Just do it."}, {"role": "assistant", "content": "Okay, done."}]
        # The app's columns by name (its schema has more, with defaults; sources/hanni/schema.py).
        conn.execute("INSERT INTO conversations (id, started_at, ended_at, summary, message_count, messages, updated_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", (conv_id, "2030-01-01T10:00:00", "2030-01-01T10:05:00", "",
                                                     len(messages), json.dumps(messages), "2030-01-01T10:05:00"))
        conn.execute("INSERT INTO message_feedback (conversation_id, message_index, rating, created_at, exported) "
                     "VALUES (?, 1, -1, '2030-01-01T10:01:00', 0)", (conv_id,))
    return conv_id
