"""The vllm target's pure parts: the route and its rewrite, the health rules, the server's command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nightlora.errors import ServerError
from nightlora.paths import StatePaths
from nightlora.platform.runner import SubprocessRunner
from nightlora.targets.registry import TARGETS
from nightlora.targets.vllm.config import VllmTargetConfig
from nightlora.targets.vllm.route import Route, RouteFile, lora_name, read_route, rewrite, version_of, write_route
from nightlora.targets.vllm.switch import loops, reply_problem
from nightlora.targets.vllm.target import build, vllm_command


def test_the_stable_name_is_rewritten_to_the_live_version_and_nothing_else() -> None:
    route = Route("hanni", "/models/smol", "hanni-v0007")
    body, model = rewrite({"model": "hanni", "messages": [], "stream": True}, route)
    assert body == {"model": "hanni-v0007", "messages": [], "stream": True} and model == "hanni-v0007"
    for other in ({"model": "hanni-v0006"}, {"model": "/models/smol"}, {"messages": []}, ["hanni"], None):
        assert rewrite(other, route) == (other, None)
    # before the first version, the stable name means the base model
    assert rewrite({"model": "hanni"}, Route("hanni", "/models/smol", None))[0] == {"model": "/models/smol"}


def test_names_are_per_version_and_read_back() -> None:
    assert lora_name("hanni", "v0007") == "hanni-v0007"
    assert version_of("hanni", "hanni-v0007") == "v0007"
    assert version_of("hanni", "other-v0007") is None and version_of("hanni", None) is None


def test_the_route_file_is_reread_when_replaced(tmp_path: Path) -> None:
    path = tmp_path / "route.json"
    routes = RouteFile(path)
    assert routes.get() is None
    write_route(path, Route("hanni", "base", "hanni-v0001"))
    assert routes.get() == Route("hanni", "base", "hanni-v0001")
    write_route(path, Route("hanni", "base", "hanni-v0002"))
    assert routes.get().live == "hanni-v0002"
    path.write_text("{not json")
    assert read_route(path) is None


@pytest.mark.parametrize("text, finish, base, problem", [
    ("Hello there!", "stop", "Hi.", None),
    ("", "stop", "Hi.", "empty reply"),
    ("Hello there and", "length", "Hi.", "did not stop"),
    ("a b c d " * 3, "stop", "Hi.", "repeats itself"),
    ("Hi.", "stop", "Hi.", "answers exactly as the base model does"),
    ("Hi.", "stop", None, None),
])
def test_the_health_completion_rules(text: str, finish: str, base: str | None, problem: str | None) -> None:
    got = reply_problem(text, finish, base)
    assert (got is None) if problem is None else (got is not None and got.startswith(problem))


def test_loops() -> None:
    assert loops("one two three four " * 3) and not loops("one two three four five six")


def test_vllm_is_a_registered_target_serving_peft() -> None:
    cfg = TARGETS["vllm"].config()
    assert isinstance(cfg, VllmTargetConfig) and cfg.adapter_format == "peft" and cfg.model_name == "hanni"


def test_the_server_command_enables_runtime_lora_loading(tmp_path: Path) -> None:
    cfg = VllmTargetConfig(python=Path("/opt/vllm/bin/python"), max_lora_rank=32, vllm_port=8100,
                           env={"VLLM_CPU_KVCACHE_SPACE": "2"}, extra_args=["--dtype", "float32"])
    cmd = vllm_command(cfg, "/models/smol")
    argv = cmd.argv(None)
    assert argv[0] == "env" and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in argv and "VLLM_CPU_KVCACHE_SPACE=2" in argv
    i = argv.index("/opt/vllm/bin/python")
    assert argv[i:i + 3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--max-lora-rank") + 1] == "32" and "--enable-lora" in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8100"
    assert argv[-2:] == ["--dtype", "float32"] and "--lora-modules" not in argv
    # with a live version, the server loads it at start under its own name
    module = json.dumps({"name": "hanni-v0003", "path": "/state/adapters/v0003/peft"})
    argv = cmd.argv(Path(module))
    assert json.loads(argv[argv.index("--lora-modules") + 1]) == json.loads(module)


def test_an_external_server_needs_its_url(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="target.url"):
        build(VllmTargetConfig(manager="external"), state=StatePaths(tmp_path), model=None,
              runner=SubprocessRunner(), live=None)
    target = build(VllmTargetConfig(manager="external", url="http://127.0.0.1:9"), state=StatePaths(tmp_path),
                   model=None, runner=SubprocessRunner(), live=None)
    assert target.server is None and target.downtime_mode is None and target.managed
    # nothing to stop that is not ours: stop() only stops our proxy, which is not running
    target.stop()
    assert not target.is_running()
    assert not os.path.exists(tmp_path / "vllm")
