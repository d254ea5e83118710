"""What a trained adapter must pass before it goes live.

The rule today: the test loss must be a finite number (a NaN or infinite loss means
training diverged; such an adapter is never deployed).  The probe score (probe.py) is
recorded, not used to gate.
"""

from __future__ import annotations

import math

from nightlora.errors import EvaluationError
from nightlora.train.base import TrainMetrics


def check_promotable(metrics: TrainMetrics) -> None:
    """Raise EvaluationError unless the adapter may be deployed."""
    if metrics.test_loss is None:
        raise EvaluationError("training recorded no test loss; refusing to deploy an unchecked adapter")
    if not math.isfinite(metrics.test_loss):
        raise EvaluationError(f"test loss is {metrics.test_loss}: training diverged; the adapter is not deployed")
    bad = [step for step, loss in metrics.train_loss if not math.isfinite(loss)]
    if bad:
        raise EvaluationError(f"train loss was not finite at step {bad[0]}; the adapter is not deployed")
