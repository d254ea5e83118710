"""Which process is which, by pid and start time: never by name.

A pid alone is not an identity (pids are recycled after a crash or a reboot), so
everything that may later signal a process records its start time with it.
"""

from __future__ import annotations

from pathlib import Path

from nightlora.platform.runner import CommandRunner, SubprocessRunner


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, starttime) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0], fields[19]


def process_identity(pid: int, runner: CommandRunner | None = None, proc_root: Path = Path("/proc")) -> str | None:
    """A string that differs between two processes that had the same pid; None if not running.

    Zombies (exited, not yet reaped) count as not running.
    """
    if pid <= 0:
        return None
    if (proc_root / "self").exists():
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return None
        return f"proc:{stat[1]}"
    # macOS and other systems without /proc: ps prints the state and the full start time.
    r = (runner or SubprocessRunner()).run(
        ["ps", "-o", "stat=", "-o", "lstart=", "-p", str(pid)], timeout=10, env={"LC_ALL": "C"}
    )
    parts = r.stdout.split(None, 1) if r.ok else []
    if len(parts) != 2 or parts[0].startswith("Z"):
        return None
    return "ps:" + " ".join(parts[1].split())
