"""Resource guards (pipeline/guards.py): power from pmset's and sysfs's own text, disk, memory,
and a real night that a guard postpones: status postponed, exit 0, the reason recorded and shown."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nightlora.cli.wiring import build_deps
from nightlora.config import load_config
from nightlora.demo.database import build_demo_db
from nightlora.pipeline.guards import GiB, MiB, check_disk, check_memory, check_power
from nightlora.pipeline.nightly import run_nightly
from nightlora.platform.memory import MemoryInfo
from nightlora.platform.power import PowerState, parse_pmset_batt, read_power, read_sysfs_power
from nightlora.state.db import StateDB
from server_fixtures import RecordingRunner

# `pmset -g batt` as macOS prints it (tab before the percentage), on battery, charging, and a desktop Mac.
PMSET_BATTERY = "Now drawing from 'Battery Power'\n -InternalBattery-0 (id=4653155)\t85%; discharging; 5:12 remaining present: true\n"
PMSET_AC = "Now drawing from 'AC Power'\n -InternalBattery-0 (id=4653155)\t100%; charged; 0:00 remaining present: true\n"
PMSET_DESKTOP = "Now drawing from 'AC Power'\n"
PMSET_UPS = "Now drawing from 'UPS Power'\n -InternalBattery-0 (id=1)\t97%; AC attached; not charging present: true\n"


@pytest.mark.parametrize("text, on_battery, percent", [
    (PMSET_BATTERY, True, 85), (PMSET_AC, False, 100), (PMSET_DESKTOP, False, None), (PMSET_UPS, False, 97),
])
def test_pmset_output_is_read(text: str, on_battery: bool, percent: int | None) -> None:
    p = parse_pmset_batt(text)
    assert p is not None and (p.on_battery, p.percent) == (on_battery, percent)


def test_pmset_garbage_or_failure_is_unknown() -> None:
    assert parse_pmset_batt("") is None and parse_pmset_batt("pmset: command not found") is None
    runner = RecordingRunner().on(["pmset"], returncode=1, stderr="no")
    assert read_power(runner, platform="darwin") is None
    ok = RecordingRunner().on(["pmset", "-g", "batt"], stdout=PMSET_BATTERY)
    assert read_power(ok, platform="darwin").on_battery and ok.calls == [["pmset", "-g", "batt"]]


def sysfs(root: Path, supplies: dict[str, dict[str, str]]) -> Path:
    """A power_supply tree as the kernel lays it out: one folder per supply, one value per file."""
    for name, attrs in supplies.items():
        (root / name).mkdir(parents=True)
        for k, v in attrs.items():
            (root / name / k).write_text(v + "\n")
    return root


@pytest.mark.parametrize("supplies, on_battery", [
    ({"AC": {"type": "Mains", "online": "0"}, "BAT0": {"type": "Battery", "status": "Discharging", "capacity": "41"}}, True),
    ({"AC": {"type": "Mains", "online": "1"}, "BAT0": {"type": "Battery", "status": "Charging", "capacity": "41"}}, False),
    ({"ADP1": {"type": "Mains", "online": "1"}, "BAT0": {"type": "Battery", "status": "Full"}}, False),
    # no mains supply listed (some firmware): the battery's own status decides
    ({"BAT1": {"type": "Battery", "status": "Discharging", "capacity": "9"}}, True),
    ({"BAT1": {"type": "Battery", "status": "Not charging", "capacity": "80"}}, False),
    # a wireless mouse's battery (scope Device) discharging says nothing about the laptop
    ({"AC": {"type": "Mains", "online": "1"}, "hidpp_battery_0": {"type": "Battery", "scope": "Device", "status": "Discharging"}}, False),
    ({"hidpp_battery_0": {"type": "Battery", "scope": "Device", "status": "Discharging"}}, False),
    # USB-C power delivery counts as mains
    ({"ucsi-source-psy-USBC000:001": {"type": "USB", "online": "1"}, "BAT0": {"type": "Battery", "status": "Discharging"}}, False),
    # mains offline, battery says Unknown: still on the battery
    ({"AC": {"type": "Mains", "online": "0"}, "BAT0": {"type": "Battery", "status": "Unknown"}}, True),
    ({}, False),  # a desktop or VM: the folder is empty
])
def test_sysfs_power_supply_tree(tmp_path: Path, supplies: dict, on_battery: bool) -> None:
    root = sysfs(tmp_path / "power_supply", supplies)
    root.mkdir(exist_ok=True)
    p = read_sysfs_power(root)
    assert p is not None and p.on_battery is on_battery, p
    assert read_power(platform="linux", sysfs_root=root) == p


def test_guard_rules() -> None:
    battery = PowerState(True, 30, "test")
    assert not check_power(battery, "postpone").ok and check_power(battery, "run").ok
    assert check_power(None, "postpone").ok and not check_power(None, "postpone").measured
    d = check_disk(10 * MiB, dataset_bytes=5 * MiB, one_adapter_bytes=MiB, headroom_bytes=2 * MiB, where="/x")
    assert not d.ok and "11 MiB" in d.reason and d.fix  # 5 + 4 x 1 + 2
    assert check_disk(11 * MiB, dataset_bytes=5 * MiB, one_adapter_bytes=MiB, headroom_bytes=2 * MiB, where="/x").ok
    mem = MemoryInfo(2 * GiB, 8 * GiB, "test")
    assert not check_memory(mem, training_bytes=2 * GiB, freeable_bytes=0).ok  # + 1 GiB margin
    assert check_memory(mem, training_bytes=2 * GiB, freeable_bytes=GiB).ok    # the server's weights freed
    assert check_memory(None, training_bytes=99 * GiB, freeable_bytes=0).ok


def write_config(tmp: Path, model: Path, extra: str = "") -> Path:
    data_dir = tmp / "hanni"
    build_demo_db(data_dir / "hanni.db", conversations=24)
    path = tmp / "nightlora.toml"
    path.write_text(f"""
