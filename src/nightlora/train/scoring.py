"""What the evaluation needs from a backend, to ask the base model and each adapter the same things.

Both backends implement it (train/torch/scorer.py, train/mlx/scorer.py); evaluate/ uses only
this protocol, so the gate is the same whatever trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: int     # tokens generated (the stop token included)
    stopped: bool   # ended on the chat's stop token, not on the length limit


class Scorer(Protocol):
    #: "torch" or "mlx"
    framework: str
    #: the adapter format ``use`` loads ("peft" or "mlx")
    adapter_format: str

    def use(self, adapter: Path | None) -> None:
        """Answer with this adapter on the base model from now on; None: the base model alone."""

    def losses(self, examples: Sequence[dict], max_seq_length: int) -> list[tuple[float, int]]:
        """Per example (``{"messages", "tools"?}``, the last message the target): summed target loss, target tokens."""

    def generate(self, chats: Sequence[dict], max_new_tokens: int) -> list[Generated]:
        """Greedy replies (temperature 0) to each chat."""

    def close(self) -> None:
        """Free the model."""
