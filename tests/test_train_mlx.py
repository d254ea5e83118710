"""The mlx backend on a real tiny Llama: learning, the prompt mask, mlx_lm's adapter format,
continuing, early stopping, crashes."""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import pytest
import torch
import torch.nn.functional as F
from mlx_lm import generate, load
from mlx_lm.lora import CONFIG_DEFAULTS
from mlx_lm.tuner.trainer import evaluate
from transformers import AutoModelForCausalLM, AutoTokenizer

from nightlora.errors import TrainError
from nightlora.train.base import ADAPTER_META, HyperParams, ProgressEvent, TrainMetrics, TrainRequest, read_adapter_meta
from nightlora.train.convert import mlx_to_peft
from nightlora.train.mlx.backend import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MlxTrainer
from nightlora.train.mlx.data import encode_split, iterate_batches, target_loss
from nightlora.train.splits import read_split
from persona_data import other_language_chats, write_dataset, write_persona_dataset

pytestmark = pytest.mark.slow

# A high learning rate moves a random-weight 2-layer model within 30 steps.
HP = HyperParams(
    iters=30, batch_size=2, learning_rate=1e-2, warmup_steps=2, lora_rank=8, lora_alpha=16.0, lora_dropout=0.0,
    num_layers=2, max_seq_length=512, grad_checkpoint=True, eval_every=10, early_stopping_patience=0, seed=0,
)


@pytest.fixture(scope="module")
def persona_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The first two training chats are the tool-call ones.
    return write_persona_dataset(tmp_path_factory.mktemp("data") / "persona", n_train=24, n_valid=3, n_test=3)


def train(model_dir: Path, dataset: Path, out: Path, hp: HyperParams, init: Path | None = None,
          events: list[ProgressEvent] | None = None) -> TrainMetrics:
    return MlxTrainer().train(TrainRequest(dataset, model_dir, out, hp, init), events.append if events is not None else None)


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, persona_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run") / "adapter"
    events: list[ProgressEvent] = []
    return out, train(tiny_model_dir, persona_dir, out, HP, events=events), events


def chat_tokens(tokenizer, example: dict) -> tuple[list[int], list[int]]:
    """The whole chat and its prompt (everything before the last assistant message), by the HF tokenizer."""
    full = tokenizer.apply_chat_template(example["messages"], tools=example.get("tools"), return_dict=False)
    prompt = tokenizer.apply_chat_template(example["messages"][:-1], tools=example.get("tools"),
                                           add_generation_prompt=True, return_dict=False)
    assert full[:len(prompt)] == prompt
    return list(full), list(prompt)


def test_training_lowers_validation_loss_and_streams_progress(run, tiny_model_dir: Path, persona_dir: Path):
    _, m, events = run
    first = m.valid_loss[0][1]
    assert [s for s, _ in m.valid_loss] == [0, 10, 20, 30]
    assert m.valid_loss[-1][1] < first - 0.1, m.valid_loss
    assert m.test_loss is not None and math.isfinite(m.test_loss) and m.test_loss < first
    assert [s for s, _ in m.train_loss] == list(range(1, 31))
    assert (m.iters_done, m.stopped_early, m.backend, m.adapter_format) == (30, False, "mlx", "mlx")
    losses = dict(m.valid_loss)
    assert m.best_step == min(losses, key=losses.get)
    assert m.tokens_per_second > 0 and m.peak_memory_mb > 0 and m.duration_s > 0
    # trained_tokens counts real chat tokens (prompt and target, no padding): 30 batches of 2 chats,
    # two whole epochs of the 24 chats and half a third.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = sorted(len(chat_tokens(tokenizer, e)[0]) for e in read_split(persona_dir, "train"))
    assert 2 * sum(lengths) + sum(lengths[:12]) <= m.trained_tokens <= 2 * sum(lengths) + sum(lengths[-12:])

    assert [e.step for e in events if e.train_loss is not None] == list(range(1, 31))
    assert all(e.tokens_per_second and e.tokens_per_second > 0 for e in events if e.train_loss is not None)
    assert [(e.step, e.valid_loss) for e in events if e.valid_loss is not None] == m.valid_loss
    assert any(e.message == f"test loss {m.test_loss:.4f}" for e in events)


