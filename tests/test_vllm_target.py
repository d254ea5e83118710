"""The vllm target on a real vLLM (CPU build, demo model, float32): the switch under load,
failed loads, rollback, and a run killed mid-switch repaired by `nightlora recover`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from nightlora.errors import ServerError
from nightlora.paths import StatePaths
from nightlora.platform.runner import SubprocessRunner
from nightlora.state.store import AdapterStore
from nightlora.targets.base import Served
from nightlora.targets.deploy import Outcome, deploy
from nightlora.targets.vllm.api import VllmApi
from nightlora.targets.vllm.route import read_route
from nightlora.targets.vllm.target import VllmTarget, build
from server_fixtures import free_port
from vllm_fixtures import peft_adapters, vllm_config, vllm_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
PROMPT = "Reply with one short greeting."
NIGHTLORA = [sys.executable, "-m", "nightlora"]
_names = iter(range(1, 1000))


def add_version(store: AdapterStore, adapter: Path, base: Path) -> str:
    folder = store.root.parent / f"incoming-{adapter.name}"
    shutil.copytree(adapter, folder / "peft")
    return store.add(folder, base_model=str(base)).name


@dataclass
class Env:
    state: StatePaths
    store: AdapterStore
    target: VllmTarget
    stable: str
    versions: dict[str, str]
    vllm: VllmApi


@pytest.fixture
def env(tmp_path: Path, vllm_server: str, peft_adapters: dict[str, Path], smollm2_dir: Path) -> Iterator[Env]:
    """A store with versions of adapters a, b, c, too_big, and a target on the session's vLLM as someone
    else's server (URL only); each test has its own stable name, so tests never share an adapter."""
    state = StatePaths(tmp_path / "state")
    store = AdapterStore(state.adapters)
    versions = {k: add_version(store, p, smollm2_dir) for k, p in peft_adapters.items()}
    stable = f"hanni{next(_names)}"
    cfg = vllm_config(manager="external", url=vllm_server, port=free_port(), model_name=stable)
    target = build(cfg, state=state, model=None, runner=SubprocessRunner(), live=None)
    api = VllmApi(vllm_server)
    try:
        yield Env(state, store, target, stable, versions, api)
    finally:
        target.stop()  # the proxy; vLLM is not this target's to stop
        for name in api.loras():
            if name.startswith(stable + "-"):
                api.unload(name)
        api.close()


