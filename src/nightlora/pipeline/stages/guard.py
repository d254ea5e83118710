"""Before training: power, free disk and memory (pipeline/guards.py). A failing guard postpones the night.

Reads: <run>/data/ (its size and its splits, for the hyperparameters that size training),
the base model's config.json; the readings through RunDeps (read_power, free_disk, read_memory).
Writes: ``result.guards``; ends the night ``postponed`` (exit 0) with every failing guard's
reason and fix, before the server is touched and with nothing consumed.
"""

from __future__ import annotations

from nightlora.models import base_model, num_layers
from nightlora.pipeline.guards import (
    MiB, GuardCheck, adapter_bytes, check_disk, check_memory, check_power, postponed_message,
)
from nightlora.pipeline.night import Night
from nightlora.platform.disk import tree_bytes
from nightlora.targets.downtime import estimate_training_bytes, model_shape
from nightlora.train.hyperparams import choose_hyperparams
from nightlora.train.splits import conversations, read_split


def resource_checks(night: Night) -> list[GuardCheck]:
    cfg, deps, target = night.cfg, night.deps, night.deps.target
    checks = [check_power(deps.read_power(), cfg.guard.on_battery)]
    model_dir = base_model(cfg.train.model, cfg.models_dir, target.served_model())
    shape = model_shape(model_dir)
    hp = choose_hyperparams(cfg.train, conversations(read_split(night.run.data, "train")),
                            len(read_split(night.run.data, "valid")), num_layers(model_dir))
    checks.append(check_disk(deps.free_disk(night.state.root), dataset_bytes=tree_bytes(night.run.data),
                             one_adapter_bytes=adapter_bytes(shape, hp.lora_rank, hp.num_layers),
                             headroom_bytes=cfg.guard.disk_headroom_mb * MiB, where=str(night.state.root)))
    if cfg.guard.memory:
        stoppable = target.managed and target.downtime_mode in ("auto", "always") and target.is_running()
        need = estimate_training_bytes(shape, batch_size=hp.batch_size, seq_len=hp.max_seq_length,
                                       lora_rank=hp.lora_rank, lora_layers=hp.num_layers, grad_checkpoint=True)
        checks.append(check_memory(deps.read_memory(), training_bytes=need,
                                   freeable_bytes=shape.weights_bytes if stoppable else 0))
    return checks


def run(night: Night) -> str | None:
    checks = night.result.guards = resource_checks(night)
    for c in checks:
        night.log(f"  {c.name}: {'ok' if c.ok else 'FAILS'}: {c.reason}")
    failed = [c for c in checks if not c.ok]
    if not failed:
        return None
    r = night.result
    r.status, r.exit_code, r.message = "postponed", 0, postponed_message(failed)
    return r.status
