"""Choosing the training backend: mlx on Apple silicon, torch elsewhere."""

from __future__ import annotations

import platform

from nightlora.errors import TrainError
from nightlora.train.base import Trainer

BACKENDS = ("auto", "mlx", "torch")


def resolve_backend(backend: str) -> str:
    """The backend's name: "auto" becomes the one that runs best on this machine."""
    if backend not in BACKENDS:
        raise TrainError(f"unknown training backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend != "auto":
        return backend
    return "mlx" if platform.system() == "Darwin" and platform.machine() == "arm64" else "torch"


def make_trainer(backend: str) -> Trainer:
    """A trainer for ``backend``; its framework is imported only now, so the CLI starts fast."""
    name = resolve_backend(backend)
    try:
        if name == "mlx":
            from nightlora.train.mlx.backend import MlxTrainer

            return MlxTrainer()
        from nightlora.train.torch.backend import TorchTrainer

        return TorchTrainer()
    except ImportError as e:
        extra = "mlx" if name == "mlx" else "torch"
        raise TrainError(f"the {name} backend cannot load ({e}); install nightlora[{extra}]") from None
