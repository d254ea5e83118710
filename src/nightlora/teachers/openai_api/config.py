"""``[teacher] kind = "openai"``: any OpenAI-compatible chat endpoint (OpenAI, vLLM, a local mlx_lm server)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nightlora.teachers.settings import TeacherSettings


class OpenAITeacherConfig(TeacherSettings):
    kind: Literal["openai"] = "openai"
    # The API's base URL with its version, as providers document it: https://api.openai.com/v1,
    # http://127.0.0.1:8080/v1 (mlx_lm server, vLLM).  Requests go to {base_url}/chat/completions.
    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    # Name of the environment variable holding the API key (never the key itself); unset: no key (local servers).
    api_key_env: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
