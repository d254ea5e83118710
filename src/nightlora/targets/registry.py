"""Where adapters go live: ``[target] kind = ...``."""

from __future__ import annotations

from nightlora.kinds import Kind
from nightlora.targets.mlx_lm.config import MlxLmTargetConfig
from nightlora.targets.none.config import NoneTargetConfig
from nightlora.targets.vllm.config import VllmTargetConfig

TARGETS: dict[str, Kind] = {
    "mlx_lm": Kind(MlxLmTargetConfig, "nightlora.targets.mlx_lm.target:build"),
    "none": Kind(NoneTargetConfig, "nightlora.targets.none.target:build"),
    "vllm": Kind(VllmTargetConfig, "nightlora.targets.vllm.target:build"),
}
