"""What the deploy logic needs from whatever runs the inference server."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class ServerManager(Protocol):
    """Runs the inference server; knows nothing about adapters beyond one path.

    ``configure`` only records what the next ``start`` serves (a plist, a unit
    file, an argv); it never restarts anything by itself.
    """

    #: "process", "launchd", "systemd" or "none".
    name: str
    #: False when the server is not ours to start or stop (manager "none").
    managed: bool

    def configure(self, adapter: Path | None) -> None:
        """Serve ``adapter`` (a folder with adapters.safetensors) from the next start; None = base model only."""

    def start(self) -> None:
        """Start the server; returns once it was launched (not necessarily ready). Raises ServerError."""

    def stop(self) -> None:
        """Stop the server and wait until it is gone; a server that is not running is not an error."""

    def is_running(self) -> bool:
        """Whether the server's process (or service) is up; says nothing about its health."""

    def describe(self) -> str:
        """One line for logs and --json: what is managed, where."""


def restart(manager: ServerManager) -> None:
    manager.stop()
    manager.start()
