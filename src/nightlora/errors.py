"""Every error the tool raises on purpose, each with its own exit code.

The CLI turns these into one line on stderr and exits with ``exit_code``;
a traceback appears only with ``--debug``.  Anything else is a bug (exit 1).
"""

from __future__ import annotations


class NightloraError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split())


class ConfigError(NightloraError):
    exit_code = 3


class SourceError(NightloraError):
    """The assistant's database or its files cannot be read as expected."""

    exit_code = 4


class ExportError(NightloraError):
    exit_code = 5


class TrainError(NightloraError):
    exit_code = 6


class EvaluationError(NightloraError):
    exit_code = 7


class ServerError(NightloraError):
    """Starting, stopping or configuring the inference server failed."""

    exit_code = 8


class HealthError(NightloraError):
    exit_code = 9


class LockError(NightloraError):
    """Another run holds the lock."""

    exit_code = 10


class ModelError(NightloraError):
    exit_code = 11


class ScheduleError(NightloraError):
    exit_code = 12


class Interrupted(NightloraError):
    exit_code = 130


class StoreError(NightloraError):
    """The adapter store: an unknown version, an incomplete adapter folder."""

    exit_code = 13


class StateError(NightloraError):
    """The tool's own state database (runs, deploys, consumed feedback)."""

    exit_code = 14
