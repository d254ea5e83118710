"""The teachers distillation can ask: ``[teacher] kind = ...``."""

from __future__ import annotations

from nightlora.kinds import Kind
from nightlora.teachers.anthropic_api.config import AnthropicTeacherConfig
from nightlora.teachers.claude_cli.config import ClaudeCliTeacherConfig
from nightlora.teachers.openai_api.config import OpenAITeacherConfig

TEACHERS: dict[str, Kind] = {
    "claude-cli": Kind(ClaudeCliTeacherConfig, "nightlora.teachers.claude_cli.teacher:build"),
    "openai": Kind(OpenAITeacherConfig, "nightlora.teachers.openai_api.teacher:build"),
    "anthropic": Kind(AnthropicTeacherConfig, "nightlora.teachers.anthropic_api.teacher:build"),
}
