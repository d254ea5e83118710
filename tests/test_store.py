"""The adapter store: versions appear whole, `current` switches atomically, pruning keeps what matters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nightlora.errors import StoreError
from nightlora.state.store import AdapterStore


def fake_adapter(root: Path, name: str = "trained", payload: bytes = b"weights") -> Path:
    """An adapter folder as the trainer leaves it (content need not be real weights here)."""
    d = root / name
    (d / "peft").mkdir(parents=True)
    (d / "adapters.safetensors").write_bytes(payload)
    (d / "adapter_config.json").write_text(json.dumps({"model": "/models/base", "num_layers": 2}))
    (d / "nightlora.json").write_text(json.dumps({"base_model": "smollm2-135m", "metrics": {"val_loss": 1.5}}))
    (d / "peft" / "adapter_model.safetensors").write_bytes(b"peft")
    return d


@pytest.fixture
def store(tmp_path) -> AdapterStore:
    return AdapterStore(tmp_path / "state" / "adapters")


def test_add_moves_the_folder_in_as_the_next_version(store, tmp_path):
    src = fake_adapter(tmp_path, payload=b"one")
    v = store.add(src, data_counts={"train": 40, "valid": 5, "test": 5}, eval_score=0.75, run_id=7,
                  created_at="2026-01-02T03:04:05+00:00")
    assert v.name == "v0001" and v.number == 1 and v.path == store.root / "v0001"
    assert not src.exists()  # consumed
    assert (v.path / "adapters.safetensors").read_bytes() == b"one"
    assert (v.path / "peft" / "adapter_model.safetensors").read_bytes() == b"peft"
    meta = json.loads((v.path / "version.json").read_text())
    assert meta == {"version": "v0001", "created_at": "2026-01-02T03:04:05+00:00", "base_model": "smollm2-135m",
                    "data_counts": {"train": 40, "valid": 5, "test": 5}, "eval_score": 0.75, "run_id": 7,
                    "rejected": None}
    assert v.trainer["metrics"] == {"val_loss": 1.5}
    assert store.add(fake_adapter(tmp_path, "b")).name == "v0002"
    assert [x.name for x in store.list()] == ["v0001", "v0002"]
    assert store.current() is None  # adding never switches what is served


def test_add_refuses_incomplete_adapters_and_leaves_nothing(store, tmp_path):
    src = fake_adapter(tmp_path)
    (src / "adapter_config.json").unlink()
    with pytest.raises(StoreError, match="missing adapter_config.json"):
        store.add(src)
    assert store.list() == [] and src.exists()
    with pytest.raises(StoreError, match="not found"):
        store.add(tmp_path / "nope")


def test_a_killed_add_leaves_no_visible_version(store, tmp_path, monkeypatch):
    store.add(fake_adapter(tmp_path, "a"))
    import shutil

    calls = []

    def dying_move(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed halfway through the move
        return shutil.copy2(src, dst) if Path(src).is_file() else shutil.copytree(src, dst)

    monkeypatch.setattr("nightlora.state.store.shutil.move", dying_move)
    with pytest.raises(KeyboardInterrupt):
        store.add(fake_adapter(tmp_path, "b"))
    monkeypatch.undo()
    assert [v.name for v in store.list()] == ["v0001"]
    assert not any(p.name.startswith(".v0002") for p in store.root.iterdir())
    assert store.add(fake_adapter(tmp_path, "c")).name == "v0002"


def test_current_is_an_atomically_replaced_relative_symlink(store, tmp_path):
    v1 = store.add(fake_adapter(tmp_path, "a"))
    v2 = store.add(fake_adapter(tmp_path, "b"))
    store.set_current(v1)
    assert os.readlink(store.current_link) == "v0001"  # relative: the state dir may move
    assert store.current().name == "v0001"
    store.set_current("v0002")
    assert store.current() == v2
    assert (store.current_link / "adapters.safetensors").is_file()
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []  # no temp link left
    store.set_current(None)
    assert store.current() is None and not store.current_link.exists()
    store.set_current(None)  # twice is fine


def test_previous_skips_rejected_versions(store, tmp_path):
    for n in "abcd":
        store.add(fake_adapter(tmp_path, n))
    assert store.previous() is None  # nothing live
    store.set_current("v0004")
    assert store.previous().name == "v0003"
    store.reject("v0003", "health check failed:\n chat answered 500")
    assert store.get(3).rejected == "health check failed: chat answered 500"
    assert store.previous().name == "v0002"
    store.set_current("v0001")
    assert store.previous() is None


def test_get_accepts_names_and_numbers_and_explains_unknown_ones(store, tmp_path):
    store.add(fake_adapter(tmp_path))
    assert store.get("v0001").name == store.get(1).name == store.get("1").name == "v0001"
    with pytest.raises(StoreError, match=r"no adapter version v0009 .*known: v0001"):
        store.get("v9")
    with pytest.raises(StoreError, match="not a version name"):
        store.get("latest")


def test_update_records_late_facts(store, tmp_path):
    v = store.add(fake_adapter(tmp_path))
    assert store.update(v, eval_score=0.5).eval_score == 0.5
    with pytest.raises(StoreError, match="cannot update path"):
        store.update(v, path="/elsewhere")


def test_prune_keeps_newest_and_never_the_live_one_or_its_previous(store, tmp_path):
    for n in "abcdef":
        store.add(fake_adapter(tmp_path, n))
    store.set_current("v0002")  # rolled back to an old one: it and v0001 must stay
    removed = store.prune(keep=2)
    assert [v.name for v in removed] == ["v0003", "v0004"]
    assert [v.name for v in store.list()] == ["v0001", "v0002", "v0005", "v0006"]
    assert not any(p.name.endswith(".tmp") for p in store.root.iterdir())
    assert store.prune(keep=2) == []
    with pytest.raises(StoreError, match="at least 1"):
        store.prune(0)


def test_dangling_current_reads_as_no_adapter(store, tmp_path):
    store.add(fake_adapter(tmp_path))
    store.set_current("v0001")
    import shutil

    shutil.rmtree(store.root / "v0001")
    assert store.current() is None and store.list() == []


def test_cli_adapters_lists_versions_and_the_live_one(tmp_path, capsys):
    from nightlora.cli import main

    data = tmp_path / "data"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[source]\ndata_dir = "{data}"\n')
    assert main(["--config", str(cfg), "adapters"]) == 0
    assert "no adapter versions yet" in capsys.readouterr().out
    store = AdapterStore.for_state_dir(data / "nightlora")
    store.add(fake_adapter(tmp_path, "a"), data_counts={"train": 9, "valid": 1, "test": 2}, eval_score=0.25)
    store.add(fake_adapter(tmp_path, "b"))
    store.set_current("v0001")
    assert main(["--config", str(cfg), "adapters"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[1].startswith("  v0002") and text[2].startswith("* v0001")
    assert "9/1/2" in text[2] and "0.250" in text[2] and "smollm2-135m" in text[2]
    assert main(["--config", str(cfg), "adapters", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["live"] == "v0001"
    assert [(v["name"], v["live"], v["eval_score"]) for v in out["versions"]] == [("v0002", False, None), ("v0001", True, 0.25)]


def test_cli_rollback_without_an_earlier_version_says_so(tmp_path, capsys):
    from nightlora.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[source]\ndata_dir = "{tmp_path}"\n[target]\nkind = "none"\n')
    assert main(["--config", str(cfg), "rollback"]) == 13
    assert "no earlier version to roll back to" in capsys.readouterr().err


def test_a_version_keeps_each_format_the_targets_need(store, tmp_path):
    only_peft = tmp_path / "p"
    (only_peft / "peft").mkdir(parents=True)
    (only_peft / "peft" / "adapter_model.safetensors").write_bytes(b"w")
    (only_peft / "peft" / "adapter_config.json").write_text("{}")
    v = store.add(only_peft)
    assert v.formats == ("peft",) and v.adapter_dir("peft") == v.path / "peft"
    with pytest.raises(StoreError, match="v0001 has no mlx adapter"):
        v.adapter_dir("mlx")
    both = store.add(fake_adapter(tmp_path, "both"))
    (both.path / "peft" / "adapter_config.json").write_text("{}")
    assert store.get(both.name).formats == ("mlx", "peft")
    store.set_current(both)
    assert store.stable_path("peft") == store.current_link / "peft"
    bad = tmp_path / "half"
    (bad / "peft").mkdir(parents=True)
    (bad / "peft" / "adapter_model.safetensors").write_bytes(b"w")
    with pytest.raises(StoreError, match="not a PEFT adapter: missing adapter_config.json"):
        store.add(bad)
