"""The data commands through the real entry point: flags over config, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nightlora.cli import main


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the person's own config and environment out of these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("NIGHTLORA_CONFIG", raising=False)
    for name in list(os.environ):
        if name.startswith("NIGHTLORA_") and "__" in name:
            monkeypatch.delenv(name)


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "hanni.db"
    assert main(["demo-db", str(path)]) == 0
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_db_writes_and_refuses_to_overwrite(tmp_path: Path, capsys):
    path = tmp_path / "d" / "hanni.db"
    code, out, err = run(capsys, "demo-db", str(path), "--conversations", "30", "--json")
    assert code == 0 and json.loads(out)["conversations"] == 30
    assert (path.parent / "probe.jsonl").exists() and (path.parent / "system_prompt.txt").exists()
    code, out, err = run(capsys, "demo-db", str(path))
    assert code == 4 and out == ""
    assert err == f"nightlora: error: {path} exists; pass --force to overwrite it\n"
    assert run(capsys, "demo-db", str(path), "--force", "--seed", "3")[0] == 0
    code, _, err = run(capsys, "demo-db", str(path), "--force", "--conversations", "3")
    assert code == 2 and "conversations" in err


def test_check_human_and_json(demo: Path, capsys):
    code, out, _ = run(capsys, "check", "--db", str(demo))
    assert code == 0 and out.endswith("training is due\n")
    code, out, _ = run(capsys, "check", "--db", str(demo), "--min-feedback", "1000", "--json")
    counts = json.loads(out)
    assert code == 0 and counts["due"] is False and counts["min_feedback"] == 1000
    assert set(counts) == {"positive", "negative", "total", "min_feedback", "due", "high_water"}
    code, out, _ = run(capsys, "check", "--db", str(demo), "--min-feedback", "1000")
    assert code == 0 and "nothing to do" in out


def test_export_human_and_json(demo: Path, tmp_path: Path, capsys):
    code, out, err = run(capsys, "export", "--db", str(demo), "--out", str(tmp_path / "t"))
    assert code == 0 and out.startswith("exported ") and "skipped: bad_content 1" in out
    assert err == ""  # the prompt beside --db was found
    code, out, err = run(capsys, "export", "--db", str(demo), "--out", str(tmp_path / "t"), "--json",
                         "--system-prompt", str(tmp_path / "none.txt"), "--min-messages", "6")
    result = json.loads(out)
    assert code == 0 and result["min_messages"] == 6 and result["system_prompt"]["builtin"] is True
    assert err.startswith("warning: system prompt") and "built-in" in err


def test_config_file_and_environment_supply_the_defaults(demo: Path, tmp_path: Path, capsys, monkeypatch):
    cfg = tmp_path / "nightlora.toml"
    cfg.write_text(f'[source]\ndata_dir = "{demo.parent}"\n[data]\nmin_feedback = 1000\ntraining_dir = "out"\nmin_messages = 2\n')
    code, out, _ = run(capsys, "--config", str(cfg), "check", "--json")
    assert code == 0 and json.loads(out)["min_feedback"] == 1000
    monkeypatch.setenv("NIGHTLORA_DATA__MIN_FEEDBACK", "7")
    assert json.loads(run(capsys, "--config", str(cfg), "check", "--json")[1])["min_feedback"] == 7
    assert json.loads(run(capsys, "--config", str(cfg), "check", "--json", "--min-feedback", "3")[1])["min_feedback"] == 3

    code, out, err = run(capsys, "--config", str(cfg), "export", "--json")
    result = json.loads(out)
    assert code == 0 and result["out_dir"] == str(demo.parent / "out") and result["min_messages"] == 2
    assert result["system_prompt"]["builtin"] is False


def test_relative_flags_are_relative_to_the_current_directory(demo: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(demo.parent)
    code, out, _ = run(capsys, "export", "--db", "hanni.db", "--out", "rel", "--json")
    assert code == 0 and json.loads(out)["out_dir"] == str(demo.parent / "rel")


def test_errors_are_one_line_with_the_stage_exit_code(tmp_path: Path, capsys):
    code, out, err = run(capsys, "check", "--db", str(tmp_path / "missing.db"))
    assert (code, out) == (4, "") and err == f"nightlora: error: Hanni database not found: {tmp_path / 'missing.db'}\n"
    (tmp_path / "notes.txt").write_text("not sqlite")
    code, _, err = run(capsys, "export", "--db", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o"))
    assert code == 4 and err.count("\n") == 1 and "not a database" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nmin_feedback = -1\n")
    code, _, err = run(capsys, "--config", str(bad), "check", "--db", str(tmp_path / "missing.db"))
    assert code == 3 and "data.min_feedback" in err


def test_installed_entry_point(demo: Path, tmp_path: Path):
    exe = Path(sys.executable).parent / "nightlora"
    proc = subprocess.run([str(exe), "check", "--db", str(demo), "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["due"] is True
