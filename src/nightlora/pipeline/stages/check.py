"""B3.1, the feedback gate: is there enough feedback nightlora has not learned from yet?

Reads: the source (one snapshot) and the consumed-feedback cursor (state db).
Ends the night "skipped" when there is too little, unless `run --force`.
"""

from __future__ import annotations

from nightlora.pipeline.night import Night
from nightlora.state import cursor


def run(night: Night) -> str | None:
    source, min_feedback = night.deps.source, night.cfg.data.min_feedback
    night.consumed = cursor.consumed(night.db, source.key)
    with source.snapshot(night.consumed) as snap:
        counts = snap.counts(min_feedback)
    night.result.feedback = counts
    if counts.due or night.force:
        return None
    r = night.result
    r.status, r.exit_code = "skipped", 0
    r.message = f"{counts.total} new rated messages, fewer than {min_feedback}: nothing to do"
    return r.status
