"""choose_hyperparams: values that follow the data, config values that win, a reason for each."""

from __future__ import annotations

import dataclasses
import math

import pytest

from nightlora.config import TrainConfig
from nightlora.errors import TrainError
from nightlora.train.hyperparams import choose_hyperparams, format_hyperparams


def test_small_night_gets_four_epochs_with_a_batch_that_leaves_enough_steps():
    hp = choose_hyperparams(TrainConfig(), n_train=40, n_valid=5, model_layers=30)
    assert hp.batch_size == 2  # 40 // 16 = 2 -> 20 steps per epoch
    assert hp.iters == 80  # 4 epochs x 40 / 2
    assert hp.warmup_steps == 8
    assert hp.learning_rate == pytest.approx(7e-4 * math.sqrt(2))
    assert hp.num_layers == 30  # all of them
    assert (hp.lora_rank, hp.lora_alpha, hp.replay_loss) == (16, 32.0, "kl")
    assert hp.eval_every == 8
    assert hp.early_stopping_patience == 3


@pytest.mark.parametrize(("n_train", "batch"), [(1, 1), (15, 1), (16, 1), (32, 2), (63, 2), (64, 4), (5000, 4)])
def test_batch_size_grows_with_the_data_up_to_four(n_train: int, batch: int):
    assert choose_hyperparams(TrainConfig(), n_train, 10, 30).batch_size == batch


def test_learning_rate_follows_sqrt_of_batch():
    small = choose_hyperparams(TrainConfig(), 10, 2, 30)
    large = choose_hyperparams(TrainConfig(), 400, 40, 30)
    assert (small.batch_size, large.batch_size) == (1, 4)
    assert large.learning_rate / small.learning_rate == pytest.approx(2.0)


def test_iterations_are_clamped_by_min_and_max_iters():
    few = choose_hyperparams(TrainConfig(), n_train=3, n_valid=1, model_layers=30)
    assert few.iters == 20  # 3 epochs x 3 = 9 < min_iters
    assert "min_iters" in few.reasons["iters"]
    many = choose_hyperparams(TrainConfig(max_iters=100), n_train=1000, n_valid=10, model_layers=30)
    assert many.iters == 100  # 750 wanted
    assert "max_iters" in many.reasons["iters"]


def test_every_number_set_in_config_wins():
    cfg = TrainConfig(iters=7, epochs=10, batch_size=3, learning_rate=5e-5, num_layers=2, eval_every=4,
                      lora_rank=4, lora_alpha=8, lora_dropout=0.1, max_seq_length=256, grad_checkpoint=False, seed=9,
                      early_stopping_patience=0, warmup_fraction=0.0)
    hp = choose_hyperparams(cfg, n_train=500, n_valid=50, model_layers=30)
    assert (hp.iters, hp.batch_size, hp.learning_rate, hp.num_layers, hp.eval_every) == (7, 3, 5e-5, 2, 4)
    assert (hp.lora_rank, hp.lora_alpha, hp.lora_dropout, hp.max_seq_length) == (4, 8, 0.1, 256)
    assert (hp.grad_checkpoint, hp.seed, hp.early_stopping_patience, hp.warmup_steps) == (False, 9, 0, 0)
    for name in ("iters", "batch_size", "learning_rate", "num_layers", "eval_every"):
        assert hp.reasons[name] == "set in config"


def test_epochs_from_config_drive_iterations():
    hp = choose_hyperparams(TrainConfig(epochs=1.5, batch_size=4), n_train=100, n_valid=10, model_layers=30)
    assert hp.iters == 38  # ceil(1.5 x 100 / 4)
    assert "1.5 epochs (config)" in hp.reasons["iters"]


def test_small_models_adapt_every_layer():
    hp = choose_hyperparams(TrainConfig(), 40, 4, model_layers=2)
    assert hp.num_layers == 2
    assert hp.reasons["num_layers"] == "all 2 layers"


def test_no_validation_split_turns_off_evaluation_and_early_stopping():
    hp = choose_hyperparams(TrainConfig(eval_every=5), n_train=40, n_valid=0, model_layers=30)
    assert hp.early_stopping_patience == 0
    assert hp.eval_every == hp.iters
    assert "no validation" in hp.reasons["early_stopping_patience"]


def test_every_value_has_a_reason():
    hp = choose_hyperparams(TrainConfig(), 40, 5, 30)
    fields = {f.name for f in dataclasses.fields(hp)} - {"reasons"}
    assert set(hp.reasons) == fields
    text = format_hyperparams(hp)
    assert len(text.splitlines()) == len(fields)
    assert "4 epochs (default) x (40 conversations) / batch 2 = 80" in text


def test_replay_counts_in_the_epochs_so_the_user_data_keeps_them():
    hp = choose_hyperparams(TrainConfig(epochs=4, replay_share=1.0), n_train=20, n_valid=5, model_layers=30,
                            replay_available=12)
    assert hp.replay_examples == 12  # 1.0 x 20, capped at the 12 there are
    assert hp.batch_size == 2 and hp.iters == 4 * (20 + 12) // 2
    assert "capped at the 12 available" in hp.reasons["replay_examples"]
    assert "4 epochs (config) x (20 conversations + 12 replay) / batch 2 = 64" == hp.reasons["iters"]


@pytest.mark.parametrize(("n_train", "layers", "cfg", "message"), [
    (0, 30, TrainConfig(), "train split is empty"),
    (10, 30, TrainConfig(num_layers=31), "more than the model's 30 layers"),
])
def test_impossible_requests_are_train_errors(n_train: int, layers: int, cfg: TrainConfig, message: str):
    with pytest.raises(TrainError, match=message):
        choose_hyperparams(cfg, n_train, 5, layers)
