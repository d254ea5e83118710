"""`nightlora run`: the nightly cycle, B3.1-B3.9, as a short list of stages.

    check -> export -> train -> evaluate -> deploy -> mark feedback -> record

Each stage hands its work to the next through files in one run folder
(``<state>/runs/<id>/``: config.json, data/, adapter, run.log, result.json), so any stage
can also run alone (`nightlora export`, `nightlora train`, ...).

The assistant is never left down: the server is stopped only around training
(and only when memory requires it, see downtime.py); any failure or interruption
after that point restores it (deploy.restore), a new adapter that fails health is
rolled back (deploy.deploy), and a run killed outright is repaired by the next
run or by `nightlora recover`. Feedback is marked exported only when the new
adapter went live, and only the rows the export saw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from nightlora.sources.hanni.check import FeedbackCounts, feedback_counts
from nightlora.config import Config
from nightlora.targets.deploy import DeployResult, Health, Outcome, deploy, restore
from nightlora.targets.downtime import MemoryInfo, plan_downtime
from nightlora.errors import Interrupted, NightloraError, ServerError
from nightlora.evaluate.gate import ProbeResult, check_promotable, probe, read_probe
from nightlora.dataset.writer import ExportResult, export_dataset
from nightlora.platform.fsutil import atomic_write_json, private_dir
from nightlora.sources.hanni.db import mark_exported_from_manifest
from nightlora.pipeline.lock import RunLock
from nightlora.models import num_layers, resolve_model
from nightlora.platform.notify import Notifier, announce_back, announce_downtime
from nightlora.state.db import HanniCycles, RunRecorder, StateDB
from nightlora.targets.mlx_lm.manager import ServerManager
from nightlora.state.status_file import StatusWriter
from nightlora.state.store import AdapterStore
from nightlora.train.base import ADAPTER_META, ProgressFn, TrainMetrics, TrainRequest, Trainer
from nightlora.train.hyperparams import choose_hyperparams

PROBE_FILE = "probe.jsonl"


@dataclass
class RunDeps:
    """Everything with a side effect the run needs, passed in (see cli/run_cmds.py)."""

    manager: ServerManager
    health: Health
    trainer_for: Callable[[str], Trainer]
    notifier: Notifier
    read_memory: Callable[[], MemoryInfo | None]
    chat: Callable[[str], str] | None = None  # asks the live server one question (probe)
    progress: ProgressFn | None = None
    log: Callable[[str], None] = lambda msg: None


@dataclass
class RunResult:
    status: str  # one of record.FINAL_STATUSES
    exit_code: int
    message: str
    run_id: int | None = None
    run_dir: Path | None = None
    feedback: dict | None = None
    export: dict | None = None
    hyperparams: dict | None = None
    downtime: dict | None = None
    metrics: dict | None = None
    deploy: dict | None = None
    probe_before: dict | None = None
    probe_after: dict | None = None
    marked_exported: int = 0
    stages_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["run_dir"] = str(self.run_dir) if self.run_dir else None
        return d


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM (launchd/systemd stopping us) becomes an exception, so cleanup runs as for Ctrl-C."""

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(f"stopped by signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def new_run_dir(state_dir: Path) -> Path:
    runs = private_dir(Path(state_dir) / "runs")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        d = runs / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            d.mkdir(mode=0o700)
            return d
        except FileExistsError:
            continue
    raise NightloraError(f"cannot create a run folder under {runs}")


class _Stages:
    """Times each stage, keeps the status file and the state db in step, logs one line per stage."""

    def __init__(self, result: RunResult, status: StatusWriter, recorder: RunRecorder, log: Callable[[str], None]):
        self.result, self.status, self.recorder, self.log = result, status, recorder, log

    @contextlib.contextmanager
    def __call__(self, name: str, message: str = "") -> Iterator[None]:
        self.log(f"[{name}] {message}".rstrip())
        self.status.stage(name, message)
        if self.result.run_id is not None:
            self.recorder.stage(self.result.run_id, name)
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.result.stages_s[name] = round(time.monotonic() - t0, 2)


def recover(cfg: Config, deps: RunDeps) -> DeployResult | None:
    """Repair what a killed run left: mark its record interrupted and make the server answer.

    Safe to call any time no run holds the lock; `nightlora run` calls it first.
    """
    state_dir = cfg.source.state_path
    with StateDB.for_state_dir(state_dir) as db:
        recorder = RunRecorder(db, HanniCycles(cfg.source.db_path) if cfg.source.db_path.is_file() else None)
        for rec in db.recent_runs(50):
            if rec.status == "running":
                deps.log(f"run {rec.id} (stage {rec.stage}) did not finish; marking it interrupted")
                recorder.finish(rec.id, "interrupted", Interrupted.exit_code,
                                notes=f"interrupted during {rec.stage}; repaired by a later run")
    if not deps.manager.managed:
        return None
    result = restore(AdapterStore.for_state_dir(state_dir), deps.manager, deps.health, log=deps.log)
    if result.outcome != Outcome.UNCHANGED:
        deps.log(f"server: {result.message}")
    StatusWriter.for_state_dir(state_dir).done(f"recovered: {result.message}", failed=not result.ok)
    return result


def _probe_items(cfg: Config) -> list[dict] | None:
    path = cfg.source.resolve(Path(PROBE_FILE))
    return read_probe(path) if path.is_file() else None


def _measure_probe(deps: RunDeps, items: list[dict] | None) -> ProbeResult | None:
    if not items or deps.chat is None:
        return None
    try:
        return probe(deps.chat, items)
    except NightloraError as e:  # a probe is information, never a reason to fail the night
        deps.log(f"probe skipped: {e}")
        return None


def _servable_adapter(metrics: TrainMetrics, adapter: Path, base_model: Path, run_dir: Path) -> Path:
    """The store serves mlx_lm's format; a PEFT adapter is converted and kept beside it in peft/."""
    if metrics.adapter_format == "mlx":
        return adapter
    from nightlora.train.convert import peft_to_mlx

    served = peft_to_mlx(adapter, run_dir / "adapter-mlx", base_model)
    shutil.move(str(adapter), str(served / "peft"))
    meta_path = served / ADAPTER_META
    meta = json.loads(meta_path.read_text())
    meta["converted_from"]["path"] = "peft"  # where the PEFT original now lives, inside the version
    atomic_write_json(meta_path, meta)
    return served


def _with_run_log(deps: RunDeps, path: Path) -> RunDeps:
    """Every line the run logs also goes, timestamped, to the run folder's run.log."""
    console = deps.log

    def log(msg: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')} {msg}\n")
        console(msg)

    return dataclasses.replace(deps, log=log)


def run_nightly(cfg: Config, deps: RunDeps, *, force: bool = False) -> RunResult:
    """One night. Returns a RunResult; raises only NightloraError (after cleaning up)."""
    state_dir = private_dir(cfg.source.state_path)
    with RunLock.for_state_dir(state_dir), _signals_raise():
        recover(cfg, deps)
        with StateDB.for_state_dir(state_dir) as db:
            hanni = HanniCycles(cfg.source.db_path) if cfg.source.db_path.is_file() else None
            recorder = RunRecorder(db, hanni)
            status = StatusWriter.for_state_dir(state_dir, past_durations_s=db.durations())
            run_dir = new_run_dir(state_dir)
            rec = recorder.start(run_dir)
            result = RunResult("failed", 1, "", run_id=rec.id, run_dir=run_dir)
            deps = _with_run_log(deps, run_dir / "run.log")
            atomic_write_json(run_dir / "config.json", json.loads(cfg.model_dump_json()))
            try:
                _cycle(cfg, deps, result, _Stages(result, status, recorder, deps.log), force=force)
            except NightloraError as e:
                result.status = "interrupted" if isinstance(e, Interrupted) else "failed"
                result.exit_code, result.message = e.exit_code, str(e)
                raise
            except BaseException as e:
                err = Interrupted("interrupted") if isinstance(e, KeyboardInterrupt) else e
                result.status = "interrupted" if isinstance(err, Interrupted) else "failed"
                result.exit_code = getattr(err, "exit_code", 1)
                result.message = str(err) or type(err).__name__
                raise
            finally:
                atomic_write_json(run_dir / "result.json", result.to_dict())
                recorder.finish(
                    rec.id, result.status, result.exit_code,
                    train_pairs=(result.export or {}).get("counts", {}).get("train"),
                    eval_score=(result.probe_after or {}).get("score"),
                    adapter_version=(result.deploy or {}).get("live"),
                    adapter_path=str(AdapterStore.for_state_dir(state_dir).current_link)
                    if (result.deploy or {}).get("live") else None,
                    notes=result.message[:500],
                )
                status.done(result.message, failed=result.status in ("failed", "interrupted"),
                            adapter_version=(result.deploy or {}).get("live"))
    return result


def _cycle(cfg: Config, deps: RunDeps, result: RunResult, stage: _Stages, *, force: bool) -> None:
    run_dir = result.run_dir
    assert run_dir is not None
    db_path = cfg.source.db_path

    with stage("check", "B3.1 feedback gate"):
        counts: FeedbackCounts = feedback_counts(db_path, cfg.data.min_feedback)
        result.feedback = counts.to_dict()
        if not counts.due and not force:
            result.status, result.exit_code = "skipped", 0
            result.message = f"{counts.total} new rated messages, fewer than {cfg.data.min_feedback}: nothing to do"
            return

    with stage("export", "B3.2-B3.3 export and check the dataset"):
        exported: ExportResult = export_dataset(
            db_path, run_dir / "data", cfg.source.system_prompt_path,
            min_messages=cfg.data.min_messages, split=tuple(cfg.data.split),
        )
        result.export = exported.to_dict()
        if exported.counts.get("train", 0) == 0:
            raise NightloraError("the export produced no training examples")

    model_dir = resolve_model(cfg.train.model, cfg.train.models_dir)
    hp = choose_hyperparams(cfg.train, exported.counts["train"], exported.counts.get("valid", 0), num_layers(model_dir))
    result.hyperparams = hp.to_dict()
    decision = plan_downtime(
        cfg.server.stop_during_training, model_dir, batch_size=hp.batch_size, seq_len=hp.max_seq_length,
        lora_rank=hp.lora_rank, lora_layers=hp.num_layers, grad_checkpoint=hp.grad_checkpoint,
        memory_reader=deps.read_memory,
    )
    result.downtime = {"stop": decision.stop, "reason": decision.reason}
    deps.log(f"server during training: {'stopped' if decision.stop else 'kept serving'} ({decision.reason})")

    probe_items = _probe_items(cfg)
    with stage("probe-before", "held-out questions, before training"):
        before = _measure_probe(deps, probe_items)
        result.probe_before = before.to_dict() if before else None

    store = AdapterStore.for_state_dir(cfg.source.state_path)
    trainer = deps.trainer_for(cfg.train.backend)
    try:
        if decision.stop and deps.manager.managed:
            with stage("stop-server", "B3.5 stop the server for training"):
                announce_downtime(deps.notifier, stage.status.current.expected_end and
                                  datetime.fromisoformat(stage.status.current.expected_end))
                stage.status.update(server_down=True)
                deps.manager.stop()
        with stage("train", f"B3.7 LoRA training ({trainer.name}, {hp.iters} steps)"):
            metrics = trainer.train(
                TrainRequest(run_dir / "data", model_dir, run_dir / f"adapter-{trainer.name}", hp), deps.progress)
            result.metrics = metrics.to_dict()
        with stage("evaluate", "test loss must be finite"):
            check_promotable(metrics)
            served = _servable_adapter(metrics, run_dir / f"adapter-{trainer.name}", model_dir, run_dir)
            version = store.add(served, base_model=str(model_dir), data_counts=exported.counts, run_id=result.run_id)
    except BaseException:
        # B3.6's backup is the store itself: restart the server on the version that was live.
        deps.log("training did not finish; bringing the server back as it was")
        back = restore(store, deps.manager, deps.health, log=deps.log)
        result.deploy = back.to_dict()
        if decision.stop:
            announce_back(deps.notifier, "No new adapter tonight.")
        raise

    with stage("deploy", f"B3.8-B3.9 put {version.name} live and check health"):
        outcome = deploy(store, deps.manager, deps.health, version, log=deps.log)
        result.deploy = outcome.to_dict()
        if decision.stop:
            announce_back(deps.notifier, outcome.message)
    if outcome.outcome not in (Outcome.LIVE, Outcome.UNMANAGED):
        result.status = "rolled_back" if outcome.ok else "failed"
        result.exit_code = 0 if outcome.ok else ServerError.exit_code
        result.message = f"{version.name} was not deployed: {outcome.message}"
        if not outcome.ok:
            raise ServerError(result.message)
        return

    with stage("mark", "feedback seen by the export is marked exported"):
        result.marked_exported = mark_exported_from_manifest(db_path, exported.manifest_path)
        store.prune(cfg.server.keep_versions)

    with stage("probe-after", "held-out questions, after training"):
        after = _measure_probe(deps, probe_items)
        result.probe_after = after.to_dict() if after else None
        if after is not None:
            store.update(version, eval_score=after.score)

    result.status, result.exit_code = "completed", 0
    result.message = f"{version.name} is live ({exported.counts['train']} training examples)"
    if after is not None and before is not None:
        result.message += f"; probe {before.correct}/{before.total} -> {after.correct}/{after.total}"
