"""Control of the local inference server (mlx_lm server): start, stop, point at an adapter, check health."""

from nightlora.server.base import ServerManager, restart
from nightlora.server.command import ServerCommand, build_argv
from nightlora.server.factory import make_manager, server_command
from nightlora.server.health import HealthCheck, HealthResult, check_health

__all__ = [
    "HealthCheck", "HealthResult", "ServerCommand", "ServerManager", "build_argv",
    "check_health", "make_manager", "restart", "server_command",
]
