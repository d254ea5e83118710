"""deploy() and restore() against real mlx_lm servers: the assistant must end up answering."""

from __future__ import annotations

import json

import pytest

from nightlora.config import Config
from nightlora.targets.deploy import Outcome, deploy, restore
from nightlora.errors import HealthError
from nightlora.targets.health import HealthCheck
from nightlora.cli.wiring import build_target
from nightlora.targets.mlx_lm.command import ServerCommand
from nightlora.targets.mlx_lm.process import ProcessManager
from nightlora.targets.mlx_lm.target import MlxLmTarget
from nightlora.targets.none.target import NoTarget
from nightlora.state.store import AdapterStore
from server_fixtures import corrupt_adapter, free_port, kill_pid
pytestmark = pytest.mark.slow

MLX_SERVER = ("{python}", "-m", "mlx_lm", "server", "--model", "{model}", "--adapter-path", "{adapter}",
              "--host", "{host}", "--port", "{port}")


@pytest.fixture
def served(tmp_path, server_model_dir, request):
    """A store, a process manager for a real mlx_lm server on a free port, and its health check."""
    def make(template=MLX_SERVER, timeout=60.0):
        port = free_port()
        store = AdapterStore(tmp_path / "state" / "adapters")
        cmd = ServerCommand(template=tuple(template), model=str(server_model_dir), port=port)
        manager = ProcessManager(cmd, tmp_path / "state", stop_timeout=10)

        def cleanup():
            rec = manager.record()
            if rec is not None:
                kill_pid(rec.pid)
        request.addfinalizer(cleanup)
        return store, manager, HealthCheck(cmd.base_url, timeout=timeout)
    return make


def _served_adapter(manager: ProcessManager) -> str | None:
    argv = manager.record().argv
    return argv[argv.index("--adapter-path") + 1] if "--adapter-path" in argv else None


def test_fallback_chain_with_real_servers(served, make_adapter):
    store, manager, health = served()
    log: list[str] = []

    # 1. A good adapter goes live.
    v1 = store.add(make_adapter(), data_counts={"train": 8, "valid": 1, "test": 1})
    r = deploy(store, MlxLmTarget(manager, health), v1, log=log.append)
    assert r.outcome is Outcome.LIVE and r.live == "v0001", r.message()
    assert store.current().name == "v0001"
    assert _served_adapter(manager) == str(store.current_link)
    assert r.health.ok and r.health.reply.strip()

    # 2. A corrupt adapter: its server fails, the previous version serves again, and it is rejected.
    v2 = store.add(make_adapter(corrupt=True))
    r = deploy(store, MlxLmTarget(manager, health), v2, log=log.append)
    assert r.outcome is Outcome.ROLLED_BACK, r.message()
    assert r.live == "v0001" and store.current().name == "v0001"
    assert [a.version for a in r.attempts] == ["v0002", "v0001"]
    assert "failed to load" in r.attempts[0].reason
    assert "load_safetensors" in r.attempts[0].reason  # the server log's own error line
    assert store.get("v0002").rejected
    assert health(alive=manager.is_running).ok

    # 3. The new one and the previous one both fail: the base model serves, without an adapter.
    corrupt_adapter(v1.path)
    v3 = store.add(make_adapter(corrupt=True))
    r = deploy(store, MlxLmTarget(manager, health), v3, log=log.append)
    assert r.outcome is Outcome.NO_ADAPTER, r.message()
    assert [a.version for a in r.attempts] == ["v0003", "v0001", None]
    assert store.current() is None and r.live is None
    assert _served_adapter(manager) is None
    assert health(alive=manager.is_running).ok
    assert store.previous() is None
    # The progress lines say what happened, step by step.
    assert any("starting the server with no adapter" in line for line in log)

    # 4. restore() on a healthy running server leaves it alone.
    pid = manager.record().pid
    r = restore(store, MlxLmTarget(manager, health))
    assert r.outcome is Outcome.UNCHANGED and manager.record().pid == pid


def test_restore_after_an_interrupted_run_falls_back_to_previous(served, make_adapter):
    # The run stopped the server for training and died; meanwhile the live version broke.
    store, manager, health = served()
    assert not manager.is_running()
    v1 = store.add(make_adapter())
    v2 = store.add(make_adapter())
    store.set_current(v2)
    corrupt_adapter(v2.path)  # e.g. the disk lost it while training ran
    r = restore(store, MlxLmTarget(manager, health))
    assert r.outcome is Outcome.ROLLED_BACK and r.live == "v0001", r.message()
    assert store.current().name == "v0001"
    assert not store.get("v0002").rejected  # it was healthy before: not the adapter's fault alone
    assert manager.is_running()


