"""A progress bar for training (a base.ProgressFn): step, loss, tokens/s and ETA on stderr."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from nightlora.train.base import ProgressEvent


class TqdmProgress:
    """Feeds ProgressEvents to a tqdm bar; validations and messages become their own log lines.

    Those lines matter when stderr is a log file (the nightly job), where the bar
    itself is only carriage-return updates.
    """

    def __init__(self, total: int, file: TextIO | None = None):
        self._file = file or sys.stderr
        self._bar = tqdm(total=total, desc="train", unit="step", file=self._file, dynamic_ncols=True)
        self._postfix: dict[str, str] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.total != self._bar.total:
            self._bar.total = event.total
        if event.message:
            self._bar.write(event.message, file=self._file)
        if event.valid_loss is not None:
            self._postfix["val"] = f"{event.valid_loss:.3f}"
            self._bar.write(f"step {event.step}/{event.total}: validation loss {event.valid_loss:.4f}", file=self._file)
        if event.train_loss is not None:
            self._postfix["loss"] = f"{event.train_loss:.3f}"
        if event.tokens_per_second is not None:
            self._postfix["tok/s"] = f"{event.tokens_per_second:.0f}"
        self._bar.set_postfix(self._postfix, refresh=False)
        if event.step > self._bar.n:
            self._bar.update(event.step - self._bar.n)
        else:
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
