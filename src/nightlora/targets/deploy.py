"""Put an adapter live without ever leaving the assistant down.

Each step points the store's ``current`` at a version (or at nothing), asks the
target to serve it (targets/base.py: the mlx_lm target reconfigures and restarts
its server) and checks health.  The steps form a fallback chain, tried in order
until one is healthy:

    deploy:   the new version  ->  the version that was live before  ->  no adapter
    restore:  the live version ->  the one before it                 ->  no adapter

The ``current`` pointer always ends on what is actually served.  A new version
whose server failed while a fallback worked is marked rejected in the store, so
it is never chosen as a rollback target.  A target that is not ours (kind "none")
gets the pointer switched and its health reported; nothing is restarted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Callable

from nightlora.errors import HealthError, NightloraError
from nightlora.state.store import AdapterStore, Version
from nightlora.targets.base import Served, Target
from nightlora.targets.health import HealthResult


class Outcome(str, Enum):
    LIVE = "live"                # the requested version serves
    RESTORED = "restored"        # restore(): the live version serves again
    UNCHANGED = "unchanged"      # restore(): the server was already healthy, nothing touched
    ROLLED_BACK = "rolled_back"  # the requested/live version failed; an older one serves
    NO_ADAPTER = "no_adapter"    # every version failed; the base model serves
    UNMANAGED = "unmanaged"      # target "none": pointer switched, the server is someone else's
    DOWN = "down"                # nothing could be made healthy


@dataclass(frozen=True)
class Attempt:
    version: str | None  # None: the base model without an adapter
    ok: bool
    reason: str
    seconds: float
    health: HealthResult | None = None


@dataclass(frozen=True)
class DeployResult:
    outcome: Outcome
    live: str | None          # the version now served (None: no adapter, or down)
    requested: str | None     # what deploy() was asked for; restore(): the live version it started from
    attempts: list[Attempt] = field(default_factory=list)
    health: HealthResult | None = None  # of the step that ended the chain

    @property
    def ok(self) -> bool:
        return self.outcome is not Outcome.DOWN

    @property
    def error(self) -> str | None:
        if self.ok:
            return None
        last = self.attempts[-1].reason if self.attempts else "no attempt was made"
        return f"the assistant's server is down: {last}"

    def message(self) -> str:
        name = self.live or "no adapter"
        return {
            Outcome.LIVE: f"{name} is live",
            Outcome.RESTORED: f"the server is back with {name}",
            Outcome.UNCHANGED: f"the server was already healthy with {name}",
            Outcome.ROLLED_BACK: f"{self.requested} failed; rolled back to {name}",
            Outcome.NO_ADAPTER: f"{self.requested or 'the adapter'} failed; serving the base model without an adapter",
            Outcome.UNMANAGED: f"{name} is current; the server is not managed by nightlora",
            Outcome.DOWN: self.error or "down",
        }[self.outcome]

    def raise_if_down(self) -> "DeployResult":
        if not self.ok:
            raise HealthError(self.message())
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome.value
        d["ok"] = self.ok
        d["message"] = self.message()
        return d


Log = Callable[[str], None]


def _nolog(_: str) -> None:
    pass


def served(store: AdapterStore, fmt: str, version: Version) -> Served:
    """The paths of ``version``'s adapter in format ``fmt``."""
    return Served(version.name, version.adapter_dir(fmt), store.stable_path(fmt))


def _serve(store: AdapterStore, target: Target, version: Version | None, log: Log) -> Attempt:
    key = version.name if version else None
    label = key or "no adapter"
    t0 = time.monotonic()
    try:
        adapter = served(store, target.adapter_format, version) if version else None
        store.set_current(version)
        h = target.activate(adapter, log)
    except (NightloraError, OSError) as e:
        # A step that cannot even be tried (a plist we may not write, launchctl refusing) is a
        # failed step like any other: the chain goes on to the next fallback.
        reason = str(e) if isinstance(e, NightloraError) else f"{type(e).__name__}: {e}"
        log(f"{label}: {reason}")
        return Attempt(key, False, reason, time.monotonic() - t0)
    reason = h.reason
    if h.ok:
        log(f"{label}: healthy in {h.total_s:.1f} s")
    else:
        line = target.last_error()
        reason += f" (server log: {line})" if line else ""
        log(f"{label}: {reason}")
    return Attempt(key, h.ok, reason, time.monotonic() - t0, h)


