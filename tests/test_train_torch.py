"""The torch backend on a real tiny Llama: masking, learning, early stopping, continuing, crashes, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from nightlora.errors import TrainError
from nightlora.train.base import ADAPTER_META, HyperParams, ProgressEvent, TrainMetrics, TrainRequest
from nightlora.train.splits import read_split
from nightlora.train.torch.backend import TorchTrainer, target_loss_sum
from nightlora.train.torch.data import IGNORE_INDEX, collate, encode_chat, encode_split, eval_batches, length_grouped_batches
from persona_data import other_language_chats, write_dataset, write_persona_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

# For a random-weight 2-layer model: a high learning rate shows learning within a few dozen steps.
TINY = HyperParams(
    iters=4, batch_size=4, learning_rate=1e-2, warmup_steps=1, lora_rank=8, lora_alpha=16.0, lora_dropout=0.0,
    num_layers=2, max_seq_length=512, grad_checkpoint=True, eval_every=2, early_stopping_patience=0, seed=0,
)


@pytest.fixture(scope="module")
def persona_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_persona_dataset(tmp_path_factory.mktemp("data") / "persona")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def train(tiny_model_dir: Path, dataset: Path, out: Path, hp: HyperParams, init: Path | None = None,
          events: list[ProgressEvent] | None = None) -> TrainMetrics:
    request = TrainRequest(dataset, tiny_model_dir, out, hp, init)
    return TorchTrainer().train(request, events.append if events is not None else None)


def adapter_loss(tiny_model_dir: Path, adapter: Path | None, dataset: Path, split: str, tokenizer) -> float:
    """Mean target loss of base model + adapter on a split, computed afresh from the saved files."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    items, _ = encode_split(tokenizer, read_split(dataset, split), 512)
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in eval_batches(items, 3):
            batch = collate(chunk, tokenizer.pad_token_id)
            total += float(target_loss_sum(model, batch))
            count += batch.n_targets
    return total / count


@pytest.fixture(scope="module")
def short_run(tiny_model_dir: Path, persona_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainMetrics]:
    out = tmp_path_factory.mktemp("short") / "adapter"
    return out, train(tiny_model_dir, persona_dir, out, TINY)


def test_mask_is_mlx_lm_mask_prompt(tokenizer, persona_dir: Path):
    from mlx_lm.tuner.datasets import ChatDataset

    examples = read_split(persona_dir, "train")
    assert any("tool_calls" in e["messages"][-1] for e in examples)
    assert any(e["messages"][-2]["role"] == "tool" for e in examples)
    reference = ChatDataset(examples, tokenizer, mask_prompt=True)
    for example in examples:
        tokens, offset = reference.process(example)
        enc = encode_chat(tokenizer, example)
        assert (enc.tokens, enc.offset) == (list(tokens), offset)
        target = tokenizer.decode(enc.tokens[enc.offset:])
        assert target.endswith("<|im_end|>\n") and "<|im_start|>" not in target


