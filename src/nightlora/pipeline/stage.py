"""A stage of the night, and the wrapper every stage runs in.

A stage is a name (the key status.json and the state db show), words for a person, and a
function of the night that does its work through files in the run folder.  It returns
None to go on, or a final status ("skipped", "rolled_back") that ends the night there.
The wrapper logs one line, updates status.json and the run's record, and times it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from nightlora.pipeline.night import Night


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    run: Callable[["Night"], str | None] = field(repr=False)


@contextlib.contextmanager
def timed(night: "Night", name: str, title: str) -> Iterator[None]:
    night.log(f"[{name}] {title}")
    # The run's record first, then status.json: a run killed once the status file names a stage
    # has that stage in its record too, so recover says where it stopped.
    if night.result.run_id is not None:
        night.recorder.stage(night.result.run_id, name)
    night.status.stage(name, title)
    t0 = time.monotonic()
    try:
        yield
    finally:
        night.result.stages_s[name] = round(time.monotonic() - t0, 2)


def run_stage(night: "Night", stage: Stage) -> str | None:
    with timed(night, stage.name, stage.title):
        return stage.run(night)
