"""After a run killed outright (SIGKILL, power loss): its record says interrupted, the server answers.

Safe any time no run holds the lock; `nightlora run` calls it first, `nightlora recover` alone.
"""

from __future__ import annotations

from nightlora.config import Config
from nightlora.errors import Interrupted
from nightlora.paths import StatePaths
from nightlora.pipeline.night import RunDeps
from nightlora.state.db import RunRecorder, StateDB
from nightlora.state.status_file import StatusWriter
from nightlora.state.store import AdapterStore
from nightlora.targets.deploy import DeployResult, Outcome, restore


def recover(cfg: Config, deps: RunDeps) -> DeployResult | None:
    """Mark unfinished runs interrupted and make the server answer; None when the server is not ours."""
    state = StatePaths(cfg.source.state_path)
    with StateDB.for_state_dir(state.root) as db:
        recorder = RunRecorder(db, deps.source.app_recorder(deps.log))
        for rec in db.recent_runs(50):
            if rec.status == "running":
                deps.log(f"run {rec.id} (stage {rec.stage}) did not finish; marking it interrupted")
                recorder.finish(rec.id, "interrupted", Interrupted.exit_code,
                                notes=f"interrupted during {rec.stage}; repaired by a later run")
        if not deps.target.managed:
            return None
        result = restore(AdapterStore(state.adapters), deps.target, log=deps.log)
        if result.outcome != Outcome.UNCHANGED:
            deps.log(f"server: {result.message()}")
            db.record_deploy(None, "recover", result.outcome.value, requested=result.requested, live=result.live,
                             detail=result.message())
    StatusWriter(state.status).done(f"recovered: {result.message()}", failed=not result.ok)
    return result
