"""`nightlora check/export/train/run` with `source.kind = "openwebui"` on the demo webui.db: real
torch training on a tiny model, a real mlx_lm server started by the process manager (the
OpenAI-compatible server Open WebUI talks to), the consumed cursor as the only record."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nightlora.cli.wiring import build_deps
from nightlora.config import load_config
from nightlora.dataset.manifest import read_manifest
from nightlora.demo.openwebui import MODEL, build_openwebui_db
from nightlora.pipeline.nightly import run_nightly
from nightlora.platform.net import port_in_use
from nightlora.state import cursor
from nightlora.state.db import StateDB
from nightlora.state.store import AdapterStore
from server_fixtures import free_port

pytestmark = pytest.mark.slow
NIGHTLORA = [sys.executable, "-m", "nightlora"]


@pytest.fixture
def owui(tmp_path: Path, server_model_dir: Path):
    demo = build_openwebui_db(tmp_path / "openwebui" / "webui.db")
    demo.probe_path.unlink()  # ten chat completions before and after: test_run covers the probe
    path = tmp_path / "nightlora.toml"
    path.write_text(f"""
[source]
kind = "openwebui"
db = "{demo.path}"
data_dir = "{tmp_path / 'nightlora'}"
model_ids = ["{MODEL}"]
[data]
min_messages = 2
[train]
model = "{server_model_dir}"
backend = "torch"
iters = 4
batch_size = 4
max_seq_length = 384
[eval]
# 4 steps on a tiny random model teach it nothing the gate could see; this test is about the
# Open WebUI source end to end, tests/test_gate_night.py runs the gate.
gate = false
[target]
manager = "process"
port = {free_port()}
health_timeout = 60
stop_during_training = "always"
""")
    cfg = load_config(path, environ={})
    deps = build_deps(cfg, progress=False)
    deps.target.start()
    deps.target.health().raise_for_health()
    yield path, cfg, demo
    build_deps(cfg, progress=False).target.stop()
    assert not port_in_use(cfg.target.host, cfg.target.port)


def test_check_export_train_and_run_on_open_webui(owui, tmp_path: Path) -> None:
    cfg_path, cfg, demo = owui
    db_before = hashlib.sha256(demo.path.read_bytes()).hexdigest()

    check = subprocess.run([*NIGHTLORA, "-c", str(cfg_path), "check", "--json"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    counts = json.loads(check.stdout)
    assert counts["due"] and counts["positive"] > 0 and counts["negative"] > 0

    out = tmp_path / "exported"
    export = subprocess.run([*NIGHTLORA, "-c", str(cfg_path), "export", "--out", str(out), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    m = json.loads(export.stdout)
    assert m["source"]["kind"] == "openwebui" and m["counts"]["train"] > 0 and m["counts"]["preferences"] > 0
    assert m["cases"]["feedback_other_model"] >= 1  # the other model's ratings are not this adapter's

    train = subprocess.run([*NIGHTLORA, "-c", str(cfg_path), "train", "--data", str(out), "--out", str(tmp_path / "adapter"),
                            "--json"], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "adapter" / "nightlora.json").is_file()

    result = run_nightly(cfg, build_deps(cfg, progress=False))
    assert result.status == "completed", result.message
    assert AdapterStore.for_state_dir(cfg.source.state_path).current().name == result.deploy.live == "v0001"
    assert build_deps(cfg, progress=False).target.health().ok
    # webui.db has no "exported" flag: nightlora's own cursor holds exactly the feedback the export saw.
    seen = read_manifest(result.run_dir / "data")["feedback"]["seen"]
    assert result.commit.marked_in_source == 0 and result.commit.consumed == seen["count"] > 0
    with StateDB.for_state_dir(cfg.source.state_path) as db:
        assert cursor.consumed(db, f"openwebui:{demo.path}") == set(seen["keys"])
    assert hashlib.sha256(demo.path.read_bytes()).hexdigest() == db_before  # read-only, always

    again = run_nightly(cfg, build_deps(cfg, progress=False))
    assert again.status == "skipped" and again.feedback.total == 0
