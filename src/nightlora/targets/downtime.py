"""Should the assistant's server be stopped while training runs? (server.stop_during_training)

``always`` / ``never`` decide by themselves.  ``auto`` keeps the server up only
when the memory left would hold both: the served model plus what training
needs, plus a safety margin, must fit in the memory available now.  Counting
the served model although it is already loaded is deliberate: its caches grow
while it answers, and on Linux its mmap'd weights can show as "available" page
cache.  Running out of memory mid-training is worse than a planned pause: on
Linux the OOM killer may pick the server, on macOS everything swaps.

The training estimate (bytes), documented so it can be checked and tuned:

    weights      the base model's weight files again (training loads its own copy; same dtype as on disk)
    lora         trainable LoRA parameters x 16 bytes (fp32 weight, gradient, two Adam moments)
    activations  per layer and token, ~34 x hidden bytes (Korthikanti et al. 2022, 16-bit activations)
                 + 5 x heads x seq_len bytes (attention scores); with gradient checkpointing only the
                 layer inputs (2 x hidden bytes per layer and token) are kept, plus one layer's full set
    logits       batch x seq_len x vocab x 8 bytes (fp32 logits and their softmax/gradient)
    total        (weights + lora + activations + logits) x 1.2 for the framework's buffers
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from nightlora.platform.memory import MemoryInfo, read_memory

GiB = 1024**3
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".npz", ".pt", ".pth")
OVERHEAD = 1.2
Mode = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class ModelShape:
    weights_bytes: int
    hidden: int
    layers: int
    heads: int
    vocab: int


@dataclass(frozen=True)
class DowntimeDecision:
    stop: bool
    reason: str
    mode: str
    served_bytes: int | None = None
    training_bytes: int | None = None
    available_bytes: int | None = None
    margin_bytes: int | None = None


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def weights_bytes(model_dir: Path) -> int:
    """The size of a model folder's weight files (what loading it costs, roughly)."""
    root = Path(model_dir)
    if root.is_file():
        return root.stat().st_size
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def model_shape(model_dir: Path) -> ModelShape:
    """Sizes from the model's config.json (missing keys: small-model guesses that err large)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    cfg = {**cfg.get("text_config", {}), **cfg} if isinstance(cfg, dict) else {}
    return ModelShape(
        weights_bytes=weights_bytes(model_dir),
        hidden=int(cfg.get("hidden_size", 4096)),
        layers=int(cfg.get("num_hidden_layers", 32)),
        heads=int(cfg.get("num_attention_heads", 32)),
        vocab=int(cfg.get("vocab_size", 128_000)),
    )


def estimate_training_bytes(
    shape: ModelShape,
    *,
    batch_size: int,
    seq_len: int,
    lora_rank: int,
    lora_layers: int | None = None,
    grad_checkpoint: bool = True,
) -> int:
    """Peak memory of a LoRA training run, by the formula in this module's docstring."""
    b, s, h, L = batch_size, seq_len, shape.hidden, shape.layers
    adapted = min(lora_layers or L, L)
    # q, k, v, o and the three MLP projections, each with A (h x r) and B (r x h) (MLP sides taken as h).
    lora = adapted * 7 * 2 * lora_rank * h * 16
    full_layer = b * s * h * 34 + 5 * shape.heads * s * s * b
    if grad_checkpoint:
        activations = b * s * h * 2 * L + full_layer
    else:
        activations = full_layer * L
    logits = b * s * shape.vocab * 8
    return int((shape.weights_bytes + lora + activations + logits) * OVERHEAD)


