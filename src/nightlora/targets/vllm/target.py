"""The vllm target: each night's PEFT adapter goes live on a running vLLM server, no restart.

The switch (``activate``), each step timed in the log:

1. load the new version under its own name (``hanni-v0008``; names are never reused);
   vLLM's refusal (missing path, rank above --max-lora-rank, wrong base) is raised with
   its message, and nothing live has changed;
2. ask it the health prompt by that name, and the base model too: the reply must be
   non-empty, stop by itself, not loop and differ from the base's; otherwise it is unloaded
   and the live version stays;
3. move the stable name (``hanni``): one atomic rename of the route file the proxy reads
   (proxy.py), so each request goes wholly to the old version or wholly to the new one;
4. ask through the proxy by the stable name and check that the answer came from the new
   version (the switch has served a request);
5. retire every other ``hanni-*`` adapter, each once the proxy has no request of it in flight.

Rollback is the same switch to an older version.  A run killed between two steps leaves at
most an extra adapter loaded, or the route on a version the store does not call current:
``health`` says so, and ``nightlora recover`` switches again to the store's ``current``.

The server is ours (``manager = "process"`` or ``"systemd"``) or someone else's
(``"external"``: its URL only; it is never started or stopped).  The proxy is ours either way.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

from nightlora.errors import NightloraError, ServerError
from nightlora.paths import StatePaths
from nightlora.platform.fsutil import atomic_write_json
from nightlora.platform.net import base_url, port_in_use
from nightlora.platform.runner import CommandRunner
from nightlora.targets.base import Served
from nightlora.targets.health import DEFAULT_PROMPT, HealthResult
from nightlora.targets.mlx_lm.command import ServerCommand
from nightlora.targets.mlx_lm.manager import ServerManager
from nightlora.targets.mlx_lm.process import ProcessManager
from nightlora.targets.mlx_lm.systemd import SystemdManager
from nightlora.targets.vllm.api import Reply, VllmApi
from nightlora.targets.vllm.config import VllmTargetConfig
from nightlora.targets.vllm.proxy import STATUS_PATH
from nightlora.targets.vllm.route import Route, RouteFile, lora_name, version_of, write_route
from nightlora.targets.vllm.switch import reply_problem

Log = Callable[[str], None]
HEALTH_MAX_TOKENS = 128  # a real adapter may answer the greeting in 80 tokens


def _nolog(_: str) -> None:
    pass


class VllmTarget:
    name = "vllm"
    adapter_format = "peft"
    managed = True          # nightlora loads and unloads adapters itself (start/stop spare an external server)
    downtime_mode = None    # never stopped for training: the deploy is a switch

    def __init__(
        self,
        *,
        stable: str,
        vllm_url: str,
        proxy: ServerManager,
        proxy_url: str,
        route_path: Path,
        server: ServerManager | None,   # None: someone else's vLLM
        base_name: str | None = None,
        health_timeout: float = 180.0,
        drain_timeout: float = 120.0,
        serving: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.stable = stable
        self.vllm_url = vllm_url.rstrip("/")
        self.proxy = proxy
        self.proxy_url = proxy_url.rstrip("/")
        self.route_path = Path(route_path)
        self.server = server
        self._base = base_name
        self.health_timeout = health_timeout
        self.drain_timeout = drain_timeout
        self._serving = serving
        self.clock = clock
        self.sleep = sleep
        self.timings: dict[str, float] = {}  # the last switch's steps, in ms

    # -- what is served ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.proxy_url  # where the app connects

    @property
    def compute_url(self) -> str:
        return self.vllm_url  # where the model computes, behind the proxy

    def describe(self) -> str:
        owner = "external" if self.server is None else self.server.name
        return (f"vLLM at {self.vllm_url} ({owner}); the app asks {self.proxy_url} for "
                f"{self.stable!r} = {self._serving or 'the base model'}")

    def served_model(self) -> str | None:
        return None

    def route(self) -> Route | None:
        return RouteFile(self.route_path).get()

    def _api(self) -> VllmApi:
        return VllmApi(self.vllm_url)

    def base_name(self, api: VllmApi) -> str:
        if self._base is None:
            self._base = api.base_model()
        return self._base

    # -- the switch --------------------------------------------------------------------------

    def remember(self, adapter: Served | None) -> None:
        """Our server loads ``adapter`` at its next start (--lora-modules).  The route is left alone: it
        moves only in a checked switch, so it never names an adapter that is not loaded."""
        name = lora_name(self.stable, adapter.version) if adapter else None
        if self.server is not None:
            self.server.configure(Path(json.dumps({"name": name, "path": str(adapter.path)})) if adapter else None)
        self._serving = adapter.version if adapter else None

    def activate(self, adapter: Served | None, log: Log = _nolog) -> HealthResult:
        t0 = self.clock()
        self.timings = {}
        try:
            self._ensure_up(log)
        except NightloraError as e:
            return self._failed(str(e), t0)
        api = self._api()
        try:
            return self._switch(api, adapter, log, t0)
        finally:
            api.close()

    def _timed(self, step: str, t: float) -> float:
        now = self.clock()
        self.timings[step] = round((now - t) * 1000, 1)
        return now

    def _switch(self, api: VllmApi, adapter: Served | None, log: Log, t0: float) -> HealthResult:
        base = self.base_name(api)
        new = lora_name(self.stable, adapter.version) if adapter else None
        t = self.clock()
        loaded = api.loras()
        try:
            base_reply = self._base_reply(api, base, loaded) if new else None
        except ServerError as e:
            return self._failed(f"the base model did not answer: {e}", t0)
        t = self.clock()
        if new is not None and new not in loaded:
            api.load(new, str(adapter.path))  # ServerError with vLLM's message; nothing live changed
            t = self._timed("load", t)
            log(f"vLLM loaded {new} in {self.timings['load']:.0f} ms")
        # 2. the health prompt by the new name, beside the base model's answer
        try:
            reply = api.chat(new or base, DEFAULT_PROMPT, HEALTH_MAX_TOKENS)
        except ServerError as e:
            self._drop_unless_live(api, new, log)
            return self._failed(str(e), t0)
        t = self._timed("health", t)
        problem = reply_problem(reply.text, reply.finish_reason, base_reply)
        if problem:
            self._drop_unless_live(api, new, log)
            return self._failed(f"{new or base} failed the health completion: {problem} ({reply.text[:80]!r})", t0)
        # 3. the stable name moves
        write_route(self.route_path, Route(self.stable, base, new))
        if self.server is not None:
            self.server.configure(Path(json.dumps({"name": new, "path": str(adapter.path)})) if adapter else None)
        self._serving = adapter.version if adapter else None
        t = self._timed("switch", t)
        # 4. the stable name answers from the new version
        try:
            via = self._ask_proxy(new or base)
        except ServerError as e:
            return self._failed(f"after the switch to {new or base}: {e}", t0)
        t = self._timed("confirm", t)
        # 5. the versions before are retired once their requests are done
        for old in loaded:
            if old != new and version_of(self.stable, old) is not None:
                self._drain(old, log)
                try:
                    api.unload(old)
                    log(f"unloaded {old}")
                except ServerError as e:  # the switch is done; a leftover is retired by the next one
                    log(str(e))
        self._timed("retire", t)
        total = self.clock() - t0
        log("switch " + ", ".join(f"{k} {v:.0f} ms" for k, v in self.timings.items()))
        return HealthResult(ok=True, url=self.proxy_url, reply=via.text, chat_s=self.timings["confirm"] / 1000,
                            total_s=total, attempts=1, models=[self.stable, new or base],
                            adapter=adapter.version if adapter else None)

    def _base_reply(self, api: VllmApi, base: str, loaded: list[str]) -> str:
        """The base model's answer to the health prompt, asked while no adapter is loaded and kept.

        vLLM's CPU build (0.32) answers a base-model request that shares a batch with LoRA requests
        with a LoRA's answer (measured here: 6 of 6 under load).  So the base answer is taken when no
        adapter can share its batch (nothing loaded yet, before the first load) and kept in the state
        folder; asked later only when it was never kept, and then said so in the log."""
        key = {"base": base, "prompt": DEFAULT_PROMPT, "max_tokens": HEALTH_MAX_TOKENS}
        path = self.route_path.with_name("base-reply.json")
        try:
            kept = json.loads(path.read_text())
            if {k: kept.get(k) for k in key} == key and isinstance(kept.get("text"), str):
                return kept["text"]
        except (OSError, ValueError, AttributeError):
            pass
        text = api.chat(base, DEFAULT_PROMPT, HEALTH_MAX_TOKENS).text
        if not loaded:
            atomic_write_json(path, {**key, "text": text})
        return text

    def _drop_unless_live(self, api: VllmApi, name: str | None, log: Log) -> None:
        route = self.route()
        if name is None or (route is not None and route.live == name):
            return
        try:
            api.unload(name)
            log(f"unloaded {name}, which did not pass")
        except ServerError as e:
            log(str(e))

    def _ask_proxy(self, expected: str, max_tokens: int = 8) -> Reply:
        deadline = self.clock() + min(30.0, self.health_timeout)
        api = VllmApi(self.proxy_url)
        try:
            while True:
                try:
                    # only which version answered matters here: a few tokens say it
                    reply = api.chat(self.stable, DEFAULT_PROMPT, max_tokens)
                    if reply.model == expected:
                        return reply
                    problem = f"the stable name answered from {reply.model}, not {expected}"
                except ServerError as e:
                    problem = str(e)
                if self.clock() >= deadline:
                    raise ServerError(problem)
                self.sleep(0.2)
        finally:
            api.close()

    def proxy_status(self) -> dict:
        try:
            r = httpx.get(self.proxy_url + STATUS_PATH, timeout=5.0, trust_env=False)
            return r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}

    def _drain(self, name: str, log: Log) -> None:
        deadline = self.clock() + self.drain_timeout
        while self.proxy_status().get("inflight", {}).get(name, 0) > 0:
            if self.clock() >= deadline:
                log(f"{name} still has requests in flight after {self.drain_timeout:g} s; unloading it anyway")
                return
            self.sleep(0.05)

    def _failed(self, reason: str, t0: float) -> HealthResult:
        return HealthResult(ok=False, url=self.proxy_url, reason=reason, total_s=self.clock() - t0)

    # -- health ------------------------------------------------------------------------------

    def health(self, timeout: float | None = None) -> HealthResult:
        """The stable name answers through the proxy, from the version the store calls current."""
        t0 = self.clock()
        expected = lora_name(self.stable, self._serving) if self._serving else None
        try:
            self._wait_ready(self.health_timeout if timeout is None else timeout)
        except ServerError as e:
            return self._failed(str(e), t0)
        route = self.route()
        if route is None:
            return self._failed(f"no route file at {self.route_path}: nothing has been switched live yet", t0)
        if route.live != expected:
            return self._failed(f"the stable name means {route.live or 'the base model'}, "
                                f"not {expected or 'the base model'} (a switch was interrupted)", t0)
        api = self._api()
        try:
            loaded = api.loras()
            if expected is not None and expected not in loaded:
                return self._failed(f"vLLM has no adapter {expected} loaded (it was restarted?)", t0)
            strays = [n for n in loaded if n != expected and version_of(self.stable, n) is not None]
            if strays:
                return self._failed(f"an interrupted switch left {', '.join(strays)} loaded beside "
                                    f"{expected or 'the base model'}", t0)
        except ServerError as e:
            return self._failed(str(e), t0)
        finally:
            api.close()
        try:
            reply = self._ask_proxy(route.upstream_model)
        except ServerError as e:
            return self._failed(str(e), t0)
        return HealthResult(ok=True, url=self.proxy_url, reply=reply.text, total_s=self.clock() - t0, attempts=1,
                            models=[self.stable, route.upstream_model], adapter=self._serving)

    # -- processes ---------------------------------------------------------------------------

    def _vllm_up(self) -> bool:
        if self.server is not None:
            return self.server.is_running()
        host, port = _host_port(self.vllm_url)
        return port_in_use(host, port)

    def is_running(self) -> bool:
        return self.proxy.is_running() and self._vllm_up()

    def start(self) -> None:
        if self.server is not None and not self.server.is_running():
            self.server.start()
        if not self.proxy.is_running():
            self.proxy.start()

    def stop(self) -> None:
        self.proxy.stop()
        if self.server is not None:
            self.server.stop()

    def _ensure_up(self, log: Log) -> None:
        """Start what is ours and not running, then wait until vLLM lists its models."""
        if not self.is_running():
            if self.server is None and not self._vllm_up():
                raise ServerError(f"vLLM at {self.vllm_url} is not running (it is not ours to start)")
            log("starting " + ("vLLM and " if self.server is not None and not self.server.is_running() else "")
                + "the model-name proxy")
            self.start()
        self._wait_ready(self.health_timeout)

    def _wait_ready(self, timeout: float) -> str:
        """Wait until vLLM lists its models; write the first route (the base model) if there is none."""
        deadline = self.clock() + timeout
        api = self._api()
        try:
            while True:
                try:
                    base = self.base_name(api)
                    break
                except ServerError as e:
                    if self.server is not None and not self.server.is_running():
                        raise ServerError(f"vLLM is not running: {self.last_error() or e}") from None
                    if self.clock() >= deadline:
                        raise ServerError(f"vLLM not ready after {timeout:g} s: {e}") from None
                    self.sleep(0.5)
        finally:
            api.close()
        if self.route() is None and self._serving is None:
            # The first start: the stable name means the base model until a version is switched live.
            write_route(self.route_path, Route(self.stable, base, None))
        return base

    def last_error(self) -> str:
        return self.server.last_error() if self.server is not None else ""


def _host_port(url: str) -> tuple[str, int]:
    parts = httpx.URL(url)
    return parts.host or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def _literal(text: str) -> str:
    """A value placed in an argv template as it is (braces would read as placeholders)."""
    return text.replace("{", "{{").replace("}", "}}")


def vllm_command(cfg: VllmTargetConfig, model: str | None) -> ServerCommand:
    template: list[str] = []
    for arg in cfg.command:
        arg = arg.replace("{max_lora_rank}", str(cfg.max_lora_rank))
        template.append(arg)
        if arg == "env" and len(template) == 1:
            template += [_literal(f"{k}={v}") for k, v in cfg.env.items()]
    template += [_literal(a) for a in cfg.extra_args]
    return ServerCommand(template=tuple(template), model=model, host=cfg.vllm_host, port=cfg.vllm_port,
                         python=str(cfg.python) if cfg.python else sys.executable)


def proxy_command(cfg: VllmTargetConfig, vllm_url: str, route_path: Path) -> ServerCommand:
    template = ("{python}", "-m", "nightlora.targets.vllm.proxy", "--host", "{host}", "--port", "{port}",
                "--upstream", _literal(vllm_url), "--route", _literal(str(route_path)))
    # model: the proxy serves none itself; ServerCommand wants one to build an argv
    return ServerCommand(template=template, model="-", host=cfg.host, port=cfg.port, python=sys.executable)


def build(cfg: VllmTargetConfig, *, state: StatePaths, model: str | None, runner: CommandRunner,
          live: Served | None) -> VllmTarget:
    """The target for ``cfg``; its server (when ours) loads ``live`` at start, and the proxy routes to it."""
    external = cfg.manager == "external"
    if external and not cfg.url:
        raise ServerError('target.manager = "external" needs target.url (the vLLM server\'s base URL)')
    vllm_url = cfg.url if external and cfg.url else base_url(cfg.vllm_host, cfg.vllm_port)
    route_path = state.root / "vllm" / "route.json"
    adapter = (Path(json.dumps({"name": lora_name(cfg.model_name, live.version), "path": str(live.path)}))
               if live else None)
    server: ServerManager | None = None
    if cfg.manager == "process":
        server = ProcessManager(vllm_command(cfg, model), state.root / "vllm", adapter=adapter, runner=runner)
    elif cfg.manager == "systemd":
        server = SystemdManager(cfg.unit, vllm_command(cfg, model), runner, adapter=adapter)
    proxy = ProcessManager(proxy_command(cfg, vllm_url, route_path), state.root / "vllm-proxy", runner=runner)
    return VllmTarget(stable=cfg.model_name, vllm_url=vllm_url, proxy=proxy, proxy_url=base_url(cfg.host, cfg.port),
                      route_path=route_path, server=server, base_name=cfg.base_name,
                      health_timeout=cfg.health_timeout, drain_timeout=cfg.drain_timeout,
                      serving=live.version if live else None)
