"""How many CPU threads the night's own compute (replay answers, training, evaluation) may use.

With the assistant's server still serving on this machine (kept serving during training, or a
server that never stops), both compete for the same cores.  On the demo's 2 cores with vLLM's CPU
worker beside it, torch training with 2 threads fell to 7-10 tokens/s (220 alone) and answers
to the app slowed past a second: torch's OpenMP threads wait on each other at every operator
when one of them is descheduled.  Leaving one core to the server keeps both moving
(bench/downtime.py measures it).  A server stopped for training, or on another machine, takes
nothing here: then all cores.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from nightlora.platform.net import is_loopback_url


def available_cores() -> int:
    """The cores this process may run on (its affinity where the platform has one, as in a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(configured: int | None, serving_here: bool, cores: int) -> tuple[int | None, str]:
    """(threads, why); None: the framework's own default (all cores)."""
    if configured is not None:
        return configured, f"train.threads = {configured} (config)"
    if serving_here and cores > 1:
        return cores - 1, f"{cores - 1} of {cores} cores: one left to the assistant's server, serving on this machine"
    if serving_here:
        return None, "1 core, shared with the assistant's server"
    return None, f"all {cores} cores: no server serving on this machine"


def serving_here(target, paused: bool) -> bool:
    """The assistant's server answers from this machine while the night computes."""
    if paused:
        return False
    # By address, not by who manages it: nightlora swaps adapters on an external vLLM that computes elsewhere.
    url = target.compute_url
    return url is not None and is_loopback_url(url) and target.is_running()


@contextlib.contextmanager
def night_threads(night, trainer, doing: str) -> Iterator[None]:
    """The trainer's compute within it on the threads chosen for this moment of the night (logged)."""
    n, why = choose_threads(night.cfg.train.threads, serving_here(night.deps.target, night.paused), available_cores())
    night.log(f"{doing} on {why}")
    with trainer.cpu_threads(n):
        yield