def test_labels_and_loss_cover_the_target_tokens_only(tokenizer, tiny_model_dir: Path, persona_dir: Path):
    items = [encode_chat(tokenizer, e) for e in read_split(persona_dir, "train")[:3]]
    batch = collate(items, tokenizer.pad_token_id)
    for row, e in enumerate(items):
        assert (batch.labels[row, :e.offset] == IGNORE_INDEX).all()
        assert batch.labels[row, e.offset:len(e.tokens)].tolist() == e.tokens[e.offset:]
        assert (batch.labels[row, len(e.tokens):] == IGNORE_INDEX).all()
    assert batch.n_targets == sum(e.n_targets for e in items)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = float(target_loss_sum(model, batch))
    per_position = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch.input_ids[:, 1:], reduction="none")
    # Position t predicts token t+1: the target tokens offset..n-1 are predicted at offset-1..n-2.
    expected = sum(float(per_position[row, e.offset - 1:len(e.tokens) - 1].sum()) for row, e in enumerate(items))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_training_lowers_validation_loss_and_writes_a_peft_adapter(tiny_model_dir, persona_dir, tokenizer, tmp_path):
    hp = replace(TINY, iters=30, eval_every=10, grad_checkpoint=False)
    events: list[ProgressEvent] = []
    out = tmp_path / "adapter"
    m = train(tiny_model_dir, persona_dir, out, hp, events=events)

    first, last = m.valid_loss[0][1], m.valid_loss[-1][1]
    assert [s for s, _ in m.valid_loss] == [0, 10, 20, 30]
    assert last < first - 0.3, m.valid_loss
    assert m.test_loss is not None and m.test_loss < first
    assert (m.iters_done, m.stopped_early, m.best_step) == (30, False, 30)
    assert m.tokens_per_second > 0 and m.peak_memory_mb > 0 and m.duration_s > 0

    # Every trained token counted once: replay the batch schedule.
    lengths = [len(e.tokens) for e in encode_split(tokenizer, read_split(persona_dir, "train"), 512)[0]]
    schedule = length_grouped_batches(lengths, hp.batch_size, hp.seed)
    assert m.trained_tokens == sum(lengths[i] for _ in range(hp.iters) for i in next(schedule))

    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16.0)
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert config["layers_to_transform"] == [0, 1]
    weights = load_file(out / "adapter_model.safetensors")
    assert len(weights) == 2 * 7 * 2  # layers x modules x (A, B)
    meta = json.loads((out / ADAPTER_META).read_text())
    assert meta["metrics"]["valid_loss"][-1][1] == pytest.approx(last)
    assert meta["manifest"]["counts"]["train"] == 40
    assert adapter_loss(tiny_model_dir, out, persona_dir, "valid", tokenizer) == pytest.approx(last, rel=1e-4)

    steps = [e.step for e in events if e.train_loss is not None]
    assert steps == list(range(1, 31))
    assert [e.valid_loss for e in events if e.valid_loss is not None] == [loss for _, loss in m.valid_loss]


def test_same_seed_same_adapter(tiny_model_dir: Path, persona_dir: Path, short_run, tmp_path: Path):
    first_dir, first = short_run
    again = train(tiny_model_dir, persona_dir, tmp_path / "again", TINY)
    assert again.train_loss == first.train_loss
    a, b = load_file(first_dir / "adapter_model.safetensors"), load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_continues_from_an_init_adapter(tiny_model_dir: Path, persona_dir: Path, short_run, tmp_path: Path):
    first_dir, first = short_run
    m = train(tiny_model_dir, persona_dir, tmp_path / "next", replace(TINY, iters=2), init=first_dir)
    # The continued run starts where the first one ended, not from the base model.
    assert m.valid_loss[0][1] == pytest.approx(first.valid_loss[-1][1], rel=1e-5)
    assert m.valid_loss[0][1] < first.valid_loss[0][1]
    meta = json.loads((tmp_path / "next" / ADAPTER_META).read_text())
    assert meta["init_adapter"] == str(first_dir)

    with pytest.raises(TrainError, match="rank 8.*ask for rank 4"):
        train(tiny_model_dir, persona_dir, tmp_path / "other", replace(TINY, lora_rank=4), init=first_dir)
    assert not (tmp_path / "other").exists()


def test_early_stopping_keeps_the_best_weights(tiny_model_dir: Path, persona_dir: Path, tokenizer, tmp_path: Path):
    # Validation in another language: fitting the English persona helps it briefly at best, then a
    # high learning rate makes it wobble and worsen, so early stopping must fire and restore the best.
    dataset = write_dataset(tmp_path / "diverging", read_split(persona_dir, "train"), other_language_chats(), [])
    hp = replace(TINY, iters=80, batch_size=2, learning_rate=2e-2, warmup_steps=0, eval_every=2,
                 early_stopping_patience=3, grad_checkpoint=False)
    m = train(tiny_model_dir, dataset, tmp_path / "adapter", hp)

    assert m.stopped_early and m.iters_done < hp.iters
    losses = dict(m.valid_loss)
    assert m.best_step == min(losses, key=losses.get) and m.best_step > 0
    assert losses[m.valid_loss[-1][0]] > losses[m.best_step]
    assert m.test_loss is None
    saved = adapter_loss(tiny_model_dir, tmp_path / "adapter", dataset, "valid", tokenizer)
    assert saved == pytest.approx(losses[m.best_step], rel=1e-4)