def test_server_that_exits_at_once_ends_down_quickly(served, make_adapter):
    exits = ("{python}", "-c", "import sys; sys.exit(3)", "--adapter-path", "{adapter}", "{port}")
    store, manager, health = served(exits, timeout=30)
    v1 = store.add(make_adapter())
    r = deploy(store, MlxLmTarget(manager, health), v1)
    assert r.outcome is Outcome.DOWN and not r.ok
    assert [a.version for a in r.attempts] == ["v0001", None]
    # Down with the reason, well before the 30 s health timeout of each step.
    assert sum(a.seconds for a in r.attempts) < 15
    assert all(("exited" in a.reason or "not running" in a.reason) for a in r.attempts), r.attempts
    # The pointer stays on the last known good state (nothing was live before).
    assert store.current() is None
    assert not store.get("v0001").rejected  # nothing worked at all: not the adapter's fault
    with pytest.raises(HealthError, match="down"):
        r.raise_if_down()


def test_server_whose_chat_fails_is_not_healthy(served, make_adapter, fake_server_script):
    fake = ("{python}", str(fake_server_script), "{host}", "{port}", "--adapter-path", "{adapter}")
    store, manager, health = served(fake, timeout=3)
    v1 = store.add(make_adapter())
    r = deploy(store, MlxLmTarget(manager, health), v1)
    assert r.outcome is Outcome.DOWN
    assert "chat completion answered 500" in r.attempts[0].reason
    assert r.attempts[0].health.ready_s is not None  # /health said ok: not enough


def test_unmanaged_server_only_switches_the_pointer(tmp_path, make_adapter):
    store = AdapterStore(tmp_path / "adapters")
    v1 = store.add(make_adapter())
    port = free_port()
    r = deploy(store, NoTarget(f"http://127.0.0.1:{port}", timeout=0.5), v1)
    assert r.outcome is Outcome.UNMANAGED and store.current().name == "v0001"
    assert not r.health.ok  # nothing listens there: reported, not acted on


def test_cli_rollback_restarts_the_server(tmp_path, server_model_dir, make_adapter, request):
    from nightlora.cli import main

    port = free_port()
    state = tmp_path / "data" / "nightlora"
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(
        f'[source]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[train]\nmodel = "{server_model_dir}"\n'
        f'[target]\nmanager = "process"\nport = {port}\nhealth_timeout = 60\n'
    )
    store = AdapterStore.for_state_dir(state)
    store.add(make_adapter())
    v2 = store.add(make_adapter())
    store.set_current(v2)
    cfg = Config.model_validate({"source": {"data_dir": str(tmp_path / "data")}, "train": {"model": str(server_model_dir)},
                                 "target": {"port": port}})
    manager = build_target(cfg).manager
    request.addfinalizer(lambda: manager.record() and kill_pid(manager.record().pid))

    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["--config", str(cfg_path), "rollback", "--json"])
    assert code == 0, out.getvalue()
    result = json.loads(out.getvalue())
    assert result["outcome"] == "live" and result["live"] == "v0001"
    assert store.current().name == "v0001"
    assert manager.is_running() and manager.record().argv[-1] == str(port)

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--config", str(cfg_path), "adapters", "--json"]) == 0
    listing = json.loads(out.getvalue())
    assert listing["live"] == "v0001"
    assert [v["name"] for v in listing["versions"]] == ["v0002", "v0001"]
    assert [v["live"] for v in listing["versions"]] == [False, True]


# ---- the chain's logic with launchd (which cannot run here): its plist after each outcome -------


class ScriptedHealth:
    """Health verdicts in order (the side effect deploy() takes as a parameter)."""

    def __init__(self, *verdicts: bool):
        self.verdicts = list(verdicts)
        self.calls = 0

    def __call__(self, alive=None, adapter=None):
        from nightlora.targets.health import HealthResult

        ok = self.verdicts[self.calls]
        self.calls += 1
        return HealthResult(ok=ok, url="http://127.0.0.1:8234", reason="" if ok else "chat completion answered 500",
                            reply="hi" if ok else "")


