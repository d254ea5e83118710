"""The candidate is judged before anything goes live: base model, live adapter and candidate,
asked the same things in the training framework (evaluate/evaluation.py), then the promotion
rule (evaluate/gate.py).

Reads: <run>/data/ (the held-out splits and preferences), the cached base answers to the general
prompts, probe.jsonl beside the source's database when there is one, the live version.
Writes: <run>/evaluation.json.  Ends the night "rejected" (the live adapter stays, no feedback is
consumed) when the candidate fails a rule; raises EvaluationError when training diverged.
"""

from __future__ import annotations

from pathlib import Path

from nightlora.evaluate import general
from nightlora.evaluate.evaluation import build_data, evaluate
from nightlora.evaluate.gate import check_promotable, decide
from nightlora.evaluate.probe import read_probe
from nightlora.models import model_fingerprint
from nightlora.pipeline.night import Night
from nightlora.pipeline.result import EvaluationResult
from nightlora.pipeline.threads import night_threads
from nightlora.paths import AdapterFiles
from nightlora.platform.fsutil import atomic_write_json
from nightlora.state.store import Version
from nightlora.train.convert import convert_adapter
from nightlora.train.splits import read_splits


def _live_dir(night: Night, live: Version, fmt: str, base_model: Path) -> Path | None:
    """The live version's adapter in the scorer's format (converted into the run folder when the store lacks it);
    None when it has no complete adapter in safetensors (the candidate is then judged against the base model)."""
    if fmt in live.formats:
        return live.adapter_dir(fmt)
    if not live.formats:
        night.log(f"warning: the live version {live.name} has no complete adapter in safetensors "
                  f"({live.path}); the candidate is compared with the base model only")
        return None
    src_fmt = live.formats[0]
    return convert_adapter(live.adapter_dir(src_fmt), src_fmt, fmt, base_model, night.run.live_as(fmt))


def _sft_only(train) -> Path | None:
    """The SFT adapter before DPO/KTO, when the trainer ran that stage and kept it (paths.AdapterFiles.sft_only)."""
    if not (train.metrics and train.metrics.preference):
        return None
    folder = AdapterFiles.sft_only(train.adapter_dir)
    return folder if AdapterFiles.format_of(folder) else None


def run(night: Night) -> str | None:
    r, cfg = night.result, night.cfg
    train = r.train
    assert train is not None and train.metrics is not None and train.adapter_dir is not None
    check_promotable(train.metrics)
    if not cfg.eval.gate:
        night.log("eval.gate = false: the candidate is not compared with anything")
        return None

    source = night.deps.source
    system = source.system_prompt()[0].text
    trainer = night.deps.trainer_for(train.backend)
    with night_threads(night, trainer, "evaluating"):
        return _judge(night, trainer, train, source, system)


def _judge(night: Night, trainer, train, source, system: str) -> str | None:
    r, cfg = night.result, night.cfg
    answers = general.base_answers(lambda: trainer.scorer(train.base_model), system, night.state.cache,
                                   model_fingerprint(train.base_model), log=night.log)
    probe = read_probe(source.probe_path) if source.probe_path and source.probe_path.is_file() else []
    data = build_data(read_splits(night.run.data), night.run.data, system, answers, probe,
                      smoke_prompts=cfg.eval.smoke_prompts, max_seq_length=train.hyperparams.max_seq_length)
    live = night.store.current()
    scorer = trainer.scorer(train.base_model)
    try:
        models = [("base", None, None)]
        live_dir = _live_dir(night, live, scorer.adapter_format, train.base_model) if live is not None else None
        if live is not None and live_dir is not None:
            models.append(("live", live_dir, live.name))
        models.append(("candidate", train.adapter_dir, None))
        scores = evaluate(scorer, data, models, log=night.log)
        rule = {"tie_tolerance": cfg.eval.tie_tolerance, "max_general_increase": cfg.eval.max_general_increase}
        decision = decide(scores["base"], scores.get("live"), scores["candidate"], **rule)
        sft_only = _sft_only(train)
        if not decision.promote and sft_only is not None:
            method = train.metrics.preference["method"].upper()  # _sft_only: a preference stage ran
            night.log(f"the candidate after {method} was {decision.summary()}; judging it without {method} (SFT only)")
            alone = evaluate(scorer, data, [("candidate", sft_only, "SFT only")], log=night.log)["candidate"]
            alone_decision = decide(scores["base"], scores.get("live"), alone, **rule)
            if alone_decision.promote:
                failed = ", ".join(r.name for r in decision.failed)
                alone_decision.note = f"SFT only: with {method} it failed {failed}"
                scores[f"with {method}"] = scores["candidate"]
                scores["candidate"], decision = alone, alone_decision
                train.adapter_dir = sft_only  # what deploy puts live
            else:
                night.log(f"without {method} it was {alone_decision.summary()}")
    finally:
        scorer.close()
    result = r.evaluation = EvaluationResult(
        scores, decision, data.test_split, len(data.test), len(data.general), len(data.pairs),
        [p["question"] for p in data.probe], [c["messages"][-1]["content"] for c in data.smoke])
    atomic_write_json(night.run.evaluation, result.to_dict())
    night.log(decision.summary())
    if decision.promote:
        return None
    r.status, r.exit_code = "rejected", 0
    r.message = f"the new adapter was not deployed ({decision.summary()})"
    return r.status
