"""The candidate is judged before anything goes live.

Reads: the training metrics.  Raises EvaluationError (the night fails, the server comes
back as it was, no feedback is consumed) when the adapter must not be deployed.
"""

from __future__ import annotations

from nightlora.evaluate.gate import check_promotable
from nightlora.pipeline.night import Night


def run(night: Night) -> str | None:
    check_promotable(night.result.train.metrics)  # type: ignore[union-attr, arg-type]
    return None
