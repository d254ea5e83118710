"""Who runs the mlx_lm server: ``[target] manager = ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from nightlora.paths import StatePaths
from nightlora.platform.runner import CommandRunner
from nightlora.targets.mlx_lm.command import ServerCommand
from nightlora.targets.mlx_lm.config import MlxLmTargetConfig
from nightlora.targets.mlx_lm.launchd import LaunchdManager
from nightlora.targets.mlx_lm.manager import ServerManager
from nightlora.targets.mlx_lm.process import ProcessManager
from nightlora.targets.mlx_lm.systemd import SystemdManager

# (config, argv template filled in, state paths, runner, adapter to serve on a plain start) -> manager
Build = Callable[[MlxLmTargetConfig, ServerCommand, StatePaths, CommandRunner, "Path | None"], ServerManager]

MANAGERS: dict[str, Build] = {
    "process": lambda cfg, cmd, state, runner, adapter: ProcessManager(cmd, state.root, adapter=adapter, runner=runner),
    "launchd": lambda cfg, cmd, state, runner, adapter: LaunchdManager(cfg.plist, cfg.label, runner, command=cmd,
                                                                       log_dir=state.logs),
    "systemd": lambda cfg, cmd, state, runner, adapter: SystemdManager(cfg.unit, cmd, runner, adapter=adapter),
}
