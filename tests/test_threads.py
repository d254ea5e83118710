"""The night's CPU threads: one core left to a server that serves beside training on this machine."""

from __future__ import annotations

import torch

from nightlora.cli.wiring import build_target
from nightlora.config import load_config
from nightlora.pipeline.threads import choose_threads, serving_here
from nightlora.train.torch.backend import TorchTrainer


class FakeTarget:
    def __init__(self, managed: bool, running: bool, compute_url: str | None = None):
        self.managed, self._running, self.compute_url = managed, running, compute_url

    def is_running(self) -> bool:
        return self._running


def test_one_core_left_to_a_server_serving_here():
    assert choose_threads(None, True, 8)[0] == 7
    assert choose_threads(None, True, 2)[0] == 1
    assert choose_threads(None, True, 1)[0] is None  # nothing to leave on one core
    assert choose_threads(None, False, 8)[0] is None  # all cores
    n, why = choose_threads(3, True, 8)
    assert n == 3 and "config" in why


def test_which_servers_count_as_here():
    here = "http://127.0.0.1:8234"
    assert serving_here(FakeTarget(True, True, here), paused=False)
    assert not serving_here(FakeTarget(True, True, here), paused=True)  # stopped for training
    assert not serving_here(FakeTarget(True, False, here), paused=False)
    assert not serving_here(FakeTarget(True, True, "http://10.0.0.7:8000"), paused=False)  # managed, elsewhere
    assert serving_here(FakeTarget(False, True, "http://127.0.0.1:8234"), paused=False)
    assert not serving_here(FakeTarget(False, True, "http://gpu-box.lan:8000"), paused=False)
    assert not serving_here(FakeTarget(False, True, None), paused=False)


def test_each_target_says_where_its_model_computes(tmp_path):
    """The real targets, built from config as the night builds them: an external vLLM behind nightlora's
    local proxy computes on its own machine, not at the proxy's loopback address."""
    def target(section: str):
        cfg_path = tmp_path / "nightlora.toml"
        cfg_path.write_text(f"[source]\ndata_dir = \"{tmp_path}\"\n[target]\n{section}\n")
        return build_target(load_config(cfg_path, environ={}))

    vllm = target('kind = "vllm"\nmanager = "external"\nurl = "http://10.0.0.7:8000/"')
    assert vllm.compute_url == "http://10.0.0.7:8000" and vllm.base_url.startswith("http://127.0.0.1:")
    assert not serving_here(vllm, paused=False)  # without asking whether it runs
    assert target('kind = "none"').compute_url is None
    assert target('kind = "none"\nurl = "http://127.0.0.1:9000/"').compute_url == "http://127.0.0.1:9000"
    assert target('kind = "mlx_lm"\nmanager = "process"\nport = 8300').compute_url == "http://127.0.0.1:8300"


def test_torch_threads_set_for_the_stage_and_given_back():
    before = torch.get_num_threads()
    with TorchTrainer().cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with TorchTrainer().cpu_threads(None):
        assert torch.get_num_threads() == before