def decide_downtime(
    mode: Mode,
    *,
    served_bytes: int,
    training_bytes: int,
    memory: MemoryInfo | None,
) -> DowntimeDecision:
    if mode == "always":
        return DowntimeDecision(True, "server.stop_during_training = always", mode)
    if mode == "never":
        return DowntimeDecision(False, "server.stop_during_training = never", mode)
    if mode != "auto":
        raise ValueError(f"stop_during_training must be auto, always or never, not {mode!r}")
    if memory is None:
        return DowntimeDecision(True, "free memory unknown: stopping the server to be safe", mode,
                                served_bytes, training_bytes)
    margin = max(GiB, int(0.1 * memory.total_bytes)) if memory.total_bytes else GiB
    need = served_bytes + training_bytes + margin
    numbers = (f"served model {_gib(served_bytes)} + training ~{_gib(training_bytes)} + margin {_gib(margin)} "
               f"= {_gib(need)} vs {_gib(memory.available_bytes)} available ({memory.source})")
    stop = need > memory.available_bytes
    reason = ("not enough memory for both: " if stop else "enough memory for both: ") + numbers
    return DowntimeDecision(stop, reason, mode, served_bytes, training_bytes, memory.available_bytes, margin)


def plan_downtime(
    mode: Mode,
    model_dir: Path,
    *,
    batch_size: int,
    seq_len: int,
    lora_rank: int,
    lora_layers: int | None = None,
    grad_checkpoint: bool = True,
    memory_reader: Callable[[], MemoryInfo | None] = read_memory,
) -> DowntimeDecision:
    """The decision for serving and training the same base model (``model_dir``)."""
    shape = model_shape(model_dir)
    need = estimate_training_bytes(shape, batch_size=batch_size, seq_len=seq_len, lora_rank=lora_rank,
                                   lora_layers=lora_layers, grad_checkpoint=grad_checkpoint)
    memory = memory_reader() if mode == "auto" else None
    return decide_downtime(mode, served_bytes=shape.weights_bytes, training_bytes=need, memory=memory)


def _margin(memory: MemoryInfo) -> int:
    return max(GiB, int(0.1 * memory.total_bytes)) if memory.total_bytes else GiB


def plan_training_memory(
    mode: Mode,
    model_dir: Path,
    *,
    batch_size: int,
    seq_len: int,
    lora_rank: int,
    lora_layers: int | None = None,
    grad_checkpoint: bool | None = None,
    memory_reader: Callable[[], MemoryInfo | None] = read_memory,
) -> tuple[DowntimeDecision, bool, str]:
    """The downtime decision and whether training needs gradient checkpointing.

    ``grad_checkpoint=None`` chooses: checkpointing saves memory by computing every layer's
    forward pass twice (a third more time), so it is on only when training without it would
    not fit in the memory available (beside the server, when the server keeps serving).
    """
    shape = model_shape(model_dir)

    def need(gc: bool) -> int:
        return estimate_training_bytes(shape, batch_size=batch_size, seq_len=seq_len, lora_rank=lora_rank,
                                       lora_layers=lora_layers, grad_checkpoint=gc)

    if grad_checkpoint is not None:
        return (plan_downtime(mode, model_dir, batch_size=batch_size, seq_len=seq_len, lora_rank=lora_rank,
                              lora_layers=lora_layers, grad_checkpoint=grad_checkpoint, memory_reader=memory_reader),
                grad_checkpoint, "set in config")
    memory = memory_reader()
    for gc in (False, True):
        decision = decide_downtime(mode, served_bytes=shape.weights_bytes, training_bytes=need(gc), memory=memory)
        if memory is None:
            break
        beside = 0 if decision.stop else shape.weights_bytes
        if need(gc) + beside + _margin(memory) <= memory.available_bytes:
            why = (f"{'off' if not gc else 'on'}: training needs ~{_gib(need(gc))}"
                   + ("" if not gc else f" with it, ~{_gib(need(False))} without")
                   + f", {_gib(memory.available_bytes)} available")
            return decision, gc, why
    decision = decide_downtime(mode, served_bytes=shape.weights_bytes, training_bytes=need(True), memory=memory)
    return decision, True, "on: free memory is unknown or short"
