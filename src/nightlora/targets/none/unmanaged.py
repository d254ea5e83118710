"""Manager "none": the server belongs to someone else (the app, the user); we only look at it."""

from __future__ import annotations

from pathlib import Path

from nightlora.targets.mlx_lm.process import port_in_use


class UnmanagedServer:
    name = "none"
    managed = False

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port

    def describe(self) -> str:
        return f"not managed (server.manager = \"none\"): {self.host}:{self.port} is someone else's"

    def configure(self, adapter: Path | None) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def is_running(self) -> bool:
        # All we can know about a server we do not run: whether something listens on its port.
        return port_in_use(self.host, self.port)
