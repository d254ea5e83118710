"""Fixtures for the server, deploy and store tests: a tiny real model, real adapters, real servers.

The model is the session's ``tiny_model_dir`` (conftest), patched so that its greedy
replies are never empty (see ``never_blank``). Adapters are made with mlx_lm's own LoRA
code and saved the way ``mlx_lm lora`` saves them. conftest loads this module as a plugin.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pytest

from nightlora.platform.runner import CommandResult


def never_blank(model_dir: Path, out: Path) -> Path:
    """A copy of a random tiny model whose greedy replies are never empty.

    Random weights may answer EOS or blanks first, which the health check rightly
    calls unhealthy.  Zeroing the embedding rows of the special and whitespace-only
    tokens (tied to the output layer) gives them logit 0 while some other token's
    is positive, so greedy decoding always says something.
    """
    import shutil

    import mlx.core as mx
    from tokenizers import Tokenizer

    shutil.copytree(model_dir, out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    blank = [i for i in range(tok.get_vocab_size()) if not tok.decode([i], skip_special_tokens=True).strip()]
    (weights_file,) = out.glob("*.safetensors")
    weights, metadata = mx.load(str(weights_file), return_metadata=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("tie_word_embeddings", False), "never_blank needs tied embeddings"
    emb = weights["model.embed_tokens.weight"]
    emb[mx.array(blank)] = 0.0
    weights["model.embed_tokens.weight"] = emb
    mx.save_safetensors(str(weights_file), weights, metadata=metadata)
    return out


def build_adapter(model_dir: Path, out: Path, seed: int = 1, rank: int = 4) -> Path:
    """An mlx_lm LoRA adapter for ``model_dir``, saved exactly as mlx_lm's lora.py saves one."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    model, _ = load(str(model_dir))
    model.freeze()
    params = {"rank": rank, "dropout": 0.0, "scale": 10.0}
    num_layers = len(model.layers)
    linear_to_lora_layers(model, num_layers, params)
    mx.random.seed(seed)
    # A trained adapter has non-zero B matrices; fresh LoRA layers start at zero.
    model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.05, model.trainable_parameters()))
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    config = {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params, "model": str(model_dir)}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=4))
    (out / "nightlora.json").write_text(json.dumps({"base_model": str(model_dir), "metrics": {"val_loss": 1.0}}))
    return out


def corrupt_adapter(path: Path) -> Path:
    """Make an adapter that mlx_lm cannot load: its safetensors header is garbage."""
    (path / "adapters.safetensors").write_bytes(b"\xff" * 64)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- fakes for what cannot run here (launchctl, systemctl, osascript) ------------------------


@dataclass
class RecordingRunner:
    """Records every argv; answers from ``script`` (first matching argv prefix wins), else rc 0."""

    script: list[tuple[tuple[str, ...], CommandResult | list[CommandResult]]] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    envs: list[Mapping[str, str] | None] = field(default_factory=list)

    def on(self, prefix: Sequence[str], returncode: int = 0, stdout: str = "", stderr: str = "") -> "RecordingRunner":
        self.script.append((tuple(prefix), CommandResult(tuple(prefix), returncode, stdout, stderr)))
        return self

    def on_sequence(self, prefix: Sequence[str], results: list[tuple[int, str]]) -> "RecordingRunner":
        """Successive calls matching ``prefix`` get these (returncode, stdout) answers, the last one repeating."""
        self.script.append((tuple(prefix), [CommandResult(tuple(prefix), rc, out, "") for rc, out in results]))
        return self

    def run(self, argv, *, timeout=60.0, env=None) -> CommandResult:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        self.envs.append(env)
        for prefix, answer in self.script:
            if tuple(argv[: len(prefix)]) == prefix:
                if isinstance(answer, list):
                    res = answer.pop(0) if len(answer) > 1 else answer[0]
                else:
                    res = answer
                return CommandResult(tuple(argv), res.returncode, res.stdout, res.stderr)
        return CommandResult(tuple(argv), 0, "", "")


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "s": " ",
            "\\": "\\", '"': '"', "'": "'", ";": ";"}


def parse_exec_line(line: str) -> list[str]:
    """A reference reading of an ExecStart= value, in systemd's order (systemd.service(5),
    "Command lines"): %-specifiers on the whole line, then words split with quotes and
    C-style escapes, then $$ -> $ in each word."""
    assert "%" not in line.replace("%%", ""), f"unexpected specifier in {line!r}"
    s = line.replace("%%", "%")
    words, i, n = [], 0, len(s)
    while i < n:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            break
        word, quote = "", None
        while i < n:
            c = s[i]
            if quote is None and c in " \t":
                break
            if c in "\"'" and (quote is None or quote == c):
                quote = None if quote else c
                i += 1
                continue
            if c == "\\":
                nxt = s[i + 1]
                if nxt == "x":
                    word += chr(int(s[i + 2:i + 4], 16))
                    i += 4
                    continue
                word += _ESCAPES[nxt]
                i += 2
                continue
            word += c
            i += 1
        assert quote is None, f"unterminated quote in {line!r}"
        words.append(word)
    for w in words:
        assert "$" not in w.replace("$$", ""), f"unescaped $ in {w!r} would expand a variable"
    return [w.replace("$$", "$") for w in words]


# ---- processes -----------------------------------------------------------------------------


def kill_pid(pid: int) -> None:
    """Finalizer: end one process (and its group) we started, by pid."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        with contextlib.suppress(ChildProcessError, OSError):
            for _ in range(50):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
                import time

                time.sleep(0.1)


FAKE_SERVER = textwrap.dedent(
    """
    # A real HTTP server that says it is healthy but cannot answer a chat completion.
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def _send(self, code, body):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def do_GET(self):
            if self.path == "/health":
                self._send(200, json.dumps({"status": "ok"}))
            elif self.path.startswith("/v1/models"):
                self._send(200, "")  # what mlx_lm answers when the HF cache folder is missing
            else:
                self._send(404, "")
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(500, json.dumps({"error": "model exploded"}))

    HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
    """
)


@pytest.fixture(scope="session")
def server_model_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """The tiny model the test servers load: conftest's, patched so that it always says something."""
    return never_blank(tiny_model_dir, tmp_path_factory.mktemp("served-model") / "tiny")


@pytest.fixture(scope="session")
def adapter_template(server_model_dir, tmp_path_factory) -> Path:
    """One real adapter per session; tests copy it (the store consumes what it adds)."""
    return build_adapter(server_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture
def make_adapter(adapter_template, tmp_path) -> Iterator:
    import shutil

    counter = iter(range(1000))

    def make(corrupt: bool = False) -> Path:
        dst = tmp_path / f"trained-{next(counter)}"
        shutil.copytree(adapter_template, dst)
        return corrupt_adapter(dst) if corrupt else dst

    yield make


@pytest.fixture
def fake_server_script(tmp_path) -> Path:
    p = tmp_path / "fake_server.py"
    p.write_text(FAKE_SERVER)
    return p


PYTHON = sys.executable
