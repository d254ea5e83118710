"""The base model with PEFT LoRA on its last ``num_layers`` blocks, laid out as mlx_lm lays its LoRA.

Mapping to mlx_lm (mlx_lm/tuner/utils.py linear_to_lora_layers, tuner/lora.py LoRALinear):
- layers: mlx_lm converts the last ``num_layers`` blocks; here ``layers_to_transform``
  lists the same blocks.
- modules: mlx_lm converts every Linear inside those blocks (attention q/k/v/o and the
  MLP gate/up/down on Llama); here ``target_modules`` is the set of Linear names found
  inside the blocks, so it follows the architecture the same way.
- scale: mlx_lm adds ``scale * (x A) B``; PEFT adds ``(alpha / rank) * B(A x)``, so
  mlx ``scale`` = ``lora_alpha / lora_rank`` (rank 8, alpha 16 -> scale 2).
- dropout: both drop the input of the LoRA branch only.
- init: both draw A from U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))) and
  start B at zero, so a new adapter starts as the base model.
- layout: mlx ``lora_a`` is (in, rank) and ``lora_b`` (rank, out): the transposes of PEFT's
  ``lora_A.weight`` (rank, in) and ``lora_B.weight`` (out, rank).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from nightlora.errors import ModelError, TrainError
from nightlora.paths import AdapterFiles
from nightlora.train.base import HyperParams

try:
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover -- safetensors comes with transformers
    SafetensorError = OSError  # type: ignore[misc,assignment]

# What loading a model folder raises when its files are missing, cut short or not a model transformers knows.
MODEL_LOAD_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, SafetensorError)


def load_base_model(base_model: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The base model's weights, or ModelError naming the folder and what is wrong with it."""
    try:
        return AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    except MODEL_LOAD_ERRORS as e:
        raise ModelError(f"cannot load the base model {base_model}: {type(e).__name__}: {e}") from e


def _blocks(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the ModuleList as long as the config's layer count."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise TrainError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def lora_config(model: PreTrainedModel, hp: HyperParams) -> LoraConfig:
    name, blocks = _blocks(model)
    linear_names = sorted({
        sub.rsplit(".", 1)[-1] for block in blocks for sub, m in block.named_modules() if isinstance(m, nn.Linear)
    })
    total = len(blocks)
    return LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=linear_names,
        layers_to_transform=list(range(total - hp.num_layers, total)),
        layers_pattern=name.rsplit(".", 1)[-1],
        bias="none",
        task_type="CAUSAL_LM",
    )


def _check_init_adapter(path: Path, wanted: LoraConfig, total_layers: int) -> None:
    """A continued adapter keeps its shape: refuse one whose rank, alpha or layers differ from the request."""
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise TrainError(f"init adapter {path} has no adapter_config.json: not a PEFT adapter (convert MLX adapters first)")
    if not (path / AdapterFiles.PEFT_WEIGHTS).is_file():  # PEFT would fall back to a pickle (adapter_model.bin)
        raise TrainError(f"init adapter {path} has no {AdapterFiles.PEFT_WEIGHTS}: adapters load only from safetensors files")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise TrainError(f"init adapter {path} is a {cfg.get('peft_type')!r} adapter, not LoRA")
    have_layers = cfg.get("layers_to_transform") or list(range(total_layers))
    have_layers = [have_layers] if isinstance(have_layers, int) else have_layers
    have = (cfg.get("r"), float(cfg.get("lora_alpha", 0)), sorted(have_layers))
    want = (wanted.r, float(wanted.lora_alpha), sorted(wanted.layers_to_transform))
    if have != want:
        raise TrainError(
            f"init adapter {path} has rank {have[0]}, alpha {have[1]:g}, {len(have[2])} layers; "
            f"the hyperparameters ask for rank {want[0]}, alpha {want[1]:g}, {len(want[2])} layers"
        )


def build_lora_model(base_model: Path, hp: HyperParams, dtype: torch.dtype, init_adapter: Path | None) -> PeftModel:
    """Load the base model frozen in ``dtype`` and add a trainable LoRA (fresh, or ``init_adapter``'s)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress reporting is the one the user reads
    model = load_base_model(base_model, dtype)
    model.config.use_cache = False  # the KV cache is for generation; training only wastes memory on it
    if hp.grad_checkpoint:
        # Non-reentrant checkpointing works with frozen inputs and under DDP.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    wanted = lora_config(model, hp)
    if init_adapter is not None:
        _check_init_adapter(Path(init_adapter), wanted, model.config.num_hidden_layers)
    with warnings.catch_warnings():
        # PEFT still reads transformers' deprecated `is_gradient_checkpointing`; nothing to act on here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if init_adapter is None:
            return get_peft_model(model, wanted)
        return PeftModel.from_pretrained(model, Path(init_adapter), is_trainable=True)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the LoRA weights (small), to keep the best ones seen."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])
