"""Is the machine on battery? macOS: `pmset -g batt`; Linux: /sys/class/power_supply.

Training for an hour on battery empties a laptop the user expects to find charged in the
morning, so a night on battery is postponed (guard.on_battery).  Both readers say "unknown"
(None) rather than guess when nothing can be read; a desktop without a battery is on mains.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from nightlora.platform.runner import CommandRunner, SubprocessRunner

SYSFS_POWER = Path("/sys/class/power_supply")


@dataclass(frozen=True)
class PowerState:
    on_battery: bool
    percent: int | None  # the battery's charge, when there is one
    source: str          # where the answer came from, for the reason text

    def describe(self) -> str:
        where = "on battery" if self.on_battery else "on mains power"
        return where + (f" ({self.percent}%)" if self.percent is not None else "") + f" [{self.source}]"


# `pmset -g batt` prints, e.g.:
#   Now drawing from 'Battery Power'
#    -InternalBattery-0 (id=4653155)	85%; discharging; 5:12 remaining present: true
# and "Now drawing from 'AC Power'" (or 'UPS Power') when plugged in; a Mac without a battery
# prints the first line only.
_DRAWING = re.compile(r"Now drawing from '([^']+)'")
_PERCENT = re.compile(r"-InternalBattery-\d+.*?\t\s*(\d{1,3})%;")


def parse_pmset_batt(text: str) -> PowerState | None:
    m = _DRAWING.search(text)
    if not m:
        return None
    pct = _PERCENT.search(text)
    return PowerState(m.group(1) == "Battery Power", int(pct.group(1)) if pct else None, f"pmset: {m.group(1)}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def read_sysfs_power(root: Path = SYSFS_POWER) -> PowerState | None:
    """From the kernel's power_supply class (Documentation/ABI/testing/sysfs-class-power).

    A mains, USB or UPS supply that is ``online`` means mains power.  Without one online, the
    system batteries (``type`` Battery, ``scope`` not Device: a wireless mouse's battery is not the
    laptop's) decide: any ``Discharging`` means on battery.  No supply at all (a desktop, a VM, a
    container): mains.  None when the folder cannot be listed.
    """
    root = Path(root)
    try:
        supplies = sorted(p for p in root.iterdir())
    except FileNotFoundError:
        return PowerState(False, None, f"{root}: no power supplies (a desktop or a VM)")
    except OSError:
        return None
    mains_online, mains_seen, batteries = False, False, []
    for s in supplies:
        kind = _read(s / "type")
        if kind in ("Mains", "USB", "UPS", "Wireless"):
            mains_seen = True
            mains_online |= _read(s / "online") == "1"
        elif kind == "Battery" and (_read(s / "scope") or "System") != "Device":
            cap = _read(s / "capacity")
            batteries.append((s.name, _read(s / "status") or "Unknown", int(cap) if cap and cap.isdigit() else None))
    pct = batteries[0][2] if batteries else None
    if mains_online:
        return PowerState(False, pct, f"{root}: mains online")
    discharging = [b for b in batteries if b[1] == "Discharging"]
    if discharging:
        return PowerState(True, discharging[0][2], f"{root}/{discharging[0][0]}: Discharging")
    if mains_seen and batteries:  # mains present but offline, battery not reporting discharge: still on it
        return PowerState(True, pct, f"{root}: mains offline")
    return PowerState(False, pct, f"{root}: " + ("battery " + batteries[0][1] if batteries else "no battery"))


def read_power(runner: CommandRunner | None = None, *, platform: str = sys.platform,
               sysfs_root: Path = SYSFS_POWER) -> PowerState | None:
    """The power source now, or None when it cannot be told."""
    if platform.startswith("linux"):
        return read_sysfs_power(sysfs_root)
    if platform == "darwin":
        r = (runner or SubprocessRunner()).run(["pmset", "-g", "batt"], timeout=10)
        return parse_pmset_batt(r.stdout) if r.ok else None
    return None
