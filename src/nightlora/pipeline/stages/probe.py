"""The held-out probe, asked through the live server before training and after deploy.

Reads: probe.jsonl beside the source's database (skipped when there is none).
Records the scores; a probe that fails is logged, never a reason to fail the night.
"""

from __future__ import annotations

from nightlora.errors import NightloraError
from nightlora.evaluate.probe import ProbeResult, probe, read_probe
from nightlora.pipeline.night import Night


def _measure(night: Night) -> ProbeResult | None:
    path = night.deps.source.probe_path
    if path is None or not path.is_file() or night.deps.chat is None:
        return None
    try:
        return probe(night.deps.chat, read_probe(path))
    except NightloraError as e:
        night.log(f"probe skipped: {e}")
        return None


def before(night: Night) -> str | None:
    night.result.probe_before = _measure(night)
    return None


def after(night: Night) -> str | None:
    r = night.result
    r.probe_after = after_ = _measure(night)
    if after_ is not None and r.live:
        night.store.update(r.live, eval_score=after_.score)
        if r.probe_before is not None:
            r.message += f"; probe {r.probe_before.correct}/{r.probe_before.total} -> {after_.correct}/{after_.total}"
    return None
