"""Build the configured server manager."""

from __future__ import annotations

from pathlib import Path

from nightlora.config import Config
from nightlora.platform.runner import CommandRunner, SubprocessRunner
from nightlora.targets.mlx_lm.manager import ServerManager
from nightlora.targets.mlx_lm.command import ServerCommand
from nightlora.targets.mlx_lm.launchd import LaunchdManager
from nightlora.targets.mlx_lm.process import ProcessManager
from nightlora.targets.mlx_lm.systemd import SystemdManager
from nightlora.targets.none.unmanaged import UnmanagedServer
from nightlora.state.store import AdapterStore


def server_command(cfg: Config, model: str | None = None) -> ServerCommand:
    """The server's argv template, filled with the config; ``model`` overrides train.model
    (pass the resolved local folder when train.model is a short name)."""
    return ServerCommand(
        template=tuple(cfg.server.command),
        model=model or served_model(cfg),
        host=cfg.server.host,
        port=cfg.server.port,
    )


def make_manager(
    cfg: Config,
    runner: CommandRunner | None = None,
    *,
    model: str | None = None,
    store: AdapterStore | None = None,
) -> ServerManager:
    """The manager for ``server.manager``, set up to serve the store's live version.

    Until ``configure`` is called, a start serves ``<store>/current`` when a live
    version exists and the base model otherwise.
    """
    runner = runner or SubprocessRunner()
    state = cfg.source.state_path
    store = store or AdapterStore.for_state_dir(state)
    adapter: Path | None = store.current_link if store.current() is not None else None
    kind = cfg.server.manager
    if kind == "none":
        return UnmanagedServer(cfg.server.host, cfg.server.port)
    command = server_command(cfg, model)
    if kind == "process":
        return ProcessManager(command, state, adapter=adapter, runner=runner)
    if kind == "launchd":
        return LaunchdManager(cfg.server.plist, cfg.server.label, runner, command=command, log_dir=state / "logs")
    if kind == "systemd":
        return SystemdManager(cfg.server.unit, command, runner, adapter=adapter)
    raise AssertionError(kind)  # the config's Literal rules anything else out


def served_model(cfg: Config) -> str:
    """What to pass as {model}: train.model as a local folder when it is one (as given, or
    under train.models_dir where `nightlora model prepare` puts named models), else as is."""
    given = Path(str(cfg.train.model)).expanduser()
    if given.is_dir():
        return str(given.resolve())
    prepared = Path(str(cfg.train.models_dir)).expanduser() / cfg.train.model
    if prepared.is_dir():
        return str(prepared.resolve())
    return cfg.train.model
