"""Asking a teacher many prompts: caps, retries with back-off, a pause, a few in flight at once.

* Every request sent counts against the night's ``max_requests`` (retries too: each may be
  billed), and, where the API reports usage, its tokens against ``max_tokens``.  A request
  the caps do not allow is not sent.
* A 429 or a 5xx is asked again after a back-off that doubles each time (a ``Retry-After``
  the server sent wins when longer), at most ``retries`` more times (tenacity).
* Something that is no answer at all (``garbage``: not JSON, no completion in it) drops that
  prompt for tonight; the next one is asked.  (An empty answer is an answer: the caller
  caches it and does not use it.)
* Anything else -- a timeout, a teacher that cannot be reached or refuses us, still rate
  limited after the retries, a cap reached -- drops the teacher for the rest of the night:
  the prompts not yet asked are reported as such, and the night goes on without it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from nightlora.errors import TeacherError
from nightlora.teachers.base import Teacher, TeacherReply, Usage

MAX_WAIT_S = 60.0


@dataclass(frozen=True)
class Job:
    key: str
    payload: dict[str, Any]


@dataclass
class Outcome:
    job: Job
    reply: TeacherReply | None = None
    error: TeacherError | None = None
    attempts: int = 0  # requests sent for it (0: never asked)


@dataclass
class AskReport:
    outcomes: list[Outcome]
    requests: int = 0
    usage: Usage = field(default_factory=Usage)
    stopped: TeacherError | None = None  # why the teacher was dropped for the night, if it was


class Budget:
    """The night's caps, shared by the requests in flight."""

    def __init__(self, max_requests: int, max_tokens: int | None):
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.requests = 0
        self.usage = Usage()
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.requests >= self.max_requests:
                raise TeacherError(f"the night's cap of {self.max_requests} requests is reached (teacher.max_requests)",
                                   "capped")
            used = self.usage.input_tokens + self.usage.output_tokens
            if self.max_tokens is not None and used >= self.max_tokens:
                raise TeacherError(f"the night's cap of {self.max_tokens} tokens is reached ({used} used; "
                                   "teacher.max_tokens)", "capped")
            self.requests += 1

    def spend(self, reply: TeacherReply) -> None:
        with self._lock:
            self.usage.add(reply)


def _retryable(e: BaseException) -> bool:
    return isinstance(e, TeacherError) and e.retryable


def _wait(backoff_s: float) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None) or 0.0
        return min(MAX_WAIT_S, max(backoff_s * 2 ** (state.attempt_number - 1), after))

    return wait


def ask_all(
    teacher: Teacher,
    jobs: list[Job],
    *,
    max_requests: int,
    max_tokens: int | None,
    retries: int,
    backoff_s: float,
    concurrency: int,
    pause_s: float,
    sleep: Callable[[float], None] = time.sleep,
    on_request: Callable[[Job, int, str, float, TeacherReply | None], None] = lambda *a: None,
) -> AskReport:
    """Ask ``jobs`` in order; ``on_request(job, attempt, outcome, seconds, reply)`` hears of every request sent."""
    budget = Budget(max_requests, max_tokens)
    stop = threading.Event()
    stopped: list[TeacherError] = []
    lock = threading.Lock()
    left = [len(jobs)]

    def one(job: Job) -> Outcome:
        out = Outcome(job)
        with lock:
            left[0] -= 1
            more = left[0] > 0
        if stop.is_set():
            return out

        def attempt() -> TeacherReply:
            if stop.is_set():  # dropped while this prompt waited to retry: not asked again
                raise TeacherError(str(stopped[0]), "stopped")
            budget.take()
            out.attempts += 1
            t0 = time.monotonic()
            try:
                reply = teacher.send(job.payload)
            except TeacherError as e:
                on_request(job, out.attempts, e.reason, time.monotonic() - t0, None)
                raise
            except Exception as e:  # a teacher's own bug must not end the night either; it is reported
                err = TeacherError(f"the teacher failed: {type(e).__name__}: {e}", "unavailable")
                on_request(job, out.attempts, err.reason, time.monotonic() - t0, None)
                raise err from None
            on_request(job, out.attempts, "ok", time.monotonic() - t0, reply)
            budget.spend(reply)
            return reply

        try:
            out.reply = Retrying(stop=stop_after_attempt(retries + 1), wait=_wait(backoff_s),
                                 retry=retry_if_exception(_retryable), sleep=sleep, reraise=True)(attempt)
        except TeacherError as e:
            out.error = e
            if e.reason != "garbage":
                with lock:
                    if not stopped:
                        stopped.append(e if not e.retryable else
                                       TeacherError(f"{e} (after {out.attempts} tries)", e.reason))
                stop.set()
        if out.attempts and more and pause_s and not stop.is_set():
            sleep(pause_s)
        return out

    if concurrency <= 1:
        outcomes = [one(job) for job in jobs]
    else:
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher")
        try:
            outcomes = list(pool.map(one, jobs))
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return AskReport(outcomes, budget.requests, budget.usage, stopped[0] if stopped else None)
