"""`nightlora doctor`: all green on a fresh demo set-up (through the CLI, with a real server running),
and on a broken one each broken thing named with its fix, the other checks still green."""

from __future__ import annotations

import json
import os
import plistlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nightlora.cli import main
from nightlora.cli.wiring import build_doctor_deps, build_target
from nightlora.config import load_config
from nightlora.demo.database import build_demo_db
from nightlora.doctor.checks import run_checks
from nightlora.errors import TrainError
from nightlora.platform.memory import MemoryInfo
from nightlora.platform.power import PowerState
from nightlora.schedule import CronSchedule, nightly_argv
from server_fixtures import RecordingRunner, free_port

NIGHTLORA = [sys.executable, "-m", "nightlora"]
GiB = 1024**3


def demo_setup(tmp: Path, model: Path, target: str = "") -> Path:
    """`nightlora demo-db` and a config as `init` would write it, pointed at a tiny model."""
    data_dir = tmp / "hanni"
    build_demo_db(data_dir / "hanni.db", conversations=24)
    path = tmp / "nightlora.toml"
    path.write_text(f"""
[source]
data_dir = {json.dumps(str(data_dir))}
[train]
model = {json.dumps(str(model))}
backend = "torch"
[target]
manager = "process"
port = {free_port()}
{target}
[schedule]
backend = "cron"
""")
    return path