def ask(url: str, model: str, max_tokens: int = 24) -> dict:
    r = httpx.post(url + "/v1/chat/completions", trust_env=False, timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
        "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def text(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


@dataclass
class Load:
    """Clients asking the stable name through the proxy without pause until stopped."""

    url: str
    model: str
    results: list[tuple[float, int, str | None, str]] = field(default_factory=list)  # (t, status, model, text)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(trust_env=False, timeout=60) as c:
            while not self.stop.is_set():
                t = time.monotonic()
                try:
                    r = c.post(self.url + "/v1/chat/completions", json={
                        "model": self.model, "messages": [{"role": "user", "content": PROMPT}],
                        "max_tokens": 24, "temperature": 0})
                    body = r.json() if r.status_code == 200 else {}
                    self.results.append((t, r.status_code, body.get("model"),
                                         text(body) if body else r.text[:200]))
                except httpx.HTTPError as e:
                    self.results.append((t, 0, None, type(e).__name__))


def test_switch_under_load_fails_no_request_and_serves_the_new_adapter(env: Env) -> None:
    first = deploy(env.store, env.target, env.versions["a"])
    assert first.outcome is Outcome.LIVE, [a.reason for a in first.attempts]
    url = env.target.proxy_url

    load = Load(url, env.stable)
    threads = [threading.Thread(target=load.run) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        start_deadline = time.monotonic() + 60
        while len(load.results) < 4 and time.monotonic() < start_deadline:
            time.sleep(0.1)
        t_switch = time.monotonic()
        result = deploy(env.store, env.target, env.versions["b"])
        t_done = time.monotonic()
        deadline = t_done + 60
        while sum(1 for r in list(load.results) if r[0] > t_done) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
    assert result.outcome is Outcome.LIVE, [a.reason for a in result.attempts]
    statuses = Counter(s for _, s, _, _ in load.results)
    assert statuses == {200: len(load.results)}, statuses  # no failure, and never a 404
    before = [r for r in load.results if r[0] < t_switch]
    after = [r for r in load.results if r[0] > t_done]
    assert before and after
    new = f"{env.stable}-{env.versions['b']}"
    expected_b = text(ask(env.vllm.base, new))  # b by its own name, from vLLM directly
    assert expected_b != text(ask(env.vllm.base, env.target.base_name(env.vllm)))  # b is applied
    assert {m for _, _, m, _ in after} == {new}
    assert {x for _, _, _, x in after} == {expected_b[: len(x)] for _, _, _, x in after}  # b's own answer
    assert all(m in (f"{env.stable}-{env.versions['a']}", new) for _, _, m, _ in load.results)
    # the version before was unloaded once the switch had served requests
    assert env.vllm.loras().count(new) == 1 and f"{env.stable}-{env.versions['a']}" not in env.vllm.loras()
    t = env.target.timings
    print(f"switch under load: {len(load.results)} requests, 0 failed; steps (ms): {t}")
    assert set(t) == {"load", "health", "switch", "confirm", "retire"}


def test_failed_loads_leave_the_live_adapter_untouched(env: Env) -> None:
    assert deploy(env.store, env.target, env.versions["a"]).outcome is Outcome.LIVE
    live = f"{env.stable}-{env.versions['a']}"
    route_before = read_route(env.target.route_path)

    # rank above --max-lora-rank: vLLM's message is reported, the chain keeps the live version
    result = deploy(env.store, env.target, env.versions["too_big"])
    assert result.outcome is Outcome.ROLLED_BACK and result.live == env.versions["a"]
    assert "greater than max_lora_rank" in result.attempts[0].reason
    assert env.store.get(env.versions["too_big"]).rejected
    assert ask(env.target.proxy_url, env.stable)["model"] == live

    # a missing path: ServerError with vLLM's message; nothing live changed
    missing = Served("v0099", env.state.root / "no-such-adapter", env.store.stable_path("peft"))
    with pytest.raises(ServerError, match="No adapter found"):
        env.target.activate(missing, lambda _: None)
    assert read_route(env.target.route_path) == route_before
    assert ask(env.target.proxy_url, env.stable)["model"] == live
    assert env.target.health().ok


def test_rollback_is_the_same_switch_back(env: Env) -> None:
    a, b = (f"{env.stable}-{env.versions[k]}" for k in "ab")
    assert deploy(env.store, env.target, env.versions["a"]).outcome is Outcome.LIVE
    answer_a = text(ask(env.target.proxy_url, env.stable))
    assert deploy(env.store, env.target, env.versions["b"]).outcome is Outcome.LIVE
    assert ask(env.target.proxy_url, env.stable)["model"] == b
    back = deploy(env.store, env.target, env.versions["a"])
    assert back.outcome is Outcome.LIVE and env.store.current().name == env.versions["a"]
    body = ask(env.target.proxy_url, env.stable)
    assert body["model"] == a and text(body) == answer_a
    assert b not in env.vllm.loras()


KILLED_SWITCH = textwrap.dedent("""
    # A deploy killed outright (SIGKILL) right after vLLM loaded the new version, before the switch.
    import os, signal, sys
    from nightlora.config import load_config
    from nightlora.cli.wiring import build_deps
    from nightlora.state.store import AdapterStore
    from nightlora.targets.deploy import deploy

    cfg = load_config(sys.argv[1], environ={})
    deps = build_deps(cfg, progress=False)
    def log(line):
        if "loaded" in line:
            os.kill(os.getpid(), signal.SIGKILL)
    deploy(AdapterStore.for_state_dir(cfg.source.state_path), deps.target, sys.argv[2], log=log)
""")


def test_a_run_killed_mid_switch_is_repaired_by_recover(env: Env, tmp_path: Path, vllm_server: str) -> None:
    from nightlora.demo.database import build_demo_db

    assert deploy(env.store, env.target, env.versions["a"]).outcome is Outcome.LIVE
    data_dir = tmp_path / "hanni"
    build_demo_db(data_dir / "hanni.db", conversations=20)
    cfg_path = tmp_path / "nightlora.toml"
    cfg_path.write_text(textwrap.dedent(f"""
        [source]
        data_dir = "{data_dir}"
        state_dir = "{env.state.root}"
        [target]
        kind = "vllm"
        manager = "external"
        url = "{vllm_server}"
        port = {env.target.proxy_url.rsplit(':', 1)[1]}
        model_name = "{env.stable}"
    """))
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SWITCH)
    proc = subprocess.run([sys.executable, str(script), str(cfg_path), env.versions["b"]], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    b = f"{env.stable}-{env.versions['b']}"
    assert b in env.vllm.loras()                                                   # loaded ...
    assert read_route(env.target.route_path).live == f"{env.stable}-{env.versions['a']}"  # ... not switched
    assert ask(env.target.proxy_url, env.stable)["model"] != b  # the app still gets the version before

    out = subprocess.run([*NIGHTLORA, "-c", str(cfg_path), "recover", "--json"], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # the store called b current when the run died: recover finishes the switch to it, and only it stays loaded
    assert result["outcome"] == "restored" and result["live"] == env.versions["b"], result
    assert ask(env.target.proxy_url, env.stable)["model"] == b
    assert [n for n in env.vllm.loras() if n.startswith(env.stable + "-")] == [b]
