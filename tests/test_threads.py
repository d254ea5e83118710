"""The night's CPU threads: one core left to a server that serves beside training on this machine."""

from __future__ import annotations

import torch

from nightlora.pipeline.threads import choose_threads, serving_here
from nightlora.train.torch.backend import TorchTrainer


class FakeTarget:
    def __init__(self, managed: bool, running: bool, base_url: str | None = None, vllm_url: str | None = None):
        self.managed, self._running, self.base_url = managed, running, base_url
        if vllm_url is not None:
            self.vllm_url = vllm_url

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
    assert serving_here(FakeTarget(True, True), paused=False)
    assert not serving_here(FakeTarget(True, True), paused=True)  # stopped for training
    assert not serving_here(FakeTarget(True, False), paused=False)
    assert serving_here(FakeTarget(False, True, "http://127.0.0.1:8234"), paused=False)
    assert not serving_here(FakeTarget(False, True, "http://gpu-box.lan:8000"), paused=False)
    # an external vLLM behind nightlora's local proxy computes elsewhere
    assert not serving_here(FakeTarget(False, True, "http://127.0.0.1:8234", vllm_url="http://10.0.0.7:8000"),
                            paused=False)


def test_torch_threads_set_for_the_stage_and_given_back():
    before = torch.get_num_threads()
    with TorchTrainer().cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with TorchTrainer().cpu_threads(None):
        assert torch.get_num_threads() == before
