"""B3.1, the feedback gate: is there enough feedback nightlora has not learned from yet?

Reads: the source (one snapshot) and the consumed-feedback cursor (state db).
Ends the night "skipped" when there is too little, unless `run --force`.
Warns when feedback was marked used by something else since the last night (the app's own
exporter, an old nightly job): that feedback is no longer counted as new.  Writes which
ones it warned about (state db), so the next night warns only about newer ones.
"""

from __future__ import annotations

from nightlora.pipeline.night import Night
from nightlora.state import cursor


def run(night: Night) -> str | None:
    source, min_feedback = night.deps.source, night.cfg.data.min_feedback
    night.consumed = cursor.consumed(night.db, source.key)
    with source.snapshot(night.consumed) as snap:
        counts = snap.counts(min_feedback)
        elsewhere = snap.marked_elsewhere()
    new = set(elsewhere) - cursor.noticed_elsewhere(night.db, source.key)
    if new:
        night.log(f"warning: {marked_elsewhere_warning(len(new), source.location)}")
        cursor.notice_elsewhere(night.db, source.key, sorted(new), night.result.run_id)
    night.result.feedback = counts
    if counts.due or night.force:
        return None
    r = night.result
    r.status, r.exit_code = "skipped", 0
    r.message = f"{counts.total} new rated messages, fewer than {min_feedback}: nothing to do"
    return r.status


def marked_elsewhere_warning(n: int, location: str) -> str:
    return (f"{n} ratings in {location} were marked exported by something other than nightlora since its last night "
            "(the app's own export, or an old nightly job such as com.hanni.nightly-train): "
            "they no longer count as new feedback")
