"""The mlx_lm target: `mlx_lm server` serves one adapter; a new one goes live by a restart.

mlx_lm cannot swap adapters in a running server (a request naming another adapter
reloads the whole model), so ``activate`` writes the new ``--adapter-path`` into the
manager's configuration (argv, plist or unit), stops the server and starts it
again.  The path is the store's ``current`` link, the same every night, so an app
or launchd restarting the server later serves the live version too.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from nightlora.paths import StatePaths
from nightlora.platform.runner import CommandRunner
from nightlora.targets.base import Served
from nightlora.targets.health import HealthCheck, HealthResult
from nightlora.targets.mlx_lm.command import ServerCommand
from nightlora.targets.mlx_lm.config import MlxLmTargetConfig
from nightlora.targets.mlx_lm.manager import ServerManager
from nightlora.targets.mlx_lm.managers import MANAGERS
from nightlora.platform.net import base_url


class MlxLmTarget:
    name = "mlx_lm"
    adapter_format = "mlx"
    managed = True

    def __init__(self, manager: ServerManager, check: HealthCheck, downtime_mode: str = "auto"):
        self.manager = manager
        self.check = check
        self.downtime_mode = downtime_mode
        self._serving: str | None = None

    @property
    def base_url(self) -> str:
        return self.check.base_url

    @property
    def compute_url(self) -> str:
        return self.check.base_url

    def describe(self) -> str:
        return self.manager.describe()

    def served_model(self) -> str | None:
        return self.manager.served_model()

    def remember(self, adapter: Served | None) -> None:
        self.manager.configure(adapter.stable_path if adapter else None)
        self._serving = adapter.version if adapter else None

    def activate(self, adapter: Served | None, log: Callable[[str], None]) -> HealthResult:
        self.remember(adapter)
        self.manager.stop()
        log(f"starting the server with {adapter.version if adapter else 'no adapter'}")
        self.manager.start()
        return self.check(alive=self.manager.is_running, adapter=self._serving)

    def health(self, timeout: float | None = None) -> HealthResult:
        check = self.check if timeout is None else dataclasses.replace(self.check, timeout=timeout)
        return check(alive=self.manager.is_running, adapter=self._serving)

    def is_running(self) -> bool:
        return self.manager.is_running()

    def start(self) -> None:
        self.manager.start()

    def stop(self) -> None:
        self.manager.stop()

    def last_error(self) -> str:
        return self.manager.last_error()


def server_command(cfg: MlxLmTargetConfig, model: str | None) -> ServerCommand:
    return ServerCommand(template=tuple(cfg.command), model=model, host=cfg.host, port=cfg.port)


def build(cfg: MlxLmTargetConfig, *, state: StatePaths, model: str | None, runner: CommandRunner,
          live: Served | None) -> MlxLmTarget:
    """The target for ``cfg``; until an adapter is activated, a start serves ``live`` (None: the base model)."""
    command = server_command(cfg, model)
    adapter = live.stable_path if live else None
    manager = MANAGERS[cfg.manager](cfg, command, state, runner, adapter)
    target = MlxLmTarget(manager, HealthCheck(base_url(cfg.host, cfg.port), timeout=cfg.health_timeout),
                         cfg.stop_during_training)
    target._serving = live.version if live else None
    return target
