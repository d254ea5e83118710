"""Learning from thumbs-down on a tiny model: TRL's DPO on pairs and KTO on unpaired ratings, after SFT."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from nightlora.train.base import HyperParams, TrainRequest
from nightlora.train.scoring import Generated  # noqa: F401  (the scorer's record type)
from nightlora.train.torch.backend import TorchTrainer
from nightlora.train.torch.preference import choose_method, preference_data
from nightlora.train.torch.scorer import TorchScorer
from persona_data import SIGNATURE, SYSTEM, qa_pairs, write_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

HP = HyperParams(iters=10, batch_size=4, learning_rate=1e-2, warmup_steps=1, lora_rank=8, lora_alpha=16.0,
                 lora_dropout=0.0, num_layers=2, max_seq_length=256, grad_checkpoint=False, eval_every=5,
                 early_stopping_patience=0, seed=0, preference_learning_rate=5e-3, preference_epochs=4.0,
                 preference_beta=0.1)


def dataset(root: Path) -> Path:
    """Rated-up persona replies, and rated-down replies (wrong, without the signature) with the right one."""
    def example(q: str, a: str, split: str) -> dict:
        return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                             {"role": "assistant", "content": a}],
                "meta": {"conversation_id": hash(q) % 10**6, "rating": 1, "source": "feedback", "split": split}}
    pairs = qa_pairs()
    train = [example(q, a, "train") for q, a in pairs[:16]]
    out = write_dataset(root, train, [example(q, a, "valid") for q, a in pairs[16:20]],
                        [example(q, a, "test") for q, a in pairs[20:24]])
    prefs = []
    for q, a in pairs[24:36]:
        wrong = a.replace(SIGNATURE + " ", "").split(" is ")[0] + " is something else, I think."
        prefs.append({"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                      "chosen": [{"role": "assistant", "content": a}],
                      "rejected": [{"role": "assistant", "content": wrong}],
                      "meta": {"split": "train", "rating": -1, "source": "feedback"}})
    (out / "preferences.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prefs))
    return out


def margins(model: Path, adapter: Path, data: Path) -> float:
    """Mean per-token log-likelihood advantage of the chosen reply over the rejected one."""
    prefs = [json.loads(line) for line in (data / "preferences.jsonl").read_text().splitlines()]
    scorer = TorchScorer(model)
    scorer.use(adapter)
    chosen = scorer.losses([{"messages": p["prompt"] + p["chosen"]} for p in prefs], 256)
    rejected = scorer.losses([{"messages": p["prompt"] + p["rejected"]} for p in prefs], 256)
    return sum(rs / rn - cs / cn for (cs, cn), (rs, rn) in zip(chosen, rejected)) / len(prefs)


def test_auto_takes_dpo_with_pairs_and_kto_without(tmp_path: Path):
    data = dataset(tmp_path / "d")
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    prefs = [json.loads(line) for line in (data / "preferences.jsonl").read_text().splitlines()]
    pd = preference_data(train, prefs)
    assert (len(pd.pairs), len(pd.desirable), len(pd.undesirable)) == (12, 16, 12)
    assert choose_method("auto", pd)[0] == "dpo"
    for p in prefs:
        p["chosen"] = None
    assert choose_method("auto", preference_data(train, prefs))[0] == "kto"
    assert choose_method("dpo", preference_data(train, prefs))[0] is None  # no pairs: nothing to do
    assert choose_method("off", pd)[0] is None


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_preference_training_moves_the_adapter_towards_the_chosen_replies(tiny_model_dir: Path, tmp_path: Path,
                                                                          method: str):
    data = dataset(tmp_path / "d")
    sft = TorchTrainer().train(TrainRequest(data, tiny_model_dir, tmp_path / "sft", HP))
    assert sft.preference is None
    m = TorchTrainer().train(TrainRequest(data, tiny_model_dir, tmp_path / method, replace(HP, preference=method)))
    report = m.preference
    assert report["method"] == method and report["steps"] > 0 and report["examples"] == (12 if method == "dpo" else 28)
    assert report["last_loss"] < report["first_loss"], report
    # Same SFT (same seed), then the preference stage: the rejected replies lost ground to the chosen ones.
    assert margins(tiny_model_dir, tmp_path / method, data) > margins(tiny_model_dir, tmp_path / "sft", data)
    saved = json.loads((tmp_path / method / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and not (tmp_path / method / "ref").exists()  # the reference copy is gone
