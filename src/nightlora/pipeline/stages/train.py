"""B3.5 + B3.7: hyperparameters from the data, the server stopped only if memory requires, LoRA training.

Reads: <run>/data/ and the base model (train.model, or the model the server serves).
Writes: <run>/adapter-<backend>/ (renamed into place only when complete).
"""

from __future__ import annotations

from datetime import datetime

from nightlora.models import base_model, num_layers
from nightlora.pipeline.night import Night
from nightlora.pipeline.result import TrainResult
from nightlora.pipeline.stage import timed
from nightlora.platform.notify import announce_downtime
from nightlora.targets.downtime import plan_downtime
from nightlora.train.base import TrainRequest
from nightlora.train.hyperparams import choose_hyperparams


def run(night: Night) -> str | None:
    cfg, target, counts = night.cfg, night.deps.target, night.result.export.counts  # type: ignore[union-attr]
    model_dir = base_model(cfg.train.model, cfg.models_dir, target.served_model())
    hp = choose_hyperparams(cfg.train, counts["train"], counts.get("valid", 0), num_layers(model_dir))
    decision = plan_downtime(
        target.downtime_mode or "never", model_dir, batch_size=hp.batch_size, seq_len=hp.max_seq_length,
        lora_rank=hp.lora_rank, lora_layers=hp.num_layers, grad_checkpoint=hp.grad_checkpoint,
        memory_reader=night.deps.read_memory,
    )
    night.log(f"server during training: {'stopped' if decision.stop else 'kept serving'} ({decision.reason})")
    trainer = night.deps.trainer_for(cfg.train.backend)
    result = night.result.train = TrainResult(trainer.name, hp, decision, model_dir)

    night.server_at_risk = True  # from here on, a failure brings the server back as it was
    if decision.stop and target.managed:
        with timed(night, "stop-server", "stopping the assistant's server for training"):
            end = night.status.current.expected_end
            announce_downtime(night.deps.notifier, datetime.fromisoformat(end) if end else None, night.app_name)
            night.status.update(server_down=True)
            target.stop()
            night.paused = True
        night.status.stage("train", f"training a LoRA adapter ({trainer.name}, {hp.iters} steps)")

    out = night.run.adapter(trainer.name)
    result.metrics = trainer.train(TrainRequest(night.run.data, model_dir, out, hp), night.deps.progress)
    result.adapter_dir = out
    return None
