"""The "none" target: the server, if any, is someone else's; nightlora serves nothing.

Deploying only moves the store's ``current`` pointer (whoever serves reads it), and
health is checked at ``url`` when one is configured.  Nothing is ever started,
stopped or reconfigured, and training never takes a server down.
"""

from __future__ import annotations

import dataclasses
from typing import Callable
from urllib.parse import urlsplit

from nightlora.paths import StatePaths
from nightlora.platform.net import port_in_use
from nightlora.platform.runner import CommandRunner
from nightlora.targets.base import Served
from nightlora.targets.health import HealthCheck, HealthResult
from nightlora.targets.none.config import NoneTargetConfig


class NoTarget:
    name = "none"
    managed = False
    downtime_mode = None

    def __init__(self, url: str | None, adapter_format: str = "mlx", timeout: float = 120.0):
        self.url = url.rstrip("/") if url else None
        self.adapter_format = adapter_format
        self.check = HealthCheck(self.url, timeout=timeout) if self.url else None

    @property
    def base_url(self) -> str | None:
        return self.url

    @property
    def compute_url(self) -> str | None:
        return self.url

    def describe(self) -> str:
        where = f"{self.url} is someone else's" if self.url else "no server configured"
        return f"not managed (target.kind = \"none\"): {where}"

    def served_model(self) -> str | None:
        return None

    def remember(self, adapter: Served | None) -> None:
        pass

    def activate(self, adapter: Served | None, log: Callable[[str], None]) -> HealthResult:
        return self.health()

    def health(self, timeout: float | None = None) -> HealthResult:
        if self.check is None:
            # Nothing to ask: say so plainly rather than claim a server answered.
            return HealthResult(ok=True, url="", reason="no server to check (target.url is unset)", total_s=0.0)
        check = self.check if timeout is None else dataclasses.replace(self.check, timeout=timeout)
        return check()

    def is_running(self) -> bool:
        # All we can know about a server we do not run: whether something listens on its port.
        if not self.url:
            return False
        parts = urlsplit(self.url)
        return port_in_use(parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def last_error(self) -> str:
        return ""


def build(cfg: NoneTargetConfig, *, state: StatePaths, model: str | None, runner: CommandRunner,
          live: Served | None) -> NoTarget:
    return NoTarget(cfg.url, cfg.adapter_format, cfg.health_timeout)
