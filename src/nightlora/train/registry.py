"""The training backends: ``[train] backend = ...`` (auto: mlx on Apple silicon, torch elsewhere)."""

from __future__ import annotations

import platform

from nightlora.errors import TrainError
from nightlora.train.base import Trainer

# name -> ("module:class", the pip extra that brings its framework); imported only when chosen.
TRAINERS: dict[str, tuple[str, str]] = {
    "mlx": ("nightlora.train.mlx.backend:MlxTrainer", "mlx"),
    "torch": ("nightlora.train.torch.backend:TorchTrainer", "torch"),
}
BACKENDS = ("auto", *TRAINERS)


def resolve_backend(backend: str) -> str:
    """The backend's name: "auto" becomes the one that runs best on this machine."""
    if backend != "auto" and backend not in TRAINERS:
        raise TrainError(f"unknown training backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend != "auto":
        return backend
    return "mlx" if platform.system() == "Darwin" and platform.machine() == "arm64" else "torch"


def make_trainer(backend: str) -> Trainer:
    """A trainer for ``backend``; its framework is imported only now, so the CLI starts fast."""
    import importlib

    name = resolve_backend(backend)
    target, extra = TRAINERS[name]
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)()
    except ImportError as e:
        raise TrainError(f"the {name} backend cannot load ({e}); install nightlora[{extra}]") from None
