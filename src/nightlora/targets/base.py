"""What the deploy stage needs from wherever adapters go live (``[target] kind = ...``).

A target serves one adapter version at a time (or the base model alone) and can say
whether what it serves answers.  How it switches is its own business: the mlx_lm
target rewrites the server's configuration and restarts it; a hot-swapping target
would load the new version beside the old one and move a name.  The deploy chain
(targets/deploy.py) is the same for all: try the new version, fall back to the one
before, then to no adapter, and point the store's ``current`` at what is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol

from nightlora.targets.health import HealthResult

AdapterFormat = Literal["mlx", "peft"]
DowntimeMode = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class Served:
    """An adapter version to serve, by the paths a target may use."""

    version: str        # "v0007"
    path: Path          # the version's own folder for the target's format (never changes)
    stable_path: Path   # the same files through the store's ``current`` link (same path every night)


class Target(Protocol):
    #: the kind's name in targets/registry.py
    name: str
    #: the adapter files it serves; the store keeps this format for every version
    adapter_format: AdapterFormat
    #: False when the server is someone else's: nightlora never starts, stops or reconfigures it
    managed: bool
    #: how the server may be stopped while training runs (None: never, e.g. it is not ours)
    downtime_mode: DowntimeMode | None

    @property
    def compute_url(self) -> str | None:
        """Where the model itself computes (vLLM's own address, not a proxy in front of it); None: nowhere
        nightlora knows. The night's compute leaves a core to a server on this machine (pipeline/threads.py)."""

    def describe(self) -> str:
        """One line for logs and --json: what is served, where."""

    def served_model(self) -> str | None:
        """The base model the server is set up to serve when that is not taken from nightlora's
        config (the app's LaunchAgent names its own ``--model``); None: it serves ``train.model``."""

    def activate(self, adapter: Served | None, log: Callable[[str], None]) -> HealthResult:
        """Serve ``adapter`` (None: the base model alone) and check that it answers.

        Raises NightloraError or OSError when the switch cannot even be tried."""

    def remember(self, adapter: Served | None) -> None:
        """Serve ``adapter`` from the next start, without restarting anything now."""

    def health(self, timeout: float | None = None) -> HealthResult:
        """Whether what it serves now answers a real chat completion (within its configured timeout)."""

    def is_running(self) -> bool:
        """Whether the server is up (says nothing of its health)."""

    def start(self) -> None:
        """Start the server on what is configured; returns once launched."""

    def stop(self) -> None:
        """Stop the server (for training, or `nightlora server stop`); not running is not an error."""

    def last_error(self) -> str:
        """The server's last error line, when its log is ours to read ("" otherwise)."""
