"""After a run killed outright (SIGKILL, power loss): its record says interrupted, the server answers.

Safe any time no run holds the lock; `nightlora run` calls it first, `nightlora recover` alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from nightlora.config import Config
from nightlora.errors import Interrupted
from nightlora.paths import RunPaths, StatePaths
from nightlora.pipeline.night import RunDeps
from nightlora.state.db import FINAL_STATUSES, RunRecord, RunRecorder, StateDB
from nightlora.state.status_file import StatusWriter
from nightlora.state.store import AdapterStore
from nightlora.targets.deploy import DeployResult, Outcome, restore


def _ended(rec: RunRecord) -> dict | None:
    """How the run ended by its own result.json, when it wrote one but could not record it (state.db locked)."""
    if not rec.run_dir:
        return None
    try:
        result = json.loads((RunPaths(Path(rec.run_dir)).result).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(result, dict) and result.get("status") in FINAL_STATUSES and isinstance(result.get("exit_code"), int)
    return result if ok else None


def recover(cfg: Config, deps: RunDeps) -> DeployResult | None:
    """Mark unfinished runs interrupted and make the server answer; None when the server is not ours."""
    state = StatePaths(cfg.source.state_path)
    store = AdapterStore(state.adapters)
    with StateDB.for_state_dir(state.root) as db:
        recorder = RunRecorder(db, deps.source.app_recorder(deps.log))
        for rec in db.recent_runs(50):
            if rec.status != "running":
                continue
            ended = _ended(rec)
            if ended is not None:
                deps.log(f"run {rec.id} ended {ended['status']} but could not record it; recording it now")
                live = (ended.get("deploy") or {}).get("live") if isinstance(ended.get("deploy"), dict) else None
                recorder.finish(rec.id, ended["status"], ended["exit_code"], notes=str(ended.get("message") or "")[:500],
                                adapter_version=live if isinstance(live, str) else None)
            else:
                deps.log(f"run {rec.id} (stage {rec.stage}) did not finish; marking it interrupted")
                recorder.finish(rec.id, "interrupted", Interrupted.exit_code,
                                notes=f"interrupted during {rec.stage}; repaired by a later run")
        repaired = recorder.resync_app(db.recent_runs(50), lambda r: str(store.current_link) if r.adapter_version else None)
        if repaired:
            deps.log(f"runs {', '.join(map(str, repaired))} ended without the app's record saying so; recorded there now")
        if not deps.target.managed:
            return None
        result = restore(store, deps.target, log=deps.log)
        if result.outcome != Outcome.UNCHANGED:
            deps.log(f"server: {result.message()}")
            db.record_deploy(None, "recover", result.outcome.value, requested=result.requested, live=result.live,
                             detail=result.message())
    StatusWriter(state.status).done(f"recovered: {result.message()}", failed=not result.ok)
    return result