def _chain(
    store: AdapterStore,
    target: Target,
    steps: list[tuple[Version | None, Outcome]],
    *,
    requested: Version | None,
    reject_requested: bool,
    fallback_pointer: Version | None,
    log: Log,
) -> DeployResult:
    attempts: list[Attempt] = []
    seen: set[str | None] = set()
    for version, outcome in steps:
        key = version.name if version else None
        if key in seen:
            continue
        seen.add(key)
        a = _serve(store, target, version, log)
        attempts.append(a)
        if a.ok:
            if reject_requested and requested is not None and len(attempts) > 1:
                store.reject(requested, attempts[0].reason)
            return DeployResult(outcome, key, requested.name if requested else None, attempts, a.health)
    # Nothing answered.  Point back at the last known good version, so the next start
    # (launchd's KeepAlive, the app, tomorrow's run) tries that first.
    store.set_current(fallback_pointer)
    try:
        target.remember(served(store, target.adapter_format, fallback_pointer) if fallback_pointer else None)
    except (NightloraError, OSError) as e:
        log(f"cannot configure the server for {fallback_pointer.name if fallback_pointer else 'no adapter'}: {e}")
    return DeployResult(Outcome.DOWN, None, requested.name if requested else None, attempts,
                        attempts[-1].health if attempts else None)


def deploy(
    store: AdapterStore,
    target: Target,
    version: Version | str,
    *,
    log: Log = _nolog,
) -> DeployResult:
    """Serve ``version``; on failure fall back to the version live before, then to no adapter."""
    wanted = store.get(version.name if isinstance(version, Version) else version)
    # Adapters load only from safetensors files (never a pickle: adapter_model.bin, *.pt): a version
    # without them in the target's format is refused before anything moves.
    wanted.adapter_dir(target.adapter_format)
    before = store.current()
    if not target.managed:
        store.set_current(wanted)
        h = target.health()
        log(f"{wanted.name} is current; the server is not ours to restart ({'healthy' if h.ok else h.reason})")
        return DeployResult(Outcome.UNMANAGED, wanted.name, wanted.name,
                            [Attempt(wanted.name, h.ok, h.reason, h.total_s, h)], h)
    steps: list[tuple[Version | None, Outcome]] = [(wanted, Outcome.LIVE)]
    if before is not None:
        steps.append((before, Outcome.ROLLED_BACK))
    steps.append((None, Outcome.NO_ADAPTER))
    return _chain(store, target, steps, requested=wanted, reject_requested=True,
                  fallback_pointer=before, log=log)


def restore(
    store: AdapterStore,
    target: Target,
    *,
    log: Log = _nolog,
) -> DeployResult:
    """Bring the server back as it was (after a failed training, an interrupted run).

    A running server that passes the health check is left alone.
    """
    current = store.current()
    name = current.name if current else None
    if not target.managed:
        h = target.health()
        outcome = Outcome.UNMANAGED if h.ok else Outcome.DOWN
        return DeployResult(outcome, name if h.ok else None, name, [Attempt(name, h.ok, h.reason, h.total_s, h)], h)
    if target.is_running():
        h = target.health()
        if h.ok:
            return DeployResult(Outcome.UNCHANGED, name, name, [Attempt(name, True, "", h.total_s, h)], h)
        log(f"the running server is not healthy ({h.reason}); restarting it")
    steps: list[tuple[Version | None, Outcome]] = [(current, Outcome.RESTORED)]
    if current is not None:
        previous = store.previous()
        if previous is not None:
            steps.append((previous, Outcome.ROLLED_BACK))
        steps.append((None, Outcome.NO_ADAPTER))
    return _chain(store, target, steps, requested=current, reject_requested=False,
                  fallback_pointer=current, log=log)
