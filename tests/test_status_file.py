"""The status file the app polls."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone

from nightlora.state.status_file import Status, StatusWriter, expected_end, read_status, write_status

T0 = datetime(2026, 1, 2, 3, 0, tzinfo=timezone.utc)


def test_expected_end_is_the_median_of_past_runs():
    assert expected_end(T0, [600, 900, 40_000]) == T0 + timedelta(seconds=900)  # one odd night does not count
    assert expected_end(T0, []) is None
    assert expected_end(T0, [0, -5]) is None
    assert expected_end(T0, [600], min_runs=2) is None


def test_writer_tracks_the_run(tmp_path):
    w = StatusWriter.for_state_dir(tmp_path, started=T0, past_durations_s=[1200, 1800])
    w.stage("train", "training v0004", server_down=True)
    data = json.loads((tmp_path / "status.json").read_text())
    assert data["state"] == "running" and data["stage"] == "train" and data["server_down"] is True
    assert data["started"] == "2026-01-02T03:00:00+00:00"
    assert data["expected_end"] == "2026-01-02T03:25:00+00:00"
    assert data["pid"] == os.getpid() and data["message"] == "training v0004"
    assert stat.S_IMODE((tmp_path / "status.json").stat().st_mode) == 0o600
    w.done("v0004 is live", adapter_version="v0004")
    st = read_status(tmp_path / "status.json")
    assert st.state == "done" and st.server_down is False and st.adapter_version == "v0004"
    assert st.started == data["started"]  # fixed facts survive updates
    w.done("training failed", failed=True)
    assert read_status(tmp_path / "status.json").state == "failed"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_status_reads_as_none(tmp_path):
    assert read_status(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert read_status(tmp_path / "bad.json") is None
    write_status(tmp_path / "s.json", Status(state="idle"))
    assert read_status(tmp_path / "s.json").state == "idle"
