"""The server's argv from the configured template."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlora.config import Config
from nightlora.errors import ServerError
from nightlora.cli.wiring import build_target
from nightlora.models import model_to_serve
from nightlora.targets.mlx_lm.command import ServerCommand, build_argv
from nightlora.state.store import AdapterStore

DEFAULT = tuple(Config().target.command)


def test_default_template_with_and_without_adapter():
    cmd = ServerCommand(DEFAULT, model="/m/My Model", host="127.0.0.1", port=8234, python="/py")
    assert cmd.argv(Path("/s/adapters/current")) == [
        "/py", "-m", "mlx_lm", "server", "--model", "/m/My Model", "--adapter-path", "/s/adapters/current",
        "--host", "127.0.0.1", "--port", "8234",
    ]
    # No adapter: the flag and its value both go.
    assert cmd.argv(None) == ["/py", "-m", "mlx_lm", "server", "--model", "/m/My Model",
                              "--host", "127.0.0.1", "--port", "8234"]
    assert cmd.base_url == "http://127.0.0.1:8234"


def test_values_stay_single_arguments_whatever_they_contain():
    odd = "/tmp/a b/$(rm -rf ~)/{model}/'\";"
    argv = build_argv(["{python}", "--adapter-path={adapter}", "{model}"], python="py", model=odd,
                      adapter=Path(odd), host="h", port=1)
    assert argv == ["py", f"--adapter-path={odd}", odd]
    # The inline form is dropped whole without an adapter; the flag before it stays.
    assert build_argv(["x", "--flag", "--adapter-path={adapter}"], python="p", model="m", adapter=None,
                      host="h", port=1) == ["x", "--flag"]


def test_unknown_placeholders_and_empty_templates_are_refused():
    with pytest.raises(ServerError, match=r"unknown placeholder \{modle\}"):
        ServerCommand(("{python}", "--model", "{modle}"), model="m")
    with pytest.raises(ServerError, match="empty"):
        ServerCommand((), model="m")
    with pytest.raises(ServerError, match="bad argument"):
        ServerCommand(("{python", ), model="m")


def test_ipv6_host_in_url():
    assert ServerCommand(DEFAULT, model="m", host="::1", port=9).base_url == "http://[::1]:9"


def test_factory_picks_the_manager_and_serves_current(tmp_path):
    base = {"source": {"data_dir": str(tmp_path)}, "train": {"model": str(tmp_path)}}
    for kind in ("process", "launchd", "systemd"):
        t = build_target(Config.model_validate({**base, "target": {"manager": kind}}))
        assert t.manager.name == kind and t.managed
    assert not build_target(Config.model_validate({**base, "target": {"kind": "none"}})).managed
    cfg = Config.model_validate(base)
    assert model_to_serve(cfg.train.model, cfg.models_dir) == str(tmp_path.resolve())  # a local folder, resolved
    assert "--adapter-path" not in build_target(cfg).manager.argv()  # no live version: the base model alone
    store = AdapterStore.for_state_dir(cfg.source.state_path)
    src = tmp_path / "trained"
    src.mkdir()
    (src / "adapters.safetensors").write_bytes(b"x")
    (src / "adapter_config.json").write_text("{}")
    store.set_current(store.add(src))
    argv = build_target(cfg).manager.argv()
    assert argv[argv.index("--adapter-path") + 1] == str(store.current_link)
