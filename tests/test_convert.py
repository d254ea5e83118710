"""PEFT <-> mlx_lm adapter conversion: the converted adapter computes the same logits in the
other framework, on a real tiny Llama, with adapters whose weights are all non-zero.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from nightlora.errors import ModelError
from nightlora.train.base import HyperParams, TrainRequest, read_adapter_meta
from nightlora.train.convert import mlx_to_peft, peft_to_mlx
from nightlora.train.mlx.backend import MlxTrainer
from nightlora.train.torch.backend import TorchTrainer
from persona_data import HELD_OUT, write_persona_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Both frameworks compute in fp32; their logits differ by float rounding only (measured <= 3e-7).
LOGIT_TOL = 1e-4
# An adapter that matters moves the logits by far more than that.
ADAPTER_EFFECT = 0.1


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def prompts(tokenizer) -> list[list[int]]:
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               return_dict=False)) for q in HELD_OUT]


def torch_logits(model_dir: Path, peft_dir: Path | None, batch: list[list[int]]) -> list[np.ndarray]:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if peft_dir is not None:
        model = PeftModel.from_pretrained(model, peft_dir)
    with torch.no_grad():
        return [model.eval()(torch.tensor([ids])).logits[0].numpy() for ids in batch]


def mlx_logits(model_dir: Path, mlx_dir: Path | None, batch: list[list[int]]) -> list[np.ndarray]:
    model, _ = load(str(model_dir), adapter_path=str(mlx_dir) if mlx_dir else None)
    return [np.array(model(mx.array([ids]))[0]) for ids in batch]


def make_peft_adapter(model_dir: Path, dest: Path, dtype: torch.dtype = torch.float32, **lora) -> Path:
    """A PEFT LoRA whose B is random too (PEFT starts B at zero: a zero adapter would match anything)."""
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(task_type="CAUSAL_LM", **lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    model.to(dtype).save_pretrained(dest)
    return dest


def make_mlx_adapter(model_dir: Path, dest: Path, num_layers: int, params: dict) -> Path:
    """An mlx_lm LoRA adapter folder with random A and B, as `mlx_lm lora` lays it out."""
    mx.random.seed(0)
    model, _ = load(str(model_dir))
    model.freeze()
    linear_to_lora_layers(model, num_layers, params)
    for _, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.5
    dest.mkdir()
    mx.save_safetensors(str(dest / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (dest / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params}))
    return dest


PEFT_CASES = {
    "every block, every Linear": dict(r=4, lora_alpha=8, target_modules=LINEARS),
    # Block 1 is not adapted: mlx_lm needs a no-op LoRA there, since it adapts the last N blocks.
    "rslora, block 0, q and v": dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj"],
                                     layers_to_transform=[0], lora_dropout=0.1),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_adapter_converted_to_mlx_gives_the_same_logits(case: str, tiny_model_dir: Path, tokenizer, tmp_path: Path):
    peft_dir = make_peft_adapter(tiny_model_dir, tmp_path / "peft", **PEFT_CASES[case])
    mlx_dir = peft_to_mlx(peft_dir, tmp_path / "mlx", tiny_model_dir)

    ids = prompts(tokenizer)[:1]
    (want,), (got,) = torch_logits(tiny_model_dir, peft_dir, ids), mlx_logits(tiny_model_dir, mlx_dir, ids)
    assert np.abs(got - want).max() <= LOGIT_TOL
    assert np.abs(want - torch_logits(tiny_model_dir, None, ids)[0]).max() >= ADAPTER_EFFECT

    cfg = json.loads((mlx_dir / "adapter_config.json").read_text())
    if case.startswith("rslora"):
        assert cfg["num_layers"] == 2
        assert cfg["lora_parameters"] == {"rank": 4, "scale": 3.0, "dropout": 0.1, "keys": ["self_attn.q_proj", "self_attn.v_proj"]}


def test_mlx_adapter_converted_to_peft_gives_the_same_logits(tiny_model_dir: Path, tokenizer, tmp_path: Path):
    mlx_dir = make_mlx_adapter(tiny_model_dir, tmp_path / "mlx", 1, {"rank": 4, "scale": 3.0, "dropout": 0.0})
    peft_dir = mlx_to_peft(mlx_dir, tmp_path / "peft", tiny_model_dir)

    ids = prompts(tokenizer)[:1]
    (want,), (got,) = mlx_logits(tiny_model_dir, mlx_dir, ids), torch_logits(tiny_model_dir, peft_dir, ids)
    assert np.abs(got - want).max() <= LOGIT_TOL
    assert np.abs(want - mlx_logits(tiny_model_dir, None, ids)[0]).max() >= ADAPTER_EFFECT
    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["layers_to_transform"]) == (4, 12.0, [1])


def test_round_trip_is_bit_exact_and_keeps_bf16(tiny_model_dir: Path, tmp_path: Path):
    peft_dir = make_peft_adapter(tiny_model_dir, tmp_path / "peft", torch.bfloat16, r=4, lora_alpha=8,
                                 target_modules=LINEARS)
    back = mlx_to_peft(peft_to_mlx(peft_dir, tmp_path / "mlx", tiny_model_dir), tmp_path / "back", tiny_model_dir)
    before, after = load_file(peft_dir / "adapter_model.safetensors"), load_file(back / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert all(after[k].dtype == torch.bfloat16 and torch.equal(before[k], after[k]) for k in before)
    cfg = json.loads((back / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (4, 8.0)


def test_trained_adapters_choose_the_same_next_tokens_in_both_frameworks(tiny_model_dir: Path, tokenizer,
                                                                         tmp_path: Path):
    data = write_persona_dataset(tmp_path / "persona", n_train=8, n_valid=0, n_test=0)
    hp = HyperParams(iters=4, batch_size=2, learning_rate=1e-2, warmup_steps=0, lora_rank=8, lora_alpha=16.0,
                     lora_dropout=0.0, num_layers=2, max_seq_length=512, grad_checkpoint=False, eval_every=4,
                     early_stopping_patience=0, seed=0)
    TorchTrainer().train(TrainRequest(data, tiny_model_dir, tmp_path / "torch", hp))
    MlxTrainer().train(TrainRequest(data, tiny_model_dir, tmp_path / "mlx", replace(hp, batch_size=1)))
    pairs = [  # (PEFT folder, mlx folder) of each trained adapter
        (tmp_path / "torch", peft_to_mlx(tmp_path / "torch", tmp_path / "torch-as-mlx", tiny_model_dir)),
        (mlx_to_peft(tmp_path / "mlx", tmp_path / "mlx-as-peft", tiny_model_dir), tmp_path / "mlx"),
    ]
    held_out = prompts(tokenizer)[:5]
    base = torch_logits(tiny_model_dir, None, held_out)
    for peft_dir, mlx_dir in pairs:
        in_torch = torch_logits(tiny_model_dir, peft_dir, held_out)
        in_mlx = mlx_logits(tiny_model_dir, mlx_dir, held_out)
        # The next token after each held-out prompt, and the choice at every position of it.
        assert [t.argmax(-1).tolist() for t in in_torch] == [m.argmax(-1).tolist() for m in in_mlx]
        assert max(np.abs(t - m).max() for t, m in zip(in_torch, in_mlx)) <= LOGIT_TOL
        assert max(np.abs(t - b).max() for t, b in zip(in_torch, base)) >= ADAPTER_EFFECT
        # ...and the choices are the adapter's: many differ from the base model's.
        assert sum(int((t.argmax(-1) != b.argmax(-1)).sum()) for t, b in zip(in_torch, base)) > 10

    meta = read_adapter_meta(tmp_path / "torch-as-mlx")
    assert meta["metrics"]["adapter_format"] == "mlx"
    assert meta["converted_from"] == {"format": "peft", "path": str(tmp_path / "torch")}
    assert read_adapter_meta(tmp_path / "mlx-as-peft")["metrics"]["backend"] == "mlx"


def test_unsupported_adapters_are_refused_in_one_line(tiny_model_dir: Path, tmp_path: Path):
    dora = make_peft_adapter(tiny_model_dir, tmp_path / "dora", r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(ModelError, match=r"DoRA \(use_dora\) cannot be converted"):
        peft_to_mlx(dora, tmp_path / "out", tiny_model_dir)

    mlx_dir = make_mlx_adapter(tiny_model_dir, tmp_path / "mlx", 1, {"rank": 4, "scale": 3.0, "dropout": 0.0})
    cfg = json.loads((mlx_dir / "adapter_config.json").read_text())
    (mlx_dir / "adapter_config.json").write_text(json.dumps(cfg | {"fine_tune_type": "dora"}))
    with pytest.raises(ModelError, match="a 'dora' mlx_lm adapter cannot be converted"):
        mlx_to_peft(mlx_dir, tmp_path / "out", tiny_model_dir)

    (tmp_path / "taken").mkdir()
    with pytest.raises(ModelError, match="already exists"):
        peft_to_mlx(dora, tmp_path / "taken", tiny_model_dir)
    assert not (tmp_path / "out").exists() and list((tmp_path / "taken").iterdir()) == []
