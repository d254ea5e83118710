"""`nightlora run`: one night, as a short list of stages.

    check -> export -> distill -> guard -> train -> evaluate -> deploy -> commit
    (and always, at the end: record, with report.html)

Each stage hands its work to the next through files in one run folder
(``<state>/runs/<id>/``: config.json, data/, the adapter, run.log, result.json), so each
can also run alone (`nightlora export`, `nightlora train`, ...).  docs/architecture.md
says what each reads and writes.

The assistant is never left down: the server is stopped only around training (and only
when memory requires it, targets/downtime.py); a failure or an interruption before the
deploy stage brings it back as it was (night.py), a new adapter that fails health is
rolled back (targets/deploy.py), and a run killed outright is repaired by the next run or
by `nightlora recover`.  Feedback is consumed only when the new adapter went live, and
only the feedback the export saw.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from typing import Any, Iterator

from nightlora.config import Config
from nightlora.errors import Interrupted, StateError
from nightlora.paths import StatePaths
from nightlora.pipeline.lock import RunLock
from nightlora.pipeline.night import RunDeps, open_night
from nightlora.pipeline.recover import recover
from nightlora.pipeline.result import RunResult
from nightlora.pipeline.stage import Stage, run_stage
from nightlora.pipeline.stages import check, commit, deploy, distill, evaluate, export, guard, train
from nightlora.platform.fsutil import private_dir
from nightlora.state.db import state_error

STAGES: tuple[Stage, ...] = (
    Stage("check", "counting new feedback", check.run),
    Stage("export", "exporting the rated conversations as a dataset", export.run),
    Stage("distill", "asking a teacher for better replies", distill.run),
    Stage("guard", "checking power, free disk and memory before training", guard.run),
    Stage("train", "training a LoRA adapter", train.run),
    Stage("evaluate", "comparing the new adapter with the live one and the base model", evaluate.run),
    Stage("deploy", "putting the new adapter live", deploy.run),
    Stage("commit", "recording the feedback this adapter learned from", commit.run),
)


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


def run_nightly(cfg: Config, deps: RunDeps, *, force: bool = False) -> RunResult:
    """One night. Returns a RunResult; raises only NightloraError (after cleaning up)."""
    try:
        state = StatePaths(private_dir(cfg.source.state_path))
    except OSError as e:
        raise StateError(f"cannot create nightlora's state folder {cfg.source.state_path}: {e.strerror or e} "
                         "(source.state_dir: a folder this user may write)") from None
    with RunLock(state.lock) as lock, _signals_raise():
        if lock.stale is not None:
            deps.log(f"a previous run ({lock.stale.describe()}) ended without releasing the lock; cleared")
        try:
            recover(cfg, deps)
            with open_night(cfg, deps, state, force=force) as night:
                for stage in STAGES:
                    if run_stage(night, stage) is not None:
                        break
        except sqlite3.Error as e:  # state.db before the night had its record (open_night converts the rest)
            raise state_error(state.state_db, e) from e
    return night.result