def _launchd(tmp_path):
    import plistlib

    from nightlora.targets.mlx_lm.launchd import LaunchdManager
    from server_fixtures import RecordingRunner

    plist = tmp_path / "com.hanni.mlx-server.plist"
    plist.write_bytes(plistlib.dumps({"Label": "com.hanni.mlx-server",
                                      "ProgramArguments": ["/py", "-m", "mlx_lm", "server", "--model", "/m"]}))
    runner = RecordingRunner().on(["launchctl", "bootout"], 113).on(["launchctl", "print"], 0, "state = running")
    m = LaunchdManager(plist, "com.hanni.mlx-server", runner, uid=501, sleep=lambda s: None)

    def args():
        with open(plist, "rb") as f:
            return plistlib.load(f)["ProgramArguments"]
    return m, runner, args


def _fake_version(store, tmp_path, name):
    src = tmp_path / name
    src.mkdir()
    (src / "adapters.safetensors").write_bytes(b"w")
    (src / "adapter_config.json").write_text("{}")
    return store.add(src)


def test_launchd_plist_follows_the_outcome(tmp_path):
    store = AdapterStore(tmp_path / "adapters")
    v1 = _fake_version(store, tmp_path, "a")
    v2 = _fake_version(store, tmp_path, "b")
    m, runner, args = _launchd(tmp_path)
    link = str(store.current_link)

    r = deploy(store, MlxLmTarget(m, ScriptedHealth(True)), v1)
    assert r.outcome is Outcome.LIVE and args()[-2:] == ["--adapter-path", link]
    assert [c[:2] for c in runner.calls] == [["launchctl", "bootout"], ["launchctl", "bootstrap"]]

    r = deploy(store, MlxLmTarget(m, ScriptedHealth(False, True)), v2)
    assert r.outcome is Outcome.ROLLED_BACK and store.current().name == "v0001"
    assert args()[-2:] == ["--adapter-path", link] and store.get("v0002").rejected

    r = deploy(store, MlxLmTarget(m, ScriptedHealth(False, False, True)), v2)
    assert r.outcome is Outcome.NO_ADAPTER and "--adapter-path" not in args()

    r = deploy(store, MlxLmTarget(m, ScriptedHealth(False, False, False)), v1)
    assert r.outcome is Outcome.DOWN
    assert store.current() is None and "--adapter-path" not in args()  # back to the last state that worked


def test_a_step_that_cannot_be_tried_does_not_stop_the_chain(tmp_path):
    import os

    store = AdapterStore(tmp_path / "adapters")
    v1 = _fake_version(store, tmp_path, "a")
    m, _, args = _launchd(tmp_path)

    calls = []
    real_configure = m.configure

    def flaky_configure(adapter):
        calls.append(adapter)
        if adapter is not None:
            raise PermissionError(13, "Permission denied", str(m.plist))
        real_configure(adapter)
    m.configure = flaky_configure
    r = deploy(store, MlxLmTarget(m, ScriptedHealth(True)), v1)
    assert r.outcome is Outcome.NO_ADAPTER
    assert r.attempts[0].reason.startswith("PermissionError: [Errno 13] Permission denied")
    assert os.path.exists(m.plist) and "--adapter-path" not in args()


def test_restore_outcomes_with_launchd(tmp_path):
    store = AdapterStore(tmp_path / "adapters")
    v1 = _fake_version(store, tmp_path, "a")
    store.set_current(v1)
    m, runner, args = _launchd(tmp_path)
    # Running and healthy: nothing is touched.
    r = restore(store, MlxLmTarget(m, ScriptedHealth(True)))
    assert r.outcome is Outcome.UNCHANGED and r.live == "v0001"
    assert [c[1] for c in runner.calls] == ["print"]
    # Running but not answering: restarted with the live version.
    runner.calls.clear()
    r = restore(store, MlxLmTarget(m, ScriptedHealth(False, True)))
    assert r.outcome is Outcome.RESTORED and r.live == "v0001"
    assert [c[1] for c in runner.calls if c[1] != "print"] == ["bootout", "bootstrap"]
    assert args()[-2:] == ["--adapter-path", str(store.current_link)]
    assert r.message() == "the server is back with v0001"
    # Unmanaged: only looked at.
    r = restore(store, NoTarget(f"http://127.0.0.1:{free_port()}", timeout=0.5))
    assert r.outcome is Outcome.DOWN and "down" in r.message()