def test_diverging_loss_is_a_train_error_and_writes_nothing(tiny_model_dir: Path, persona_dir: Path, tmp_path: Path):
    hp = replace(TINY, iters=5, learning_rate=1e30, warmup_steps=0, eval_every=5)
    with pytest.raises(TrainError, match="training loss is nan at step 2"):
        train(tiny_model_dir, persona_dir, tmp_path / "adapter", hp)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_missing_dataset_are_train_errors(tiny_model_dir: Path, persona_dir: Path, tmp_path: Path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(TrainError, match="already exists"):
        train(tiny_model_dir, persona_dir, tmp_path / "taken", TINY)
    with pytest.raises(TrainError, match="not found"):
        train(tiny_model_dir, tmp_path / "nowhere", tmp_path / "adapter", TINY)
    empty = write_dataset(tmp_path / "empty", [], [], [])
    with pytest.raises(TrainError, match="no example to learn from"):
        train(tiny_model_dir, empty, tmp_path / "adapter", TINY)


def _module_argv(tiny_model_dir: Path, dataset: Path, out: Path, hp_file: Path) -> list[str]:
    return ["-m", "nightlora.train.torch.backend", "--dataset", str(dataset), "--model", str(tiny_model_dir),
            "--out", str(out), "--hyperparams", str(hp_file)]


def test_killed_training_leaves_no_adapter(tiny_model_dir: Path, persona_dir: Path, tmp_path: Path):
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps(replace(TINY, iters=100_000).to_dict()))
    parent = tmp_path / "adapters"
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, *_module_argv(tiny_model_dir, persona_dir, parent / "v1", hp_file)],
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while "| 1/100000" not in log.read_text(errors="replace"):  # the bar shows step 1 done
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "training never finished a step"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (parent / "v1").exists()
    assert not parent.exists() or [p.name for p in parent.iterdir() if not p.name.endswith(".tmp")] == []


def test_two_process_accelerate_job_matches_one_process(tiny_model_dir: Path, persona_dir: Path, short_run, tmp_path: Path):
    """DDP over gloo: same global batches, token-weighted loss, so the same updates as one process."""
    _, single = short_run
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
            *_module_argv(tiny_model_dir, persona_dir, out, hp_file)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])  # the main process prints the metrics once
    meta = json.loads((out / ADAPTER_META).read_text())
    assert meta["metrics"] == printed

    assert printed["trained_tokens"] == single.trained_tokens  # summed over both ranks
    assert printed["valid_loss"][0][1] == pytest.approx(single.valid_loss[0][1], rel=1e-6)
    for (s1, l1), (s2, l2) in zip(printed["train_loss"], single.train_loss, strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-3)
    assert printed["valid_loss"][-1][1] == pytest.approx(single.valid_loss[-1][1], rel=1e-3)
    assert (out / "adapter_model.safetensors").is_file()


def test_replay_kl_is_zero_at_the_base_and_the_exact_kl_once_the_adapter_moves(
        tiny_model_dir: Path, persona_dir: Path, tokenizer, tmp_path: Path):
    """KL-on-replay: user rows keep their cross-entropy, replay rows add KL(base || adapter) over their
    answer tokens, position by position, in a batch that mixes both."""
    import shutil

    import torch.nn.functional as F

    from nightlora.train.torch.backend import _Run, target_logits

    data = tmp_path / "data"
    shutil.copytree(persona_dir, data)
    replay = [{**chat, "meta": {"source": "replay"}} for chat in other_language_chats()[:3]]
    (data / "replay.jsonl").write_text("".join(json.dumps(r) + "\n" for r in replay))
    hp = replace(TINY, replay_loss="kl", replay_examples=3)
    run = _Run(TrainRequest(data, tiny_model_dir, tmp_path / "out", hp), None, started=0.0)
    items = [e for e in run.train_set if e.replay][:2] + [e for e in run.train_set if not e.replay][:2]
    assert [e.replay for e in items] == [True, True, False, False]
    user_only = run._batch(items[2:])
    batch = run._batch(items)

    with torch.no_grad():
        # A fresh LoRA (B = 0) is the base model: the replay term is zero, the user term is plain CE.
        assert float(run._loss_with_replay_kl(items, batch)) == pytest.approx(float(target_loss_sum(run.model, user_only)), rel=1e-5)
        for name, p in run.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
        replay_batch = run._batch(items[:2])
        logits, _, _ = target_logits(run.model, replay_batch)
        with run.model.disable_adapter():
            base, _, _ = target_logits(run.model, replay_batch)
        p_base = F.softmax(base, -1)
        expected_kl = float((p_base * (F.log_softmax(base, -1) - F.log_softmax(logits, -1))).sum())
        got = float(run._loss_with_replay_kl(items, batch)) - float(target_loss_sum(run.model, user_only))
    assert expected_kl > 1e-3 and got == pytest.approx(expected_kl, rel=1e-4)