def fake_crontab(bin_dir: Path, crontab_file: Path) -> None:
    """cron cannot run here: a `crontab -l` that prints the user's crontab file (and fails without one, as cron's does)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "crontab"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = -l ] || exit 2\n[ -f {json.dumps(str(crontab_file))} ] || "
                      "{ echo 'no crontab for user' >&2; exit 1; }\n"
                      f"cat {json.dumps(str(crontab_file))}\n")
    script.chmod(0o755)


@pytest.mark.slow
def test_fresh_demo_setup_is_all_green(tmp_path: Path, server_model_dir: Path) -> None:
    cfg_path = demo_setup(tmp_path, server_model_dir)
    cfg = load_config(cfg_path, environ={})
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    fake_crontab(tmp_path / "bin", tmp_path / "crontab.txt")
    run = lambda *args: subprocess.run([*NIGHTLORA, "-c", str(cfg_path), *args], capture_output=True, text=True,
                                       timeout=300, env=env)
    # the user's steps: install the schedule (cron: the line to add), add it, start the server
    installed = json.loads(run("schedule", "install", "--json").stdout)
    (tmp_path / "crontab.txt").write_text("MAILTO=\"\"\n" + installed["notes"][-1] + "\n")
    target = build_target(cfg)
    target.start()
    try:
        target.health().raise_for_health()
        out = run("doctor", "--json")
    finally:
        target.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    levels = {c["check"]: c["level"] for c in report["checks"]}
    assert levels == {name: "ok" for name in (
        "config", "database", "system prompt", "state folder", "model", "training backend", "server command",
        "server port", "schedule", "old nightly job", "disk", "memory", "power")}, report
    details = {c["check"]: c["detail"] for c in report["checks"]}
    assert "our server, answering" in details["server port"] and "the one the server serves" in details["model"]


@pytest.fixture
def green(tmp_path: Path, server_model_dir: Path):
    """A set-up whose in-process checks all pass (the schedule's crontab answered by a stand-in runner)."""
    cfg_path = demo_setup(tmp_path, server_model_dir)

    def deps_for(cfg, **over):
        deps = build_doctor_deps(cfg, cfg_path)
        line = CronSchedule(nightly_argv(cfg_path), cfg.source.state_path / "logs", RecordingRunner()).line("03:00")
        cron = RecordingRunner().on(["crontab", "-l"], stdout=line + "\n")
        deps.schedule = lambda c, argv: CronSchedule(argv, c.source.state_path / "logs", cron)
        deps.read_memory = lambda: MemoryInfo(16 * GiB, 32 * GiB, "test")
        deps.read_power = lambda: PowerState(False, 90, "test")
        for k, v in over.items():
            setattr(deps, k, v)
        return deps

    return cfg_path, deps_for


def _break(case: str, tmp: Path, cfg_path: Path) -> tuple[dict, dict]:
    """Break one thing; returns (config changes as TOML lines by section, DoctorDeps overrides)."""
    data = tmp / "hanni"
    conf: dict[str, str] = {}
    deps: dict = {}
    if case == "database missing":
        (data / "hanni.db").unlink()
    elif case == "database of another app":
        (data / "hanni.db").unlink()
        import sqlite3
        with sqlite3.connect(data / "hanni.db") as c:
            c.execute("CREATE TABLE notes (id INTEGER, body TEXT)")
    elif case == "database lacks a column":
        import sqlite3
        with sqlite3.connect(data / "hanni.db") as c:
            c.execute("ALTER TABLE message_feedback DROP COLUMN rating")
    elif case == "system prompt is a FIFO":
        (data / "system_prompt.txt").unlink()
        os.mkfifo(data / "system_prompt.txt")
    elif case == "system prompt not UTF-8":
        (data / "system_prompt.txt").write_bytes(b"\xff\xfe bad")
    elif case == "system prompt missing":
        (data / "system_prompt.txt").unlink()
    elif case == "state folder readable by others":
        (data / "nightlora").mkdir(mode=0o755)
        os.chmod(data / "nightlora", 0o755)
    elif case == "state folder under a file":
        (tmp / "afile").write_text("x")
        conf["source"] = f"state_dir = {json.dumps(str(tmp / 'afile' / 'state'))}"
    elif case == "model missing":
        conf["train"] = f"model = {json.dumps(str(tmp / 'no-such-model'))}"
    elif case == "backend cannot load":
        # what make_trainer raises when the framework's import fails (an ImportError inside torch/peft)
        deps["trainer"] = lambda b: (_ for _ in ()).throw(TrainError("the torch backend cannot load (No module "
                                                                     "named 'peft'); install nightlora[torch]"))
    elif case == "server program missing":
        conf["target"] = 'command = ["/nonexistent/bin/python3", "-m", "mlx_lm", "server", "--model", "{model}"]'
    elif case == "server module missing":
        conf["target"] = 'command = ["{python}", "-m", "no_such_server_module", "--model", "{model}"]'
    elif case == "port taken by another program":
        deps["_listener"] = True
    elif case == "server listens on every address":
        conf["target"] = 'host = "0.0.0.0"'
    elif case == "schedule not installed":
        none = RecordingRunner().on(["crontab", "-l"], returncode=1, stderr="no crontab for user")
        deps["schedule"] = lambda c, argv: CronSchedule(argv, tmp / "logs", none)
    elif case == "old nightly job enabled":
        agents = tmp / "LaunchAgents"
        agents.mkdir()
        (agents / "com.hanni.nightly-train.plist").write_bytes(plistlib.dumps({"Label": "com.hanni.nightly-train"}))
        deps["platform"], deps["agents_dir"] = "darwin", agents
        deps["runner"] = RecordingRunner().on(["launchctl", "print-disabled"], stdout="disabled services = {\n}\n")
    elif case == "disk full":
        deps["free_disk"] = lambda p: 10 * 1024
    elif case == "memory short":
        deps["read_memory"] = lambda: MemoryInfo(64 * 1024**2, GiB, "test")
    elif case == "on battery":
        deps["read_power"] = lambda: PowerState(True, 20, "test")
    return conf, deps


# case -> (the check that must not be ok, its level, words its detail must have, words its fix must have)
BROKEN = {
    "database missing": ("database", "fail", "not found", "source.db"),
    "database of another app": ("database", "fail", "no conversations table", "source.db"),
    "database lacks a column": ("database", "fail", "lacks rating", "source.db"),
    "system prompt is a FIFO": ("system prompt", "fail", "not a regular file", "text file"),
    "system prompt not UTF-8": ("system prompt", "fail", "not UTF-8", "UTF-8"),
    "system prompt missing": ("system prompt", "warn", "built-in prompt", "system_prompt.txt"),
    "state folder readable by others": ("state folder", "fail", "readable by other users", "chmod 700"),
    "state folder under a file": ("state folder", "fail", "is not a folder", "source.state_dir"),
    "model missing": ("model", "fail", "no-such-model", "train.model"),
    "backend cannot load": ("training backend", "fail", "cannot load", "pip install"),
    "server program missing": ("server command", "fail", "not an executable", "full path"),
    "server module missing": ("server command", "fail", "cannot import no_such_server_module", "pip install"),
    "port taken by another program": ("server port", "fail", "did not start", "target.port"),
    "server listens on every address": ("server port", "warn", "other machines", "127.0.0.1"),
    "schedule not installed": ("schedule", "fail", "no nightly run installed", "nightlora schedule install"),
    "old nightly job enabled": ("old nightly job", "fail", "com.hanni.nightly-train is still enabled", "--disable-old-agent"),
    "disk full": ("disk", "fail", "not enough free disk", "free "),
    "memory short": ("memory", "fail", "not enough memory", "train.max_seq_length"),
    "on battery": ("power", "warn", "on battery", "plug"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_thing_is_named_with_its_fix(green, tmp_path: Path, case: str) -> None:
    cfg_path, deps_for = green
    conf, over = _break(case, tmp_path, cfg_path)
    text = cfg_path.read_text()
    for section, line in conf.items():
        key = line.split("=")[0].strip()
        text = "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith(f"{key} ="))
        text = text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
    cfg_path.write_text(text)
    cfg = load_config(cfg_path, environ={})
    listener = None
    if over.pop("_listener", False):
        listener = socket.create_server((cfg.target.host, cfg.target.port))
    try:
        findings = run_checks(cfg, deps_for(cfg, **over))
    finally:
        if listener:
            listener.close()
    check, level, detail, fix = BROKEN[case]
    bad = {f.check: f for f in findings if f.level in ("warn", "fail")}
    assert set(bad) == {check}, findings  # exactly the broken thing, nothing else
    assert bad[check].level == level and detail in bad[check].detail and fix in bad[check].fix, bad[check]
    skipped = {f.check for f in findings if f.level == "skip"}
    assert skipped == ({"memory"} if case == "model missing" else set())  # what needs the model says it was not checked


def test_cli_table_exit_codes(green, tmp_path: Path, capsys) -> None:
    cfg_path, _ = green
    (tmp_path / "hanni" / "hanni.db").unlink()
    assert main(["-c", str(cfg_path), "doctor"]) == 16
    out = capsys.readouterr()
    assert "database" in out.out and "FAIL" in out.out and "fix: point source.db" in out.out
    assert "training backend  ok" in out.out  # the others are still checked
    assert out.err.strip().startswith("nightlora: error:") and len(out.err.strip().splitlines()) == 1
    cfg_path.write_bytes(b"[train]\nepochs = \xff\n")  # invalid UTF-8 in the config: exit 3, the table says so
    assert main(["-c", str(cfg_path), "doctor", "--json"]) == 3
    out = capsys.readouterr()
    assert json.loads(out.out)["checks"][0]["check"] == "config" and "invalid config" in out.err
