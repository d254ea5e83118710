"""The gate in real nights on a tiny model: a good adapter is promoted; a bad one (shuffled targets, an
absurd learning rate) is rejected, the live adapter stays live and the feedback stays unconsumed.

The tiny model has random weights, so its "general behaviour" (the base model's answers to the
general prompts) is noise: the general-loss allowance is set wide here, and the nights are told
apart by what the rule is about: beating the live model on the user's held-out replies.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from nightlora.cli.wiring import build_deps
from nightlora.config import load_config
from nightlora.demo.database import build_demo_db, write_hanni_db
from nightlora.evaluate.gate import decide
from nightlora.evaluate.general import is_held_out
from nightlora.paths import AdapterFiles, StatePaths
from nightlora.pipeline.nightly import run_nightly
from nightlora.state import cursor
from nightlora.state.db import StateDB
from nightlora.state.store import AdapterStore
from persona_data import SYSTEM, qa_pairs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def persona_db(path: Path, pairs: list[tuple[str, str]], start_id: int = 1) -> None:
    """One rated Q/A conversation per pair (two turns each), in Hanni's pair format."""
    conversations, feedback = [], []
    for n, (q, a) in enumerate(pairs, start_id):
        follow = ("Thanks!", "Hanni here! You're welcome.")
        messages = [["user", q], ["assistant", a], ["user", follow[0]], ["assistant", follow[1]]]
        conversations.append((n, f"2026-01-{1 + n % 28:02d}T10:00:00", None, q[:40], 4, json.dumps(messages)))
        feedback.append((n, 1, 1, "2026-01-01T10:01:00", 0))
    write_hanni_db(path, conversations, feedback)
    (path.parent / "system_prompt.txt").write_text(SYSTEM + "\n")


def add_feedback(db: Path, pairs: list[tuple[str, str]]) -> None:
    """New rated conversations, as the app would add them during a day."""
    with sqlite3.connect(db) as conn:
        first = conn.execute("SELECT max(id) FROM conversations").fetchone()[0] + 1
        for n, (q, a) in enumerate(pairs, first):
            conn.execute("INSERT INTO conversations VALUES (?, ?, NULL, ?, 2, ?)",
                         (n, "2026-02-01T10:00:00", q[:40], json.dumps([["user", q], ["assistant", a]])))
            conn.execute("INSERT INTO message_feedback (conversation_id, message_index, rating, created_at, exported)"
                         " VALUES (?, 1, 1, '2026-02-01T10:01:00', 0)", (n,))


class WrappedTrainer:
    """The real trainer, passed through; subclasses change what its train() does."""

    def __init__(self, trainer):
        self.inner = trainer
        self.name, self.adapter_format, self.kl_replay = trainer.name, trainer.adapter_format, trainer.kl_replay

    def scorer(self, base_model):
        return self.inner.scorer(base_model)

    def cpu_threads(self, n):
        return self.inner.cpu_threads(n)


class ShuffledTargets(WrappedTrainer):
    """The real trainer on a train split whose replies were shuffled across examples (garbage data)."""

    def train(self, request, progress=None):
        path = Path(request.dataset_dir) / "train.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        replies = [r["messages"][-1] for r in rows]
        random.Random(0).shuffle(replies)
        for r, reply in zip(rows, replies):
            r["messages"][-1] = reply
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return self.inner.train(request, progress)


