"""After the adapter went live: the feedback it learned from is consumed, old versions pruned.

Reads: <run>/data/manifest.json (exactly the feedback the export saw).  Writes: the
consumed-feedback cursor in state.db, then the source's own flag (Hanni's ``exported``);
that second write failing (the app holds a lock) is a warning, not a failed night:
nightlora's own record already says the feedback is consumed.
"""

from __future__ import annotations

from nightlora.dataset.manifest import read_seen
from nightlora.errors import SourceError
from nightlora.pipeline.night import Night
from nightlora.pipeline.result import CommitResult
from nightlora.state import cursor


def run(night: Night) -> str | None:
    r, source = night.result, night.deps.source
    seen = read_seen(r.export.manifest_path)  # type: ignore[union-attr]
    consumed = cursor.consume(night.db, source.key, seen.iter_keys(), r.run_id)
    commit = r.commit = CommitResult(consumed, 0)
    try:
        commit.marked_in_source = source.mark_consumed(seen)
    except SourceError as e:
        commit.warning = f"the feedback is consumed, but marking it in the app failed: {e}"
        night.log(f"warning: {commit.warning}")
    commit.pruned = [v.name for v in night.store.prune(night.cfg.store.keep_versions)]
    r.status, r.exit_code = "completed", 0
    r.message = f"{r.live} is live ({r.export.counts['train']} training examples)"  # type: ignore[union-attr]
    return None
