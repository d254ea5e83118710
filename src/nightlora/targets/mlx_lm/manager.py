"""What the mlx_lm target needs from whatever runs its server (the managers: process, launchd, systemd)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class ServerManager(Protocol):
    """Runs the inference server; knows nothing about adapters beyond one path.

    ``configure`` only records what the next ``start`` serves (a plist, a unit
    file, an argv); it never restarts anything by itself.
    """

    #: "process", "launchd" or "systemd" (targets/mlx_lm/managers.py).
    name: str

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

    def served_model(self) -> str | None:
        """The ``--model`` the server is configured with when it is not ours to choose (an existing
        LaunchAgent); None when the server's command is built from nightlora's config."""

    def last_error(self) -> str:
        """The last error line of the server's log since its latest start ("" when unknown)."""

