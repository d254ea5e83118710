"""``[target] kind = "none"``: nightlora serves nothing; it keeps the store's ``current`` pointer,
and checks the health of a server at ``url`` when one is given (someone else's server)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nightlora.config_section import Section


class NoneTargetConfig(Section):
    kind: Literal["none"] = "none"
    # Base URL of a server that someone else runs (e.g. http://127.0.0.1:8234); unset: nothing to check.
    url: str | None = None
    # The adapter format the store keeps for whoever serves ``current``.
    adapter_format: Literal["mlx", "peft"] = "mlx"
    health_timeout: float = Field(120.0, gt=0)
