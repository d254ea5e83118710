"""Resource guards: is this a night the laptop can train in? Pure rules; the readings are passed in.

Checked before training (the ``guard`` stage) and by `nightlora doctor`.  A guard that fails
postpones the night: status ``postponed``, exit 0, its reason in the run's record, nothing
consumed, the server never touched.  A reading that cannot be taken (None) passes, saying so:
an unknown must not stop every night on a machine where /sys or pmset says nothing.

Disk: the night writes, beside the dataset already exported, the trained adapter, the best
weights early stopping keeps, and the store's copies in both formats (ADAPTER_COPIES), plus
``guard.disk_headroom_mb`` the user keeps free.  An adapter's size is its LoRA parameters in
fp32 (targets/downtime.py's shape of the model).

Memory: the train stage already stops the server and turns gradient checkpointing on when
memory is short (targets/downtime.py); the guard postpones only when even that would not fit:
training's estimate with checkpointing, plus the margin, against what is available now plus
the served model's weights when the server is ours to stop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nightlora.platform.memory import MemoryInfo
from nightlora.platform.power import PowerState
from nightlora.targets.downtime import GiB, ModelShape

MiB = 1024**2
# trained adapter + best-weights checkpoint + the store's mlx and peft copies
ADAPTER_COPIES = 4


@dataclass(frozen=True)
class GuardCheck:
    name: str         # disk | memory | power
    ok: bool
    reason: str
    fix: str = ""
    measured: bool = True  # False: the reading could not be taken (the check passes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size(n: int) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB" if n >= 10 * MiB else f"{n / MiB:.1f} MiB" if n >= MiB // 10 else f"{n // 1024} KiB"


def adapter_bytes(shape: ModelShape, lora_rank: int, lora_layers: int | None) -> int:
    """One LoRA adapter on disk: A and B of q, k, v, o and the three MLP projections per adapted layer, fp32."""
    adapted = min(lora_layers or shape.layers, shape.layers)
    return adapted * 7 * 2 * lora_rank * shape.hidden * 4


def disk_need_bytes(dataset_bytes: int, one_adapter_bytes: int, headroom_bytes: int) -> int:
    return dataset_bytes + ADAPTER_COPIES * one_adapter_bytes + headroom_bytes


def check_disk(free: int | None, *, dataset_bytes: int, one_adapter_bytes: int, headroom_bytes: int,
               where: str) -> GuardCheck:
    need = disk_need_bytes(dataset_bytes, one_adapter_bytes, headroom_bytes)
    parts = (f"dataset {_size(dataset_bytes)} + {ADAPTER_COPIES} adapter copies of {_size(one_adapter_bytes)} "
             f"+ headroom {_size(headroom_bytes)} = {_size(need)}")
    if free is None:
        return GuardCheck("disk", True, f"free disk at {where} unknown (needs ~{_size(need)})", measured=False)
    if free < need:
        return GuardCheck("disk", False, f"not enough free disk at {where}: {_size(free)} free, needs {parts}",
                          f"free {_size(need - free)} on that disk (old runs: {where}/runs), or lower "
                          "guard.disk_headroom_mb")
    return GuardCheck("disk", True, f"{_size(free)} free at {where}, needs {parts}")


def check_memory(memory: MemoryInfo | None, *, training_bytes: int, freeable_bytes: int,
                 margin_bytes: int | None = None) -> GuardCheck:
    """``training_bytes``: the estimate with gradient checkpointing on; ``freeable_bytes``: the served
    model's weights when the server may be stopped for training (0 otherwise)."""
    if memory is None:
        return GuardCheck("memory", True, f"free memory unknown (training needs ~{_size(training_bytes)})",
                          measured=False)
    margin = margin_bytes if margin_bytes is not None else (
        max(GiB, int(0.1 * memory.total_bytes)) if memory.total_bytes else GiB)
    could_have = memory.available_bytes + freeable_bytes
    need = training_bytes + margin
    numbers = (f"training needs ~{_size(training_bytes)} with gradient checkpointing + margin {_size(margin)}; "
               f"{_size(memory.available_bytes)} available ({memory.source})"
               + (f" + {_size(freeable_bytes)} if the server is stopped" if freeable_bytes else ""))
    if need > could_have:
        return GuardCheck("memory", False, "not enough memory even with the server stopped: " + numbers,
                          "close other programs, or lower train.max_seq_length / train.batch_size / train.lora_rank"
                          + ("" if freeable_bytes else ", or let the server stop (target.stop_during_training = auto)"))
    return GuardCheck("memory", True, numbers)


def check_power(power: PowerState | None, on_battery: str) -> GuardCheck:
    if power is None:
        return GuardCheck("power", True, "power source unknown", measured=False)
    if power.on_battery and on_battery == "postpone":
        return GuardCheck("power", False, f"{power.describe()}: training would drain the battery",
                          "plug the laptop in (the next night trains), or set guard.on_battery = \"run\"")
    note = "; guard.on_battery = run" if power.on_battery else ""
    return GuardCheck("power", True, power.describe() + note)


def postponed_message(failed: list[GuardCheck]) -> str:
    return "; ".join(f"{c.reason} (fix: {c.fix})" for c in failed)
