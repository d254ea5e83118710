"""``[teacher] kind = "claude-cli"``: the `claude` command (Claude Code), as the original asked it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nightlora.teachers.settings import TeacherSettings


class ClaudeCliTeacherConfig(TeacherSettings):
    kind: Literal["claude-cli"] = "claude-cli"
    command: str = "claude"           # a name on PATH or a path
    model: str | None = None          # `--model MODEL`; unset: the CLI's own default
    pause_s: float = Field(1.0, ge=0)  # the original's pause between requests
    # Longest prompt passed as an argument (argv has a size limit; macOS's is 1 MiB in all).
    max_prompt_bytes: int = Field(100_000, ge=1000)