def test_adapter_is_what_mlx_lm_lora_writes_and_loads(run, tiny_model_dir: Path):
    out, m, _ = run
    assert sorted(p.name for p in out.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_META])
    assert not list(out.parent.glob(".*.tmp"))
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert set(cfg) == set(CONFIG_DEFAULTS)
    assert (cfg["fine_tune_type"], cfg["mask_prompt"], cfg["grad_checkpoint"], cfg["num_layers"]) == ("lora", True, True, 2)
    assert cfg["lora_parameters"] == {"rank": 8, "dropout": 0.0, "scale": 2.0}
    assert cfg["lr_schedule"] == {"name": "cosine_decay", "arguments": [1e-2, 28, 0.0], "warmup": 2, "warmup_init": 0.0}
    assert read_adapter_meta(out)["metrics"] == json.loads(json.dumps(m.to_dict()))

    model, tokenizer = load(str(tiny_model_dir), adapter_path=str(out))
    base, _ = load(str(tiny_model_dir))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello?"}], add_generation_prompt=True)
    ids = mx.array([prompt])
    assert mx.abs(model(ids) - base(ids)).max().item() > 1e-3  # the trained adapter is applied, and matters
    assert isinstance(generate(model, tokenizer, prompt=prompt, max_tokens=4), str)


def test_only_the_last_assistant_message_is_a_target(run, tiny_model_dir: Path, persona_dir: Path):
    chats = read_split(persona_dir, "valid")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    targets, loss_sum = 0, 0.0
    for example in chats:
        full, prompt = chat_tokens(tokenizer, example)
        with torch.no_grad():
            logits = torch_model(torch.tensor([full])).logits[0, :-1]
        # Logit row t predicts token t + 1: the targets are tokens len(prompt) .. end.
        loss_sum += float(F.cross_entropy(logits[len(prompt) - 1:], torch.tensor(full[len(prompt):]), reduction="sum"))
        targets += len(full) - len(prompt)

    model, mlx_tokenizer = load(str(tiny_model_dir))
    examples = encode_split(mlx_tokenizer, chats, 512, "valid").examples
    loss, ntoks = target_loss(model, *next(iterate_batches(examples, len(examples), 512)))
    assert ntoks.item() == targets
    assert loss.item() == pytest.approx(loss_sum / targets, rel=1e-5)
    # The trainer's first validation (LoRA B starts at zero: the base model) is that same masked loss.
    _, m, _ = run
    assert m.valid_loss[0][1] == pytest.approx(loss_sum / targets, rel=1e-5)


def test_the_head_at_targets_only_gives_the_full_logits_loss(tiny_model_dir: Path, persona_dir: Path):
    """The vocabulary head run at the target positions only (the batches' index/weight) is the same loss
    as full logits masked afterwards, padded target slots included; a model outside HEAD_AT_TARGETS
    takes the full-logits path."""
    import mlx.nn as mnn

    from nightlora.train.mlx import data as mlx_data

    model, mlx_tokenizer = load(str(tiny_model_dir))
    examples = encode_split(mlx_tokenizer, read_split(persona_dir, "train"), 512, "train").examples
    tokens, mask, lengths, index, weight = next(iterate_batches(examples, 3, 512))
    assert index.shape[0] % mlx_data.TARGETS_PAD_TO == 0 and weight.sum().item() == mask.sum().item()
    assert mlx_data._head_at_targets(model) is not None  # the tiny Llama takes the fast path
    fast, n_fast = target_loss(model, tokens, mask, lengths, index, weight)
    full, n_full = target_loss(model, tokens, mask, lengths)
    assert n_fast.item() == n_full.item()
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)

    class Wrapped(mnn.Module):  # an unknown model type: the whole forward, then the mask
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def __call__(self, inputs):
            return self.inner(inputs)

    wrapped = Wrapped(model)
    assert mlx_data._head_at_targets(wrapped) is None
    assert target_loss(wrapped, tokens, mask, lengths, index, weight)[0].item() == pytest.approx(full.item(), rel=1e-5)


