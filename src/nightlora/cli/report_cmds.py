"""Commands for reading what the nights did: report, status."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nightlora.cli.common import AppState, emit, json_option, pass_state
from nightlora.errors import StateError
from nightlora.paths import RunPaths, StatePaths
from nightlora.state.db import RunRecord, StateDB
from nightlora.state.status_file import read_status


def _run_folder(state: StatePaths, run: str | None) -> Path:
    if run is not None and Path(run).expanduser().is_dir():
        return Path(run).expanduser()
    if not state.state_db.is_file():
        raise StateError(f"no runs yet ({state.state_db} does not exist)")
    with StateDB(state.state_db) as db:
        if run is None:
            recs = [r for r in db.recent_runs(50) if r.run_dir and RunPaths(Path(r.run_dir)).result.is_file()]
            if not recs:
                raise StateError("no finished run has a report yet")
            return Path(recs[0].run_dir)  # type: ignore[arg-type]
        try:
            rec = db.run(int(run))
        except ValueError:
            raise StateError(f"RUN must be a run number (see `nightlora status`) or a run folder, not {run!r}") from None
    if not rec.run_dir:
        raise StateError(f"run {run} has no folder")
    return Path(rec.run_dir)


@click.command()
@click.argument("run", required=False)
@json_option
@pass_state
def report(state: AppState, run: str | None, as_json: bool) -> None:
    """Where RUN's report.html is (default: the latest run), and what it says in short."""
    from nightlora.evaluate.report import summary

    cfg = state.config()
    paths = RunPaths(_run_folder(StatePaths(cfg.source.state_path), run))
    try:
        result = json.loads(paths.result.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StateError(f"cannot read {paths.result}: {e}") from None
    out = {"report": str(paths.report) if paths.report.is_file() else None, "result": str(paths.result),
           "status": result.get("status"), "message": result.get("message"),
           "evaluation": result.get("evaluation")}
    emit(out, as_json, lambda o: "\n".join([f"report: {o['report'] or '(none: this run did not train)'}",
                                            summary(result)]))


def _row(r: RunRecord) -> dict:
    d = {k: getattr(r, k) for k in ("id", "started_at", "status", "stage", "adapter_version", "eval_score",
                                    "train_pairs", "notes")}
    d["duration_s"] = r.duration_s
    return d


def _status_text(o: dict) -> str:
    now = o["now"]
    lines = [f"now: {now['state']}" + (f" ({now['stage']})" if now.get("stage") and now["state"] == "running" else "")
             + (f", live adapter {o['live']}" if o.get("live") else ", no adapter live")]
    if not o["runs"]:
        return "\n".join(lines + ["no runs yet"])
    last = o["runs"][0]
    if last["status"] == "postponed":  # the reason in full: the table cuts notes short
        lines.append(f"last night was postponed: {last['notes'] or '(no reason recorded)'}")
    lines.append(f"  {'RUN':>4} {'STARTED':<19} {'STATUS':<12} {'ADAPTER':<8} {'SCORE':>6} {'TIME':>6}  NOTES")
    for r in o["runs"]:
        score = f"{r['eval_score']:.3f}" if r["eval_score"] is not None else "-"
        took = f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-"
        lines.append(f"  {r['id']:>4} {(r['started_at'] or '')[:19].replace('T', ' '):<19} {r['status']:<12} "
                     f"{r['adapter_version'] or '-':<8} {score:>6} {took:>6}  {(r['notes'] or '')[:70]}")
    lines.append("score: the share of the base model's loss on your held-out replies the adapter removes")
    return "\n".join(lines)


@click.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many runs to show.")
@json_option
@pass_state
def status(state: AppState, limit: int, as_json: bool) -> None:
    """What nightlora is doing now, and the history of its runs with their scores."""
    from nightlora.state.store import AdapterStore

    cfg = state.config()
    paths = StatePaths(cfg.source.state_path)
    runs = []
    if paths.state_db.is_file():
        with StateDB(paths.state_db) as db:
            runs = [_row(r) for r in db.recent_runs(limit)]
    st = read_status(paths.status)
    live = AdapterStore(paths.adapters).current()
    out = {"now": st.to_dict() if st else {"state": "idle"}, "live": live.name if live else None, "runs": runs}
    emit(out, as_json, _status_text)


COMMANDS: list[click.Command] = [report, status]