def config(tmp_path: Path, model: Path, **train) -> Path:
    values = {"model": str(model), "backend": "torch", "iters": 40, "batch_size": 4, "learning_rate": 1e-2,
              "max_seq_length": 256, "preference": "off", **train}
    path = tmp_path / "nightlora.toml"
    path.write_text(f'[source]\ndata_dir = "{tmp_path / "hanni"}"\n[data]\nmin_feedback = 3\nmin_messages = 2\n'
                    "[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                    + '[eval]\nmax_general_increase = 1.0\nsmoke_prompts = 2\n[target]\nkind = "none"\n')
    return path


def night(path: Path, trainer_wrapper=None):
    cfg = load_config(path, environ={})
    deps = build_deps(cfg, progress=False)
    if trainer_wrapper is not None:
        make = deps.trainer_for
        deps.trainer_for = lambda backend: trainer_wrapper(make(backend))
    return cfg, deps, run_nightly(cfg, deps)


def consumed(cfg, deps) -> set[str]:
    with StateDB.for_state_dir(cfg.source.state_path) as db:
        return set(cursor.consumed(db, deps.source.key))


def unexported(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM message_feedback WHERE exported = 0").fetchone()[0]


def check_report_in_a_browser(run_dir: Path, ev) -> None:
    """report.html as a person sees it: the plot loaded, the table shows this run's numbers."""
    from html.parser import HTMLParser

    from browser import render

    dom = render(run_dir / "report.html", run_dir / "report.png")
    png = (run_dir / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a page was drawn, not a blank
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.plot, self.cells, self.row, self.rows = None, None, None, {}

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img" and a.get("id") == "loss-plot":
                self.plot = a
            if tag == "tr" and (a.get("class") or "").startswith("model-"):
                self.row, self.cells = a["class"][6:], []
            if tag == "td" and self.cells is not None:
                self.cells.append("")

        def handle_data(self, data):
            if self.cells:
                self.cells[-1] += data

        def handle_endtag(self, tag):
            if tag == "tr" and self.row:
                self.rows[self.row] = [" ".join(c.split()) for c in self.cells]
                self.row, self.cells = None, None

    page = Page()
    page.feed(dom)
    assert page.plot is not None and page.plot.get("data-loaded") == "yes", page.plot  # the image really loaded
    for name in ("base", "candidate"):
        s = ev.scores[name]
        cells = page.rows[name]
        assert cells[1].startswith(f"{s.test_loss:.3f}") and cells[2].startswith(f"{s.general_loss:.3f}"), cells
    assert "Promoted" in dom


def test_good_is_promoted_bad_is_rejected_and_the_live_adapter_stays(tmp_path: Path, server_model_dir: Path):
    tiny_model_dir = server_model_dir  # the tiny model patched to always say something (its general answers)
    pairs = qa_pairs()
    db = tmp_path / "hanni" / "hanni.db"
    db.parent.mkdir(parents=True)
    persona_db(db, pairs[:40])
    path = config(tmp_path, tiny_model_dir)

    cfg, deps, good = night(path)
    assert good.status == "completed", good.message
    ev = good.evaluation
    assert ev.decision.promote and ev.decision.compared_with == "base"
    assert ev.scores["candidate"].test_loss < ev.scores["base"].test_loss * 0.99
    store = AdapterStore.for_state_dir(cfg.source.state_path)
    assert store.current().name == "v0001" and store.current().eval_score == ev.score > 0
    taken = consumed(cfg, deps)
    assert len(taken) == good.commit.consumed > 0 and unexported(db) == 0
    check_report_in_a_browser(good.run_dir, ev)
    # Replay learned by KL (torch's default) takes the answers cut at the token limit too, finished ones first.
    cache = json.loads(next(StatePaths(cfg.source.state_path).cache.glob("general-*.json")).read_text())["answers"]
    pool = [a for i, a in enumerate(cache) if not is_held_out(i) and a["answer"].strip()]
    finished = [a["prompt"] for a in pool if a["stopped"]]
    replayed = [json.loads(line)["messages"][1]["content"]
                for line in (good.run_dir / "data" / "replay.jsonl").read_text().splitlines()]
    assert good.train.hyperparams.replay_loss == "kl" and len(replayed) == good.train.hyperparams.replay_examples
    assert replayed == (finished + [a["prompt"] for a in pool if not a["stopped"]])[:len(replayed)]
    assert len(replayed) > len(finished), (len(replayed), len(finished))

    # Garbage data the next night: rejected against the live adapter, which stays; its feedback waits.
    add_feedback(db, pairs[40:46])
    cfg, deps, bad = night(path, ShuffledTargets)
    assert bad.status == "rejected" and bad.exit_code == 0, bad.message
    failed = {r.name for r in bad.evaluation.decision.failed}
    assert "learned" in failed and bad.evaluation.decision.compared_with == "live"
    assert store.current().name == "v0001" and bad.live == "v0001" and bad.commit is None
    assert consumed(cfg, deps) == taken and unexported(db) == 6
    assert "Rejected" in (bad.run_dir / "report.html").read_text()
    with StateDB.for_state_dir(cfg.source.state_path) as state:
        assert state.recent_runs(1)[0].status == "rejected"

    # An absurd learning rate: whatever it learns is not put live either.
    cfg, deps, wild = night(config(tmp_path, tiny_model_dir, learning_rate=5.0))
    assert wild.status in ("rejected", "failed"), wild.message
    assert store.current().name == "v0001" and consumed(cfg, deps) == taken and unexported(db) == 6
    # The feedback left over is still there for a night that learns more than the live adapter did
    # (three times the steps and no replay holding the tiny model back).
    cfg, deps, again = night(config(tmp_path, tiny_model_dir, iters=120, replay_share=0))
    assert again.status == "completed", again.message
    assert store.current().name == "v0002" and unexported(db) == 0 and consumed(cfg, deps) > taken


class SpoiledAfterPreference(WrappedTrainer):
    """The real trainer (SFT, then DPO); then the adapter it hands over is spoiled (its LoRA B
    matrices x30), as a preference stage that went badly wrong would leave it.  The SFT-only
    adapter it wrote beside it is left as trained."""

    def train(self, request, progress=None):
        from safetensors.torch import load_file, save_file

        metrics = self.inner.train(request, progress)
        weights = Path(request.output_dir) / AdapterFiles.PEFT_WEIGHTS
        tensors = load_file(weights)
        save_file({k: v * 30 if "lora_B" in k else v for k, v in tensors.items()}, weights)
        return metrics


def test_a_preference_stage_that_fails_the_gate_leaves_the_sft_adapter_to_be_judged(tmp_path: Path, server_model_dir: Path):
    db = tmp_path / "hanni" / "hanni.db"
    build_demo_db(db, conversations=24)  # thumbs-down with a better reply after them: DPO pairs
    (db.parent / "probe.jsonl").unlink()
    cfg, deps, r = night(config(tmp_path, server_model_dir, preference="dpo", iters=30), SpoiledAfterPreference)
    assert r.train.metrics.preference["method"] == "dpo"
    ev = r.evaluation
    spoiled, alone = ev.scores["with DPO"], ev.scores["candidate"]
    rule = {"tie_tolerance": cfg.eval.tie_tolerance, "max_general_increase": cfg.eval.max_general_increase}
    assert not decide(ev.scores["base"], None, spoiled, **rule).promote  # the spoiled one fails by itself
    assert r.status == "completed", r.message
    assert ev.decision.promote and ev.decision.note.startswith("SFT only: with DPO it failed")
    assert "promoted (SFT only" in (r.run_dir / "evaluation.json").read_text()
    # What went live is the SFT-only adapter (its trainer record has no preference stage), not the spoiled one.
    store = AdapterStore.for_state_dir(cfg.source.state_path)
    assert r.train.adapter_dir == AdapterFiles.sft_only(r.run_dir / "adapter-torch")
    live = store.current().adapter_dir("peft")
    assert (live / AdapterFiles.PEFT_WEIGHTS).read_bytes() != (
        r.run_dir / "adapter-torch" / AdapterFiles.PEFT_WEIGHTS).read_bytes()
    assert json.loads((live / AdapterFiles.TRAINER_META).read_text())["metrics"]["preference"] is None
    assert "with DPO" in (r.run_dir / "report.html").read_text()
