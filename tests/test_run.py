"""`nightlora run` end to end: a real demo database, real torch training on a tiny model,
a real mlx_lm server started by the process manager, real signals and kills."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightlora.cli.wiring import build_deps
from nightlora.config import Config, load_config
from nightlora.demo.database import build_demo_db
from nightlora.errors import EvaluationError, TrainError
from nightlora.pipeline.nightly import run_nightly
from nightlora.platform.net import port_in_use
from nightlora.state.store import AdapterStore
from server_fixtures import free_port, kill_pid

pytestmark = pytest.mark.slow
NIGHTLORA = [sys.executable, "-m", "nightlora"]


def write_config(tmp: Path, model: Path, probe: bool = False, **train: object) -> Path:
    data_dir = tmp / "hanni"
    build_demo_db(data_dir / "hanni.db", conversations=24)
    if not probe:  # ten chat completions before and after training: only where a test looks at them
        (data_dir / "probe.jsonl").unlink()
    if probe:  # judged by the gate as every night is: trained enough to beat the base model
        train = {"iters": 40, "learning_rate": 1e-2, **train}
        gate = ("# a tiny random model: its general loss moves a lot whatever it learns (see test_gate_night.py)\n"
                "max_general_increase = 1.0")
    else:
        gate = ("# These tests are about stopping, deploying, recovering; 4 steps on a tiny random model teach\n"
                "# nothing the gate could see (tests/test_gate_night.py runs the gate in real nights).\n"
                "gate = false")
    train_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {
        "model": str(model), "backend": "torch", "iters": 4, "batch_size": 4, "max_seq_length": 384, **train,
    }.items())
    path = tmp / "nightlora.toml"
    path.write_text(f"""
