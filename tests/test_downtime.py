"""Whether to stop the server during training: the decision, the estimate, reading free memory."""

from __future__ import annotations

import json

import pytest

from nightlora.platform.memory import MemoryInfo, parse_meminfo, parse_vm_stat, read_memory
from nightlora.targets.downtime import (
    GiB, ModelShape, decide_downtime, estimate_training_bytes, model_shape, weights_bytes,
)
from server_fixtures import RecordingRunner

VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               50000.
Pages active:                            400000.
Pages inactive:                          300000.
Pages speculative:                        10000.
Pages throttled:                              0.
Pages wired down:                        200000.
Pages purgeable:                           5000.
"""


def test_always_and_never_decide_alone():
    assert decide_downtime("always", served_bytes=1, training_bytes=1, memory=None).stop
    d = decide_downtime("never", served_bytes=10 * GiB, training_bytes=10 * GiB, memory=MemoryInfo(GiB, None, "x"))
    assert not d.stop and d.reason == "server.stop_during_training = never"
    with pytest.raises(ValueError):
        decide_downtime("sometimes", served_bytes=1, training_bytes=1, memory=None)  # type: ignore[arg-type]


def test_auto_compares_both_needs_with_available_memory():
    mem = MemoryInfo(available_bytes=12 * GiB, total_bytes=16 * GiB, source="/proc/meminfo MemAvailable")
    keep = decide_downtime("auto", served_bytes=2 * GiB, training_bytes=5 * GiB, memory=mem)
    assert not keep.stop and keep.margin_bytes == int(1.6 * GiB)
    assert keep.reason == ("enough memory for both: served model 2.0 GiB + training ~5.0 GiB + margin 1.6 GiB "
                           "= 8.6 GiB vs 12.0 GiB available (/proc/meminfo MemAvailable)")
    stop = decide_downtime("auto", served_bytes=4 * GiB, training_bytes=7 * GiB, memory=mem)
    assert stop.stop and stop.reason.startswith("not enough memory for both")
    unknown = decide_downtime("auto", served_bytes=1, training_bytes=1, memory=None)
    assert unknown.stop and "unknown" in unknown.reason


def test_training_estimate_grows_with_what_it_should():
    shape = ModelShape(weights_bytes=270_000_000, hidden=576, layers=30, heads=9, vocab=49152)
    base = estimate_training_bytes(shape, batch_size=4, seq_len=2048, lora_rank=8)
    assert base > shape.weights_bytes
    assert estimate_training_bytes(shape, batch_size=8, seq_len=2048, lora_rank=8) > base
    assert estimate_training_bytes(shape, batch_size=4, seq_len=4096, lora_rank=8) > base
    assert estimate_training_bytes(shape, batch_size=4, seq_len=2048, lora_rank=8, grad_checkpoint=False) > base
    # SmolLM2-135M at batch 4 x 2048 tokens: a few GiB, mostly logits and activations.
    assert 1 * GiB < base < 8 * GiB


def test_model_size_and_shape_from_its_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "extra.gguf").write_bytes(b"x" * 24)
    (tmp_path / "tokenizer.json").write_text("{}" * 100)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2,
                                                      "num_attention_heads": 4, "vocab_size": 500}))
    assert weights_bytes(tmp_path) == 1024
    assert model_shape(tmp_path) == ModelShape(1024, 64, 2, 4, 500)
    assert weights_bytes(tmp_path / "missing") == 0


def test_linux_memory_from_proc_meminfo(tmp_path):
    text = "MemTotal:       16000000 kB\nMemFree:          100000 kB\nMemAvailable:    8000000 kB\n"
    assert parse_meminfo(text) == MemoryInfo(8000000 * 1024, 16000000 * 1024, "/proc/meminfo MemAvailable")
    assert parse_meminfo("MemTotal: 1 kB\n") is None
    f = tmp_path / "meminfo"
    f.write_text(text)
    assert read_memory(platform="linux", meminfo=f).available_bytes == 8000000 * 1024
    assert read_memory(platform="linux", meminfo=tmp_path / "none") is None
    real = read_memory()  # this machine's own
    assert real is not None and 0 < real.available_bytes <= real.total_bytes


def test_macos_memory_from_vm_stat_and_sysctl():
    runner = RecordingRunner().on(["vm_stat"], 0, VM_STAT).on(["sysctl"], 0, "17179869184\n")
    mem = read_memory(runner, platform="darwin")
    assert runner.calls == [["vm_stat"], ["sysctl", "-n", "hw.memsize"]]
    assert mem == MemoryInfo((50000 - 10000 + 300000) * 16384, 17179869184, "vm_stat free+inactive")
    assert parse_vm_stat("garbage") is None
    assert read_memory(RecordingRunner().on(["vm_stat"], 1), platform="darwin") is None
    assert read_memory(platform="sunos") is None


def test_plan_for_a_model_folder(tmp_path):
    from nightlora.targets.downtime import plan_downtime

    (tmp_path / "model.safetensors").write_bytes(b"x" * 4096)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2,
                                                      "num_attention_heads": 4, "vocab_size": 500}))
    roomy = lambda: MemoryInfo(64 * GiB, 128 * GiB, "test")  # noqa: E731
    tight = lambda: MemoryInfo(GiB // 2, 2 * GiB, "test")  # noqa: E731
    kw = dict(batch_size=2, seq_len=256, lora_rank=8)
    keep = plan_downtime("auto", tmp_path, memory_reader=roomy, **kw)
    assert not keep.stop and keep.served_bytes == 4096 and keep.training_bytes > 4096
    assert plan_downtime("auto", tmp_path, memory_reader=tight, **kw).stop
    read = []
    assert plan_downtime("always", tmp_path, memory_reader=lambda: read.append(1), **kw).stop
    assert read == []  # no need to look at memory
