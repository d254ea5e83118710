"""B3.5 + B3.7: hyperparameters from the data, the server stopped only if memory requires, LoRA training.

Reads: <run>/data/ and the base model (train.model, or the model the server serves).
Writes: <run>/data/replay.jsonl (the base model's own answers to general prompts, mixed in so
the adapter keeps answering everything else as the base model does; evaluate/general.py) and
<run>/adapter-<backend>/ (renamed into place only when complete).  Always from the base model:
last night's adapter is not continued, so drift cannot accumulate.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from nightlora.evaluate import general
from nightlora.models import base_model, model_fingerprint, num_layers
from nightlora.paths import REPLAY
from nightlora.pipeline.night import Night
from nightlora.pipeline.result import TrainResult
from nightlora.pipeline.stage import timed
from nightlora.pipeline.threads import night_threads
from nightlora.platform.fsutil import atomic_write_bytes
from nightlora.platform.notify import announce_downtime
from nightlora.targets.downtime import plan_training_memory
from nightlora.train.base import TrainRequest
from nightlora.train.hyperparams import choose_hyperparams
from nightlora.train.splits import conversations, longest_tokens_bound, read_split


def _write_replay(night: Night, examples: list[dict]) -> None:
    import json

    data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode()
    atomic_write_bytes(night.run.data / REPLAY, data)


def run(night: Night) -> str | None:
    cfg, target = night.cfg, night.deps.target
    model_dir = base_model(cfg.train.model, cfg.models_dir, target.served_model())
    trainer = night.deps.trainer_for(cfg.train.backend)

    system = night.deps.source.system_prompt()[0].text
    # No self-replay asked for (train.replay_share = 0): the base model's answers are not needed here.
    answers = []
    if cfg.train.replay_share != 0:
        with night_threads(night, trainer, "asking the base model"):
            answers = general.base_answers(lambda: trainer.scorer(model_dir), system, night.state.cache,
                                           model_fingerprint(model_dir), log=night.log)
    train_split = read_split(night.run.data, "train")
    # Learned by KL to the base model, answers cut at the token limit are replay too (general._usable).
    unfinished = cfg.train.replay_loss == "kl" and trainer.kl_replay
    hp = choose_hyperparams(cfg.train, conversations(train_split), len(read_split(night.run.data, "valid")),
                            num_layers(model_dir),
                            replay_available=general.replay_available(answers, unfinished=unfinished))
    replay = general.replay_examples(answers, system, hp.replay_examples, unfinished=unfinished)
    _write_replay(night, replay)

    decision, checkpoint, why = plan_training_memory(
        target.downtime_mode or "never", model_dir, batch_size=hp.batch_size,
        seq_len=longest_tokens_bound(train_split + replay, hp.max_seq_length),
        lora_rank=hp.lora_rank, lora_layers=hp.num_layers,
        grad_checkpoint=None if cfg.train.grad_checkpoint == "auto" else cfg.train.grad_checkpoint,
        memory_reader=night.deps.read_memory,
    )
    hp = dataclasses.replace(hp, grad_checkpoint=checkpoint, reasons={**hp.reasons, "grad_checkpoint": why})
    night.log(f"server during training: {'stopped' if decision.stop else 'kept serving'} ({decision.reason})")
    result = night.result.train = TrainResult(trainer.name, hp, decision, model_dir)

    night.server_at_risk = True  # from here on, a failure brings the server back as it was
    if decision.stop and target.managed:
        with timed(night, "stop-server", "stopping the assistant's server for training"):
            end = night.status.current.expected_end
            announce_downtime(night.deps.notifier, datetime.fromisoformat(end) if end else None, night.app_name)
            night.status.update(server_down=True)
            target.stop()
            night.paused = True
        if night.result.run_id is not None:  # back in "train" for the record too: a kill now is a kill in training
            night.recorder.stage(night.result.run_id, "train")
        night.status.stage("train", f"training a LoRA adapter ({trainer.name}, {hp.iters} steps)")

    out = night.run.adapter(trainer.name)
    with night_threads(night, trainer, "training"):
        result.metrics = trainer.train(TrainRequest(night.run.data, model_dir, out, hp), night.deps.progress)
    result.adapter_dir = out
    return None
