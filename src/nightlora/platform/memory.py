"""How much memory is available now: /proc/meminfo on Linux, vm_stat on macOS."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from nightlora.platform.runner import CommandRunner, SubprocessRunner


@dataclass(frozen=True)
class MemoryInfo:
    available_bytes: int
    total_bytes: int | None
    source: str  # where the numbers came from, for the reason text


def parse_meminfo(text: str) -> MemoryInfo | None:
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+)\s*kB", line)
        if m:
            values[m.group(1)] = int(m.group(2)) * 1024
    if "MemAvailable" not in values:
        return None
    return MemoryInfo(values["MemAvailable"], values.get("MemTotal"), "/proc/meminfo MemAvailable")


def parse_vm_stat(text: str, total_bytes: int | None = None) -> MemoryInfo | None:
    """macOS: available = (free - speculative + inactive) pages, as psutil counts it."""
    m = re.search(r"page size of (\d+) bytes", text)
    if not m:
        return None
    page = int(m.group(1))
    pages = {k.strip().lower(): int(v) for k, v in re.findall(r"^Pages ([\w -]+):\s+(\d+)\.", text, re.M)}
    if "free" not in pages or "inactive" not in pages:
        return None
    avail = (pages["free"] - pages.get("speculative", 0) + pages["inactive"]) * page
    return MemoryInfo(max(0, avail), total_bytes, "vm_stat free+inactive")


def read_memory(
    runner: CommandRunner | None = None,
    *,
    platform: str = sys.platform,
    meminfo: Path = Path("/proc/meminfo"),
) -> MemoryInfo | None:
    """Memory available now, or None when it cannot be read."""
    if platform.startswith("linux"):
        try:
            return parse_meminfo(meminfo.read_text())
        except OSError:
            return None
    if platform == "darwin":
        runner = runner or SubprocessRunner()
        vm = runner.run(["vm_stat"], timeout=10)
        if not vm.ok:
            return None
        total = runner.run(["sysctl", "-n", "hw.memsize"], timeout=10)
        total_bytes = int(total.stdout.strip()) if total.ok and total.stdout.strip().isdigit() else None
        return parse_vm_stat(vm.stdout, total_bytes)
    return None


