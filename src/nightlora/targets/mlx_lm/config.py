"""``[target] kind = "mlx_lm"``: an `mlx_lm server` that nightlora restarts on the new adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from nightlora.config_section import Section


def default_command() -> list[str]:
    # argv, not a shell string; {python}, {model}, {adapter}, {host}, {port} are filled in.
    return ["{python}", "-m", "mlx_lm", "server", "--model", "{model}", "--adapter-path", "{adapter}",
            "--host", "{host}", "--port", "{port}"]


class MlxLmTargetConfig(Section):
    kind: Literal["mlx_lm"] = "mlx_lm"
    # Who runs the server: a child process nightlora starts, the app's LaunchAgent, or a systemd user unit.
    manager: Literal["process", "launchd", "systemd"] = "process"
    command: list[str] = Field(default_factory=default_command)
    host: str = "127.0.0.1"
    port: int = Field(8234, ge=1, le=65535)
    label: str = "com.hanni.mlx-server"
    plist: Path = Path("~/Library/LaunchAgents/com.hanni.mlx-server.plist")
    unit: str = "nightlora-server.service"
    stop_during_training: Literal["auto", "always", "never"] = "auto"
    health_timeout: float = Field(120.0, gt=0)

    @property
    def adapter_format(self) -> str:
        return "mlx"  # what `mlx_lm server --adapter-path` reads