def test_training_continues_from_an_init_adapter(run, tiny_model_dir: Path, persona_dir: Path, tmp_path: Path):
    first_dir, first, _ = run
    # Three training chats and a batch size of 4: the batch shrinks to what the split holds.
    small = write_dataset(tmp_path / "small", read_split(persona_dir, "train")[2:5], read_split(persona_dir, "valid"), [])
    events: list[ProgressEvent] = []
    m = train(tiny_model_dir, small, tmp_path / "next", replace(HP, iters=1, batch_size=4, eval_every=1), first_dir, events)
    # It starts from the first run's saved (best) weights, not from the base model.
    assert m.valid_loss[0][1] == pytest.approx(min(loss for _, loss in first.valid_loss), rel=1e-5)
    assert m.valid_loss[0][1] < first.valid_loss[0][1]
    assert "batch size 4 lowered to 3: the train split has 3 examples" in [e.message for e in events]
    assert m.test_loss is None
    cfg = json.loads((tmp_path / "next" / ADAPTER_CONFIG).read_text())
    assert (cfg["batch_size"], cfg["resume_adapter_file"]) == (3, str(first_dir / ADAPTER_WEIGHTS))

    # A PEFT adapter (the torch backend's format) is converted and continued the same way.
    peft_dir = mlx_to_peft(first_dir, tmp_path / "as-peft", tiny_model_dir)
    from_peft = train(tiny_model_dir, small, tmp_path / "from-peft", replace(HP, iters=1, eval_every=1), peft_dir)
    assert from_peft.valid_loss[0][1] == pytest.approx(m.valid_loss[0][1], rel=1e-5)

    with pytest.raises(TrainError, match="has rank 8, scale 2.0, 2 layers; the hyperparameters ask for rank 4"):
        train(tiny_model_dir, small, tmp_path / "other", replace(HP, lora_rank=4, lora_alpha=8.0), first_dir)
    assert not (tmp_path / "other").exists()


def test_early_stopping_keeps_the_best_weights(tiny_model_dir: Path, persona_dir: Path, tmp_path: Path):
    # Validation in another language: fitting the English persona helps it briefly at best, then
    # a high learning rate makes it wobble and worsen (the torch backend's test, same data).
    dataset = write_dataset(tmp_path / "diverging", read_split(persona_dir, "train"), other_language_chats(), [])
    hp = replace(HP, iters=80, learning_rate=2e-2, warmup_steps=0, eval_every=2, early_stopping_patience=3,
                 grad_checkpoint=False)
    m = train(tiny_model_dir, dataset, tmp_path / "adapter", hp)

    assert m.stopped_early and m.iters_done < hp.iters
    losses = dict(m.valid_loss)
    assert m.best_step == min(losses, key=losses.get) and m.best_step > 0
    assert losses[m.valid_loss[-1][0]] > losses[m.best_step]
    # The saved adapter is the best one, not the last one.
    model, tokenizer = load(str(tiny_model_dir), adapter_path=str(tmp_path / "adapter"))
    examples = encode_split(tokenizer, other_language_chats(), 512, "valid").examples
    saved = evaluate(model, examples, batch_size=1, num_batches=-1, loss=target_loss, iterate_batches=iterate_batches)
    assert saved == pytest.approx(losses[m.best_step], rel=1e-5)


@pytest.fixture
def train_only(persona_dir: Path, tmp_path: Path) -> Path:
    """No valid or test split: no validation time in runs that test something else."""
    return write_dataset(tmp_path / "train-only", read_split(persona_dir, "train")[2:6], [], [])


def test_refusals_are_train_errors_that_write_nothing(tiny_model_dir: Path, persona_dir: Path, train_only: Path,
                                                     tmp_path: Path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(TrainError, match="already exists"):
        train(tiny_model_dir, persona_dir, tmp_path / "taken", HP)
    with pytest.raises(TrainError, match="num_layers 3 is not between 1 and the model's 2 layers"):
        train(tiny_model_dir, persona_dir, tmp_path / "adapter", replace(HP, num_layers=3))
    with pytest.raises(TrainError, match="training loss is (nan|inf) at step 2"):
        train(tiny_model_dir, train_only, tmp_path / "adapter", replace(HP, learning_rate=1e30, warmup_steps=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "train-only"]


# Runs MlxTrainer in a child process and prints each finished step on stdout.
CHILD = """
import json, sys
from pathlib import Path
from nightlora.train.base import HyperParams, TrainRequest
from nightlora.train.mlx.backend import MlxTrainer
dataset, model, out, hp = sys.argv[1:]
request = TrainRequest(Path(dataset), Path(model), Path(out), HyperParams(**json.loads(hp)))
MlxTrainer().train(request, lambda e: e.train_loss is not None and print("step", e.step, flush=True))
"""


def test_killed_training_leaves_no_adapter(tiny_model_dir: Path, train_only: Path, tmp_path: Path):
    parent = tmp_path / "adapters"
    hp = json.dumps(replace(HP, iters=100_000).to_dict())
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(train_only), str(tiny_model_dir), str(parent / "v1"), hp],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "training never finished a step"
        line = proc.stdout.readline()
        assert line == "step 1\n", f"the child printed {line!r} (exit code {proc.poll()})"
        # Mid-training the adapter exists only under its temp name.
        assert [p.name.endswith(".tmp") for p in parent.iterdir()] == [True]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert not (parent / "v1").exists()
    assert [p.name for p in parent.iterdir() if not p.name.endswith(".tmp")] == []