[source]
data_dir = "{data_dir}"
[train]
{train_lines}
[eval]
{gate}
[target]
manager = "process"
port = {free_port()}
health_timeout = 60
stop_during_training = "always"
""")
    return path


def unexported(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM message_feedback WHERE exported = 0").fetchone()[0]


def cycles(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, train_pairs, adapter_path, finished_at FROM flywheel_cycles").fetchall()


@pytest.fixture
def setup(request: pytest.FixtureRequest, tmp_path: Path, server_model_dir: Path):
    """A config, its running server (the user's assistant, base model), stopped by pid at the end."""
    cfg_path = write_config(tmp_path, server_model_dir, probe=getattr(request, "param", False))
    cfg = load_config(cfg_path, environ={})
    deps = build_deps(cfg, progress=False)
    deps.target.start()
    deps.target.health().raise_for_health()
    yield cfg_path, cfg
    build_deps(cfg, progress=False).target.stop()
    # every server a run started was recorded in the pid file: none is left behind
    assert not port_in_use(cfg.target.host, cfg.target.port)


def answering(cfg: Config) -> bool:
    target = build_deps(cfg, progress=False).target
    return target.is_running() and target.health().ok


@pytest.mark.parametrize("setup", [True], indirect=True)
def test_run_trains_deploys_marks_and_records(setup) -> None:
    cfg_path, cfg = setup
    db = cfg.source.db_path
    before = unexported(db)
    logs: list[str] = []
    deps = build_deps(cfg, progress=False)
    deps.log = logs.append

    result = run_nightly(cfg, deps)

    assert result.status == "completed", result.message
    store = AdapterStore.for_state_dir(cfg.source.state_path)
    live = store.current()
    assert live is not None and live.name == result.deploy.live == "v0001"
    # torch trained a PEFT adapter; the store serves mlx_lm's format with the PEFT copy beside it
    assert (live.path / "adapters.safetensors").is_file() and (live.path / "peft" / "adapter_model.safetensors").is_file()
    assert json.loads((live.path / "nightlora.json").read_text())["converted_from"] == {"format": "peft", "path": "peft"}
    assert answering(cfg)
    # exactly the rows the export saw are marked
    manifest = json.loads((result.run_dir / "data" / "manifest.json").read_text())
    assert result.marked_exported > 0 and unexported(db) == before - result.marked_exported
    assert manifest["feedback"]["high_water"] is not None
    # the run folder holds what the run used and did
    for name in ("config.json", "result.json", "run.log", "data/train.jsonl"):
        assert (result.run_dir / name).is_file(), name
    assert "[train]" in (result.run_dir / "run.log").read_text()
    status = json.loads((cfg.source.state_path / "status.json").read_text())
    assert status["state"] == "done" and status["adapter_version"] == "v0001" and not status["server_down"]
    (row,) = cycles(db)
    assert row[0] == "completed" and row[1] == result.export.counts["train"] and row[3]
    assert row[2] == str(store.current_link)
    # the held-out probe was asked of the base model and the candidate, in process, before it went live
    scores = result.evaluation.scores
    assert scores["base"].probe_total == scores["candidate"].probe_total == 10
    assert len(scores["candidate"].probe_replies) == 10 and all(scores["candidate"].probe_replies)
    assert store.current().eval_score == result.evaluation.score

    # nothing new since: the next night skips and changes nothing
    again = run_nightly(cfg, build_deps(cfg, progress=False))
    assert again.status == "skipped" and again.exit_code == 0
    assert store.current().name == "v0001" and len(store.list()) == 1


def test_failed_training_restores_the_server_and_marks_nothing(setup) -> None:
    cfg_path, cfg = setup
    db = cfg.source.db_path
    before = unexported(db)
    bad = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": 1e12})})

    with pytest.raises((EvaluationError, TrainError)):
        run_nightly(bad, build_deps(bad, progress=False))

    assert answering(cfg)  # stopped for training (always), restarted as it was
    assert unexported(db) == before
    assert AdapterStore.for_state_dir(cfg.source.state_path).current() is None
    assert cycles(db)[0][0] == "failed"


def _start_run(cfg_path: Path) -> subprocess.Popen:
    """`nightlora run` as a real process, to be signalled by its pid."""
    return subprocess.Popen([*NIGHTLORA, "-c", str(cfg_path), "run", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_stage(status_file: Path, stage: str, proc: subprocess.Popen, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before stage {stage}: {proc.stdout.read() if proc.stdout else ''}"
        try:
            st = json.loads(status_file.read_text())
            if st.get("stage") == stage and st.get("state") == "running":
                return st
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"stage {stage} not reached")


@pytest.mark.parametrize("stage", ["train", "deploy"])
def test_sigkill_then_recover_restores_a_healthy_server(setup, stage: str) -> None:
    cfg_path, cfg = setup
    db = cfg.source.db_path
    before = unexported(db)
    # more steps so that training outlasts the kill
    proc = _start_run(cfg_path)
    try:
        _wait_for_stage(cfg.source.state_path / "status.json", stage, proc)
        if stage == "train":
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            kill_pid(proc.pid)
    assert unexported(db) == before  # nothing marked by a run that did not finish

    out = subprocess.run([*NIGHTLORA, "-c", str(cfg_path), "recover", "--json"], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outcome"] in ("restored", "unchanged", "rolled_back", "no_adapter")
    assert answering(cfg)
    assert unexported(db) == before
    assert cycles(db)[0][0] == "interrupted"


def test_sigterm_during_training_restores_before_exiting(setup) -> None:
    cfg_path, cfg = setup
    db = cfg.source.db_path
    before = unexported(db)
    proc = _start_run(cfg_path)
    try:
        _wait_for_stage(cfg.source.state_path / "status.json", "train", proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            kill_pid(proc.pid)
    assert proc.returncode == 130, out
    assert "stopped by signal SIGTERM" in out
    assert answering(cfg)  # the run itself brought the server back
    assert unexported(db) == before
    assert cycles(db)[0][0] == "interrupted"


def test_second_run_is_refused_while_one_holds_the_lock(setup) -> None:
    cfg_path, cfg = setup
    proc = _start_run(cfg_path)
    try:
        _wait_for_stage(cfg.source.state_path / "status.json", "train", proc)
        second = subprocess.run([*NIGHTLORA, "-c", str(cfg_path), "run"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 10, second.stderr
        assert f"pid {proc.pid}" in second.stderr
        assert proc.wait(300) == 0
    finally:
        if proc.poll() is None:
            kill_pid(proc.pid)


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def notify(self, title: str, text: str) -> bool:
        self.sent.append(text)
        return True


def test_a_night_with_a_target_that_is_not_ours(tmp_path: Path, server_model_dir: Path) -> None:
    """Target "none": the store's pointer moves, nothing is stopped or announced, the feedback is consumed
    in nightlora's own record as well as in the app's flag, and the next night has nothing to do."""
    from nightlora.state import cursor
    from nightlora.state.db import StateDB

    path = write_config(tmp_path, server_model_dir)
    text = path.read_text()
    path.write_text(text[:text.index("[target]")] + '[target]\nkind = "none"\n')
    cfg = load_config(path, environ={})
    deps = build_deps(cfg, progress=False)
    deps.notifier = notifier = RecordingNotifier()
    before = unexported(cfg.source.db_path)

    result = run_nightly(cfg, deps)

    assert result.status == "completed", result.message
    assert result.deploy.outcome.value == "unmanaged" and result.live == "v0001"
    assert notifier.sent == []  # the server was never stopped: nothing to announce
    store = AdapterStore.for_state_dir(cfg.source.state_path)
    assert store.current().name == "v0001" and store.current().formats == ("mlx", "peft")
    with StateDB.for_state_dir(cfg.source.state_path) as db:
        consumed = cursor.consumed(db, deps.source.key)
        deploys = db.deploys()
    assert len(consumed) == result.commit.consumed == result.marked_exported == before
    assert unexported(cfg.source.db_path) == 0
    assert [(d["action"], d["live"]) for d in deploys] == [("deploy", "v0001")]
    status = json.loads((cfg.source.state_path / "status.json").read_text())
    assert "B3" not in status["message"] and status["state"] == "done"
    assert run_nightly(cfg, build_deps(cfg, progress=False)).status == "skipped"
