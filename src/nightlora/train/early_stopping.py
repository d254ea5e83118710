"""Early stopping on validation loss, keeping the best weights: the same rule for both backends."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

W = TypeVar("W")


@dataclass
class EarlyStopping(Generic[W]):
    """Validation losses, the best weights seen, and the count of validations without improvement.

    ``snapshot`` returns the trainable weights as they are now, in a form the backend can load
    back (mlx: references to immutable arrays; torch: detached copies).
    """

    patience: int  # validations without improvement before stopping; 0 = never stop
    snapshot: Callable[[], W]
    losses: list[tuple[int, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int | None = None
    best_weights: W | None = None
    without_improvement: int = 0

    def record(self, step: int, loss: float) -> None:
        self.losses.append((step, loss))
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.best_weights = loss, step, self.snapshot()
            self.without_improvement = 0
        else:
            self.without_improvement += 1

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.without_improvement >= self.patience

    @property
    def best_is_earlier(self) -> bool:
        """The last validated weights are not the best: the best must be loaded back."""
        return self.best_weights is not None and self.best_step != self.losses[-1][0]