[source]
data_dir = {json.dumps(str(data_dir))}
[train]
model = {json.dumps(str(model))}
backend = "torch"
iters = 4
batch_size = 4
max_seq_length = 256
[target]
kind = "none"
{extra}
""")
    return path


def unexported(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM message_feedback WHERE exported = 0").fetchone()[0]


@pytest.mark.parametrize("fault", ["battery", "disk", "memory"])
def test_a_guard_postpones_the_night_and_says_why(tmp_path: Path, tiny_model_dir: Path, fault: str) -> None:
    cfg = load_config(write_config(tmp_path, tiny_model_dir), environ={})
    deps = build_deps(cfg, progress=False)
    sys_root = sysfs(tmp_path / "ps", {"AC": {"type": "Mains", "online": "0" if fault == "battery" else "1"},
                                       "BAT0": {"type": "Battery", "status": "Discharging", "capacity": "35"}})
    deps.read_power = lambda: read_sysfs_power(sys_root)
    deps.free_disk = lambda path: 1 * MiB if fault == "disk" else 100 * GiB
    deps.read_memory = lambda: MemoryInfo(GiB // 4 if fault == "memory" else 64 * GiB, 64 * GiB, "test")
    before = unexported(cfg.source.db_path)

    result = run_nightly(cfg, deps)

    assert (result.status, result.exit_code) == ("postponed", 0)
    failing = [g.name for g in result.guards if not g.ok]
    assert failing == [{"battery": "power"}.get(fault, fault)], result.guards
    assert {"battery": "on battery (35%)", "disk": "not enough free disk",
            "memory": "not enough memory"}[fault] in result.message and "fix:" in result.message
    assert result.train is None and unexported(cfg.source.db_path) == before  # nothing trained, nothing consumed
    saved = json.loads((result.run_dir / "result.json").read_text())
    assert saved["status"] == "postponed" and [g["ok"] for g in saved["guards"]].count(False) == 1
    with StateDB.for_state_dir(cfg.source.state_path) as db:
        (rec,) = db.recent_runs()
    assert rec.status == "postponed" and rec.exit_code == 0 and rec.stage == "guard" and rec.notes == result.message
    with sqlite3.connect(cfg.source.db_path) as conn:
        assert conn.execute("SELECT status FROM flywheel_cycles").fetchall() == [("postponed",)]


def test_status_shows_a_postponed_nights_reason(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Through the CLI, with the machine's own power and disk readers: `run` exits 0, `status` shows the reason."""
    path = write_config(tmp_path, tiny_model_dir, '[guard]\ndisk_headroom_mb = 100000000\n')
    out = subprocess.run([sys.executable, "-m", "nightlora", "-c", str(path), "run", "--no-progress", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "postponed"
    st = subprocess.run([sys.executable, "-m", "nightlora", "-c", str(path), "status"], capture_output=True,
                        text=True, timeout=60)
    assert st.returncode == 0, st.stderr
    assert "postponed" in st.stdout and "last night was postponed: not enough free disk" in st.stdout
    assert "guard.disk_headroom_mb" in st.stdout
