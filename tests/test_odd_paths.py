"""Paths with spaces, quotes, a leading dash and non-ASCII, end to end, as real subprocesses:
the data folder (`~/Library/Application Support/Hanni` and worse), the database, the model
folder, nightlora's state folder, the config file and the export's output.  Nothing builds a
shell string from them: the `run` deploys to a real `mlx_lm server` (the process manager) whose
--model and --adapter-path are such paths."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nightlora.platform.net import port_in_use
from server_fixtures import free_port

NIGHTLORA = [sys.executable, "-m", "nightlora"]
ODD = "-Hanni \"q\" 'x' Ханни $(touch PWNED) ; `id` *"
SRC = Path(__file__).resolve().parent.parent / "src" / "nightlora"


def run_cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*NIGHTLORA, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.mark.slow
def test_odd_paths_end_to_end(tmp_path: Path, server_model_dir: Path) -> None:
    support = tmp_path / "Library" / "Application Support"
    data = support / ODD
    model = data / "models" / f"-tiny {ODD}"
    shutil.copytree(server_model_dir, model)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLORA_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"), HF_HUB_OFFLINE="1")
    port = free_port()
    # A relative path that starts with a dash, given after `--` as any command-line tool wants.
    r = run_cli("demo-db", "--", f"{ODD}/hanni.db", cwd=support, env=env)
    assert r.returncode == 0, r.stderr
    assert (data / "hanni.db").is_file() and (data / "system_prompt.txt").is_file()
    cfg = data / f"nightlora {ODD}.toml"
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
    try:
        r = run_cli("-c", str(cfg), "check", "--json", cwd=support, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["due"]
        # an option's value may start with a dash
        r = run_cli("-c", str(cfg), "export", "--out", f"-out {ODD}", "--json", cwd=data, env=env)
        assert r.returncode == 0, r.stderr
        out = data / f"-out {ODD}"
        assert (out / "train.jsonl").stat().st_size > 0 and (out / "manifest.json").is_file()

        r = run_cli("-c", str(cfg), "run", cwd=support, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        (run_dir,) = (state / "runs").iterdir()
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        assert result["status"] == "completed", result.get("message")
        assert (state / "adapters" / "current" / "adapters.safetensors").is_file()
        # the live server was started with these paths, each one argument
        pid = json.loads((state / "server.pid").read_text())["pid"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        args = [a.decode() for a in argv]
        assert args[args.index("--model") + 1] == str(model.resolve())
        assert args[args.index("--adapter-path") + 1] == str(state / "adapters" / "current")
        r = run_cli("-c", str(cfg), "server", "status", cwd=support, env=env)
        assert r.returncode == 0 and "answering" in r.stdout + r.stderr, r.stdout + r.stderr
        r = run_cli("-c", str(cfg), "status", cwd=support, env=env)
        assert r.returncode == 0 and "v0001" in r.stdout, r.stdout
    finally:
        run_cli("-c", str(cfg), "server", "stop", cwd=support, env=env, timeout=60)
    assert not port_in_use("127.0.0.1", port)
    # nothing was ever run by a shell: no command substitution happened anywhere
    assert not list(tmp_path.rglob("PWNED"))


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
