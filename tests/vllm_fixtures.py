"""The vLLM server for the vllm target's tests: vLLM's CPU build from its own environment
(.cache/vllm-venv, installed by `make setup`), started once per session as a real process
on 127.0.0.1 by the target's own process manager and command line, stopped by its pid.
Adapters are real PEFT adapters of the demo model with non-zero B matrices (a fresh one
changes nothing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from nightlora.platform.net import base_url
from server_fixtures import free_port

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".cache" / "vllm-venv" / "bin" / "python"
MAX_LORA_RANK = 16


def vllm_config(**over: object):
    from nightlora.targets.vllm.config import VllmTargetConfig

    fields: dict = dict(python=VLLM_PYTHON, max_lora_rank=MAX_LORA_RANK,
                        # float32: greedy answers do not change with the batch they share (bf16 may)
                        extra_args=["--max-model-len", "2048", "--dtype", "float32"],
                        env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    fields.update(over)
    return VllmTargetConfig(**fields)


def make_peft_adapter(model_dir: Path, out: Path, seed: int, rank: int = 8, scale: float = 0.06) -> Path:
    """A PEFT LoRA adapter of ``model_dir`` whose B matrices are random (seeded), saved by PEFT itself."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # lora_A's initialization draws from the global generator
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def peft_adapters(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft")
    return {"a": make_peft_adapter(smollm2_dir, root / "a", seed=1),
            "b": make_peft_adapter(smollm2_dir, root / "b", seed=2),
            "c": make_peft_adapter(smollm2_dir, root / "c", seed=3),
            "too_big": make_peft_adapter(smollm2_dir, root / "big", seed=4, rank=2 * MAX_LORA_RANK)}


def wait_ready(url: str, alive, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert alive(), "vLLM exited while starting"
        try:
            if httpx.get(url + "/v1/models", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"vLLM not ready after {timeout:g} s")


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a running vLLM serving the demo model with runtime LoRA updating."""
    from nightlora.targets.mlx_lm.process import ProcessManager
    from nightlora.targets.vllm.target import vllm_command

    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: `make setup` installs vLLM's CPU build there")
    cfg = vllm_config(vllm_port=free_port())
    manager = ProcessManager(vllm_command(cfg, str(smollm2_dir)), tmp_path_factory.mktemp("vllm-state"))
    manager.start()
    try:
        url = base_url(cfg.vllm_host, cfg.vllm_port)
        try:
            wait_ready(url, manager.is_running)
        except AssertionError as e:
            raise AssertionError(f"{e}: {manager.log_tail(5)}") from None
        yield url
    finally:
        manager.stop()  # by its pid file, process group included
