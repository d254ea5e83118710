"""One night's context: the config, the side effects passed in, the run folder, its records.

``open_night`` creates the run folder and the run's record, routes every log line to
``run.log``, and on the way out -- whatever happened -- brings the server back if
training left it down, writes ``result.json``, completes the records (state db, the
app's own) and the status file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from nightlora.config import Config
from nightlora.errors import Interrupted, NightloraError
from nightlora.paths import RunPaths, StatePaths
from nightlora.pipeline.result import RunResult
from nightlora.platform.fsutil import atomic_write_json, open_private_append, private_dir
from nightlora.platform.memory import MemoryInfo
from nightlora.platform.notify import Notifier, announce_back
from nightlora.platform.power import PowerState
from nightlora.sources.base import Source
from nightlora.state.db import RunRecorder, StateDB, state_error
from nightlora.state.status_file import StatusWriter
from nightlora.state.store import AdapterStore
from nightlora.targets.base import Target
from nightlora.targets.deploy import restore
from nightlora.teachers.base import Teacher
from nightlora.train.base import ProgressFn, Trainer


@dataclass
class RunDeps:
    """Everything with a side effect the night needs, passed in (cli/wiring.py builds the real ones)."""

    source: Source
    target: Target
    trainer_for: Callable[[str], Trainer]
    notifier: Notifier
    read_memory: Callable[[], MemoryInfo | None]
    teacher: Teacher | None = None  # distillation's teacher; None: teacher.enabled is false
    # The resource guards' readings (pipeline/guards.py); None: cannot be told (the guard passes, saying so).
    read_power: Callable[[], PowerState | None] = lambda: None
    free_disk: Callable[[Path], int | None] = lambda path: None
    progress: ProgressFn | None = None
    log: Callable[[str], None] = lambda msg: None


@dataclass
class Night:
    cfg: Config
    deps: RunDeps
    state: StatePaths
    run: RunPaths
    db: StateDB
    recorder: RunRecorder
    status: StatusWriter
    result: RunResult
    force: bool = False
    # Set once training may have taken the server down; cleared when the deploy stage has
    # brought it back (on its own chain). Still set at the end: restore the server as it was.
    server_at_risk: bool = False
    paused: bool = False  # the server was actually stopped for training
    consumed: frozenset[str] = frozenset()  # feedback ids already learned from (check stage)
    # state.db failed (locked by another writer past its busy timeout): the rest of the night does not
    # wait on it again; result.json holds the end, and the next run or `nightlora recover` records it.
    state_db_failed: bool = False
    store: AdapterStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = AdapterStore(self.state.adapters)

    def log(self, msg: str) -> None:
        self.deps.log(msg)

    @property
    def app_name(self) -> str:
        return getattr(self.deps.source, "app_name", "nightlora")


def new_run_dir(state: StatePaths) -> Path:
    runs = private_dir(state.runs)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        d = runs / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            d.mkdir(mode=0o700)
            return d
        except FileExistsError:
            continue
    raise NightloraError(f"cannot create a run folder under {runs}")


def _with_run_log(deps: RunDeps, path: Path) -> RunDeps:
    """Every line the run logs also goes, timestamped, to the run folder's run.log."""
    console = deps.log

    def log(msg: str) -> None:
        with open_private_append(path) as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')} {msg}\n")
        console(msg)

    return dataclasses.replace(deps, log=log)


def _bring_back(night: Night) -> None:
    """Training may have left the server down and no deploy brought it back: restore it as it was."""
    night.log("no new adapter goes live tonight; bringing the server back as it was")
    back = restore(night.store, night.deps.target, log=night.log)
    night.result.deploy = back
    if not night.state_db_failed:
        try:
            night.db.record_deploy(night.result.run_id, "restore", back.outcome.value, requested=back.requested,
                                   live=back.live, detail=back.message())
        except sqlite3.Error as e:  # the server is back; that the state db could not say so must not hide why
            night.state_db_failed = True
            night.log(f"warning: could not record the restore: {state_error(night.db.path, e)}")
    if night.paused:
        announce_back(night.deps.notifier, "No new adapter tonight.", night.app_name)


def _report(night: Night, result: dict) -> None:
    """report.html and loss.png beside result.json; a report that cannot be written never fails the night."""
    if night.result.train is None:
        return
    try:
        from nightlora.evaluate.report import write_report

        write_report(result, night.run.root, night.run.report, night.run.loss_plot)
    except Exception as e:  # matplotlib or a full disk must not turn a good night into a failed one
        night.log(f"warning: could not write {night.run.report.name}: {type(e).__name__}: {e}")


def _finish(night: Night) -> None:
    r = night.result
    record = r.to_dict()
    atomic_write_json(night.run.result, record)
    _report(night, record)
    live = r.live
    # When state.db failed, result.json says how the night ended; the next run (or `nightlora recover`)
    # copies it into the records.  The status file is still written: the app does not wait for a dead run.
    if night.state_db_failed:
        night.log("warning: the run's end is not recorded in the state database (it failed earlier tonight)")
    else:
        try:
            night.recorder.finish(
                r.run_id, r.status, r.exit_code,
                train_pairs=r.train_pairs,
                eval_score=r.evaluation.score if r.evaluation else None,
                adapter_version=live,
                adapter_path=str(night.store.current_link) if live else None,
                notes=r.message[:500],
            )
        except sqlite3.Error as e:
            night.log(f"warning: could not record the run's end: {state_error(night.db.path, e)}")
    night.status.done(r.message, failed=r.status in ("failed", "interrupted"), adapter_version=live)


@contextlib.contextmanager
def open_night(cfg: Config, deps: RunDeps, state: StatePaths, *, force: bool = False) -> Iterator[Night]:
    with StateDB.for_state_dir(state.root) as db:
        recorder = RunRecorder(db, deps.source.app_recorder(deps.log))
        status = StatusWriter(state.status, past_durations_s=db.durations())
        run = RunPaths(new_run_dir(state))
        rec = recorder.start(run.root)
        deps = _with_run_log(deps, run.log)
        night = Night(cfg, deps, state, run, db, recorder, status,
                      RunResult("failed", 1, "", run_id=rec.id, run_dir=run.root), force=force)
        atomic_write_json(run.config, json.loads(cfg.model_dump_json()))
        result = night.result
        try:
            try:
                yield night
            except sqlite3.Error:
                night.state_db_failed = True
                raise
            finally:
                if night.server_at_risk:
                    _bring_back(night)
        except NightloraError as e:
            result.status = "interrupted" if isinstance(e, Interrupted) else "failed"
            result.exit_code, result.message = e.exit_code, str(e)
            raise
        except sqlite3.Error as e:  # nightlora's own state.db (the sources wrap their databases' errors)
            err = state_error(night.db.path, e)
            result.status, result.exit_code, result.message = "failed", err.exit_code, str(err)
            raise err from e
        except BaseException as e:
            err = Interrupted("interrupted") if isinstance(e, KeyboardInterrupt) else e
            result.status = "interrupted" if isinstance(err, Interrupted) else "failed"
            result.exit_code = getattr(err, "exit_code", 1)
            result.message = str(err) or type(err).__name__
            raise
        finally:
            _finish(night)
