"""A whole night as real subprocesses, with paths as a user's can be and private data kept private.

Paths with spaces, quotes, a leading dash, non-ASCII and shell metacharacters everywhere: the data
folder (`~/Library/Application Support/Hanni` and worse), the database, the model folder,
nightlora's state folder, the config file and the export's output.  Nothing builds a shell string
from them: the `run` deploys to a real `mlx_lm server` (the process manager) whose --model and
--adapter-path are such paths.  Every command runs under umask 000, and everything written must
still be owner-only (files 0600, folders 0700); a marker in the user's messages reaches the
dataset and never a log, the status file, a result or the terminal."""

from __future__ import annotations

import ast
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nightlora.platform.net import port_in_use
from server_fixtures import free_port

NIGHTLORA = [sys.executable, "-m", "nightlora"]
ODD = "-Hanni \"q\" 'x' Ханни $(touch PWNED) ; `id` *"
SRC = Path(__file__).resolve().parent.parent / "src" / "nightlora"


# In a user's message: must reach the dataset, and never a log, stderr, the status file or a result.
MARKER = "ZQX-private-Ханни-7731"


def run_cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """A real `nightlora` under umask 000: whatever it writes must still be owner-only."""
    return subprocess.run([*NIGHTLORA, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
                          preexec_fn=lambda: os.umask(0))


def not_private(*roots: Path) -> list[str]:
    """Every file not 0600 and folder not 0700 under ``roots`` (themselves included); symlinks skipped."""
    bad = []
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                bad.append(f"{oct(stat.S_IMODE(st.st_mode))} {p}")
    return bad


def mark_user_messages(db: Path) -> int:
    """Put MARKER into the first user message of every conversation (both of Hanni's formats)."""
    conn = sqlite3.connect(db)
    changed = 0
    with conn:
        for cid, raw in conn.execute("SELECT id, messages FROM conversations").fetchall():
            try:
                msgs = json.loads(raw)
            except (TypeError, ValueError):
                continue
            for m in msgs if isinstance(msgs, list) else []:
                if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                    m["content"] = f"{MARKER} {m['content']}"
                elif isinstance(m, list) and len(m) == 2 and m[0] == "user" and isinstance(m[1], str):
                    m[1] = f"{MARKER} {m[1]}"
                else:
                    continue
                conn.execute("UPDATE conversations SET messages = ? WHERE id = ?",
                             (json.dumps(msgs, ensure_ascii=False), cid))
                changed += 1
                break
    conn.close()
    return changed


def holds_marker(text: str) -> bool:
    return MARKER in text or json.dumps(MARKER)[1:-1] in text


@pytest.mark.slow
def test_a_night_with_odd_paths_under_umask_000_writes_owner_only_and_logs_no_message_text(
        tmp_path: Path, server_model_dir: Path) -> None:
    support = tmp_path / "Library" / "Application Support"
    data = support / ODD
    model = tmp_path / "Models" / f"-tiny {ODD}"
    shutil.copytree(server_model_dir, model)
    support.mkdir(parents=True)  # the user's; everything below it is nightlora's
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLORA_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"), HF_HUB_OFFLINE="1")
    port = free_port()
    # A relative path that starts with a dash, given after `--` as any command-line tool wants.
    r = run_cli("demo-db", "--", f"{ODD}/hanni.db", cwd=support, env=env)
    assert r.returncode == 0, r.stderr
    assert (data / "hanni.db").is_file() and (data / "system_prompt.txt").is_file()
    assert mark_user_messages(data / "hanni.db") > 10
    cfg = data / f"nightlora {ODD}.toml"
    r = run_cli("--config", str(cfg), "init", "--preset", "hanni", cwd=support, env=env)
    assert r.returncode == 0, r.stderr  # written by nightlora: owner-only like the rest (checked below)
    cfg.write_text(f"""
[source]
data_dir = {json.dumps(str(data))}
state_dir = {json.dumps(f"-state {ODD}")}
[train]
model = {json.dumps(str(model))}
backend = "torch"
iters = 4
batch_size = 4
max_seq_length = 256
[eval]
gate = false
[target]
manager = "process"
port = {port}
health_timeout = 60
stop_during_training = "never"
""")
    state = data / f"-state {ODD}"
    out = data / f"-out {ODD}" / "tonight"  # a missing parent too: created owner-only
    streams = []
    try:
        r = run_cli("-c", str(cfg), "check", "--json", cwd=support, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["due"]
        # an option's value may start with a dash; --debug adds tracebacks, never message text
        r = run_cli("-c", str(cfg), "--debug", "export", "--out", f"-out {ODD}/tonight", "--json", cwd=data, env=env)
        assert r.returncode == 0, r.stderr
        assert (out / "train.jsonl").stat().st_size > 0 and (out / "manifest.json").is_file()
        streams += [r.stderr]

        r = run_cli("-c", str(cfg), "run", cwd=support, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        streams += [r.stdout, r.stderr]
        (run_dir,) = (state / "runs").iterdir()
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        assert result["status"] == "completed", result.get("message")
        assert (state / "adapters" / "current" / "adapters.safetensors").is_file()
        # the live server was started with these paths, each one argument
        pid = json.loads((state / "server.pid").read_text())["pid"]
        args = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        assert args[args.index("--model") + 1] == str(model.resolve())
        assert args[args.index("--adapter-path") + 1] == str(state / "adapters" / "current")
        assert args[args.index("--host") + 1] == "127.0.0.1"
        said = {}
        for command in (("server", "status"), ("status",), ("report",), ("adapters",),
                        ("train", "--data", str(out), "--iters", "2")):
            r = run_cli("-c", str(cfg), *command, cwd=support, env=env)
            assert r.returncode == 0, (command, r.stderr[-2000:])
            streams += [r.stdout, r.stderr]
            said[command[0] if command[0] != "server" else "server status"] = r.stdout + r.stderr
        assert "answering" in said["server status"] and "v0001" in said["status"] and "v0001" in said["adapters"]
    finally:
        run_cli("-c", str(cfg), "server", "stop", cwd=support, env=env, timeout=60)
    assert not port_in_use("127.0.0.1", port)
    # nothing was ever run by a shell: no command substitution happened anywhere
    assert not list(tmp_path.rglob("PWNED"))

    assert any((state / "adapters-staging").iterdir())  # `nightlora train` without --out
    assert any((state / "cache").iterdir())  # the base model's answers to the general prompts
    assert holds_marker((out / "train.jsonl").read_text(encoding="utf-8"))  # the marker reached the data
    assert not_private(data) == []  # the app's database, the config, state, runs, adapters, logs, caches, exports
    logs = [run_dir / "run.log", state / "status.json", run_dir / "result.json", *state.glob("logs/*")]
    assert (run_dir / "run.log").stat().st_size > 0 and (state / "logs" / "server.log").is_file()
    for path in logs:
        assert not holds_marker(path.read_text(encoding="utf-8")), path
    for text in streams:
        assert not holds_marker(text)


def test_no_shell_anywhere_in_the_product() -> None:
    """No shell=True, os.system, os.popen or `sh -c` in the source (the cron line, which cron
    itself hands to /bin/sh, is built with shlex.quote: test_schedule.py)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "shell" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is False):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} shell=")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                    and node.attr in ("system", "popen", "execl", "execlp", "spawnl", "spawnlp"):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} os.{node.attr}")
            if isinstance(node, ast.List) and len(node.elts) >= 2 and all(isinstance(e, ast.Constant) for e in node.elts[:2]) \
                    and [e.value for e in node.elts[:2]] in (["sh", "-c"], ["/bin/sh", "-c"], ["bash", "-c"]):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} sh -c")
    assert found == []
