"""DPO after SFT in the mlx backend (mlx-lm-lora) on the real tiny Llama; what unpaired thumbs-down get."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load

from nightlora.train.base import HyperParams, ProgressEvent, TrainRequest, read_adapter_meta
from nightlora.train.mlx.backend import ADAPTER_WEIGHTS, MlxTrainer
from nightlora.train.mlx.preference import choose_mlx_method, encode_pairs, mean_margin
from nightlora.train.torch.preference import preference_data
from persona_data import SIGNATURE, SYSTEM, qa_pairs, write_dataset

pytestmark = pytest.mark.slow

HP = HyperParams(iters=10, batch_size=4, learning_rate=1e-2, warmup_steps=1, lora_rank=8, lora_alpha=16.0,
                 lora_dropout=0.0, num_layers=2, max_seq_length=256, grad_checkpoint=False, eval_every=5,
                 early_stopping_patience=0, seed=0, preference="dpo", preference_learning_rate=5e-3,
                 preference_epochs=4.0, preference_beta=0.1)


def dataset(root: Path, paired: bool = True) -> Path:
    """Rated-up persona replies; rated-down replies (wrong, no signature), with the right one when ``paired``."""
    def example(q: str, a: str, split: str) -> dict:
        return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                             {"role": "assistant", "content": a}],
                "meta": {"conversation_id": abs(hash(q)) % 10**6, "rating": 1, "source": "feedback", "split": split}}
    pairs = qa_pairs()
    out = write_dataset(root, [example(q, a, "train") for q, a in pairs[:12]],
                        [example(q, a, "valid") for q, a in pairs[12:14]], [example(q, a, "test") for q, a in pairs[14:16]])
    prefs = []
    for q, a in pairs[24:32]:
        wrong = a.replace(SIGNATURE + " ", "").split(" is ")[0] + " is something else, I think."
        prefs.append({"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                      "chosen": [{"role": "assistant", "content": a}] if paired else None,
                      "rejected": [{"role": "assistant", "content": wrong}],
                      "meta": {"split": "train", "rating": -1, "source": "feedback"}})
    (out / "preferences.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prefs))
    return out


def margin_of(model_dir: Path, adapter: Path, data: Path) -> float:
    """The chosen-minus-rejected per-token log-likelihood of the written adapter, loaded as mlx_lm serves it."""
    model, tokenizer = load(str(model_dir), adapter_path=str(adapter))
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    prefs = [json.loads(line) for line in (data / "preferences.jsonl").read_text().splitlines()]
    pairs, dropped = encode_pairs(tokenizer, preference_data(train, prefs).pairs, 256)
    assert dropped == 0
    return mean_margin(model, pairs, 256)


def test_dpo_after_sft_raises_the_chosen_replies_margin_in_the_written_adapter(tiny_model_dir: Path, tmp_path: Path):
    data = dataset(tmp_path / "d")
    events: list[ProgressEvent] = []
    out = tmp_path / "adapter"
    m = MlxTrainer().train(TrainRequest(data, tiny_model_dir, out, HP), events.append)
    report = m.preference
    assert report is not None and report["method"] == "dpo" and report["examples"] == 8
    assert report["steps"] == 8  # 4 epochs of 8 pairs in batches of 4
    # The reference is tonight's SFT adapter: at the first step policy and reference agree, so the loss is log 2.
    assert report["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert report["last_loss"] < report["first_loss"], report
    assert report["margin_after"] > report["margin_before"] + 0.05, report
    # The file on disk is the DPO-trained adapter, not the SFT one, and it scores as the report says.
    assert (out / ADAPTER_WEIGHTS).is_file()
    assert read_adapter_meta(out)["metrics"]["preference"] == report
    assert margin_of(tiny_model_dir, out, data) == pytest.approx(report["margin_after"], abs=1e-3)
    assert any(e.message and e.message.startswith("DPO: 8 pairs") for e in events)
    assert m.test_loss is not None and m.iters_done == HP.iters


def test_unpaired_thumbs_down_train_nothing_and_say_why(tiny_model_dir: Path, tmp_path: Path):
    data = dataset(tmp_path / "d", paired=False)
    events: list[ProgressEvent] = []
    m = MlxTrainer().train(TrainRequest(data, tiny_model_dir, tmp_path / "adapter", replace(HP, iters=2,
                                                                                         preference="auto")),
                           events.append)
    assert m.preference is None
    assert [e.message for e in events if e.message and "KTO" in e.message] == [
        "KTO on 12 thumbs-up and 8 thumbs-down replies wanted, but the mlx backend has no KTO "
        "(mlx-lm-lora offers DPO, ORPO and CPO, all on pairs): no preference training"]
    assert (tmp_path / "adapter" / ADAPTER_WEIGHTS).is_file()


def test_the_choice_follows_the_torch_backend_except_kto(tmp_path: Path):
    data = dataset(tmp_path / "d")
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    prefs = [json.loads(line) for line in (data / "preferences.jsonl").read_text().splitlines()]
    assert choose_mlx_method("auto", preference_data(train, prefs))[0] == "dpo"
    assert choose_mlx_method("off", preference_data(train, prefs)) == (None, "preference training off (config)")
    for p in prefs:
        p["chosen"] = None
    assert choose_mlx_method("kto", preference_data(train, prefs))[0] is None
    assert choose_mlx_method("dpo", preference_data(train, prefs))[0] is None


def test_the_reference_shares_the_sft_models_arrays_and_stays_put_when_the_policy_moves(tiny_model_dir: Path):
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from nightlora.train.mlx.backend import lora_parameters
    from nightlora.train.mlx.preference import reference_model

    def skeleton():
        m, _ = load(str(tiny_model_dir), lazy=True)
        m.freeze()
        linear_to_lora_layers(m, HP.num_layers, lora_parameters(HP))
        return m

    policy = skeleton()
    mx.eval(policy.parameters())
    x = mx.array([[1, 2, 3, 4]])
    before = policy(x)
    active = mx.get_active_memory()
    ref = reference_model(policy, skeleton)
    mx.eval(ref(x))
    ours, theirs = dict(tree_flatten(policy.parameters())), dict(tree_flatten(ref.parameters()))
    assert ours.keys() == theirs.keys() and all(ours[k] is theirs[k] for k in ours)  # no weight copied
    weights = sum(v.nbytes for v in ours.values())
    assert mx.get_active_memory() - active < weights / 2, (mx.get_active_memory() - active, weights)
    assert tree_flatten(ref.trainable_parameters()) == [] and not ref.training
    # The policy's next step makes new arrays; the reference still computes the SFT model's outputs.
    policy.update(tree_map(lambda v: v + 0.5, policy.trainable_parameters()))
    assert not mx.allclose(policy(x), before)
    assert mx.allclose(ref(x), before)
