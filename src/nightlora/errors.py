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


class TeacherError(NightloraError):
    """A teacher (distillation) did not give a usable answer.

    ``reason`` says how: ``timeout``, ``rate_limited``, ``server_error`` (retryable ones are asked
    again after a pause), ``unavailable`` (cannot be reached or refused us), ``garbage`` (an answer
    that is not a reply: that prompt is dropped, the teacher is asked the next one), ``capped``
    (the night's request or token cap).  A night never fails for it: the teacher is reported and
    the night goes on without it.
    """

    exit_code = 15
    RETRYABLE = frozenset({"rate_limited", "server_error"})

    def __init__(self, message: str, reason: str = "unavailable", retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.reason in self.RETRYABLE


class SetupError(NightloraError):
    """`nightlora doctor` found a check that fails (the table says which, and each fix)."""

    exit_code = 16
