"""`nightlora train`: config defaults, hyperparameters with reasons, progress, the metrics record, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nightlora.cli import main
from nightlora.errors import ModelError, TrainError
from nightlora.train.registry import make_trainer, resolve_backend
from persona_data import write_dataset, write_persona_dataset


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config and a private data dir: nothing from the user's own setup leaks in."""
    config = tmp_path / "config.toml"
    config.write_text("")
    monkeypatch.setenv("NIGHTLORA_CONFIG", str(config))
    monkeypatch.setenv("NIGHTLORA_SOURCE__DATA_DIR", str(tmp_path / "hanni"))
    return tmp_path / "hanni"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_persona_dataset(tmp_path_factory.mktemp("cli-data") / "training")


@pytest.fixture
def one_torch_thread():
    """The test processes share few cores; OpenMP threads spin-waiting for a busy core make one thread 2-3x faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_train_prints_reasons_and_progress_and_writes_the_record(home: Path, dataset: Path, tiny_model_dir: Path, capsys):
    argv = ["train", "--data", str(dataset), "--model", str(tiny_model_dir), "--backend", "torch",
            "--iters", "2", "--batch-size", "4", "--learning-rate", "0.01", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    record = json.loads(out)

    adapter = Path(record["adapter_dir"])
    assert adapter.parent == home / "nightlora" / "adapters-staging"
    assert adapter.name.endswith("-torch")
    assert json.loads((adapter / "nightlora.json").read_text())["metrics"] == record["metrics"]
    assert (adapter / "adapter_model.safetensors").is_file()
    metrics = record["metrics"]
    assert metrics["iters_done"] == 2 and metrics["hyperparams"]["learning_rate"] == 0.01
    assert metrics["valid_loss"][-1][1] < metrics["valid_loss"][0][1]

    assert "training torch LoRA on 40 chats (8 for validation)" in err
    assert re.search(r"^  iters +2 +set in config$", err, re.M)  # flags win, and every value says why
    assert re.search(r"^  learning_rate +0.01 +set in config$", err, re.M)
    assert re.search(r"^  warmup_steps +0 +warmup_fraction 0.1 of 2 steps, then cosine decay to 0$", err, re.M)
    assert "2/2" in err and "tok/s=" in err and "step 2/2: validation loss" in err


def test_dry_run_prints_the_hyperparameters_for_the_data(home: Path, dataset: Path, tiny_model_dir: Path, capsys):
    assert main(["train", "--data", str(dataset), "--model", str(tiny_model_dir), "--epochs", "2", "--dry-run", "--json"]) == 0
    hp = json.loads(capsys.readouterr().out)
    assert (hp["batch_size"], hp["iters"], hp["num_layers"]) == (2, 40, 2)  # 2 epochs x 40 / 2; the tiny model has 2 layers
    assert hp["reasons"]["iters"].startswith("2 epochs (config)")


def test_errors_are_one_line_with_their_exit_code(home: Path, dataset: Path, tiny_model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys):
    def fails(argv: list[str]) -> tuple[int, str]:
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return code, err

    code, err = fails(["train", "--data", str(tmp_path / "nowhere"), "--model", str(tiny_model_dir)])
    assert code == TrainError.exit_code and "dataset folder" in err and "not found" in err

    empty = write_dataset(tmp_path / "empty", [], [], [])
    code, err = fails(["train", "--data", str(empty), "--model", str(tiny_model_dir)])
    assert code == TrainError.exit_code and "train split is empty" in err

    taken = tmp_path / "taken"
    taken.mkdir()
    code, err = fails(["train", "--data", str(dataset), "--model", str(tiny_model_dir), "--out", str(taken)])
    assert code == TrainError.exit_code and "already exists" in err

    monkeypatch.setenv("NIGHTLORA_TRAIN__MODELS_DIR", str(tmp_path / "no-models"))
    code, err = fails(["train", "--data", str(dataset), "--model", "smollm2-135m"])
    assert code == ModelError.exit_code and "nightlora model prepare smollm2-135m" in err

    code, err = fails(["train", "--data", str(dataset), "--model", str(tiny_model_dir), "--num-layers", "3"])
    assert code == TrainError.exit_code and "more than the model's 2 layers" in err


def test_auto_backend_is_mlx_on_apple_silicon_only_and_names_are_checked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    assert resolve_backend("auto") == "mlx"
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert resolve_backend("auto") == "torch"
    monkeypatch.setattr("platform.system", lambda: "Linux")
    assert make_trainer("auto").name == "torch"
    assert make_trainer("mlx").name == "mlx"
    with pytest.raises(TrainError, match="unknown training backend 'jax'"):
        make_trainer("jax")
