"""``[teacher] kind = "anthropic"``: the Anthropic Messages API through its official SDK."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nightlora.teachers.settings import TeacherSettings


class AnthropicTeacherConfig(TeacherSettings):
    kind: Literal["anthropic"] = "anthropic"
    model: str = Field(min_length=1)        # e.g. "claude-sonnet-4-5"
    api_key_env: str = "ANTHROPIC_API_KEY"  # the variable's name, never the key
    base_url: str | None = None             # unset: the SDK's default endpoint
    temperature: float | None = Field(None, ge=0, le=1)
