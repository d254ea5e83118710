"""Distillation over a real export: a real `mlx_lm server` (the tiny model) as the teacher, the split
guarantee, the cache across nights, what leaves the machine, teachers that fail, the command, and
a nightly run with the stage in it."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nightlora.cli import main
from nightlora.cli.wiring import build_deps
from nightlora.config import load_config
from nightlora.dataset.manifest import read_manifest
from nightlora.errors import ConfigError
from nightlora.pipeline.nightly import run_nightly
from nightlora.platform.runner import SubprocessRunner
from nightlora.targets.health import check_health
from nightlora.teachers.cache import ReplyCache
from nightlora.teachers.claude_cli.config import ClaudeCliTeacherConfig
from nightlora.teachers.claude_cli.teacher import ClaudeCliTeacher
from nightlora.teachers.distill import distill_dataset
from nightlora.teachers.openai_api.config import OpenAITeacherConfig
from nightlora.teachers.openai_api.teacher import OpenAITeacher
from server_fixtures import free_port, kill_pid
from teacher_servers import PRIVATE, ChatServer, add_rated_down_conversation, demo_export


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def key(record: dict) -> tuple:
    return record["meta"]["conversation_id"], record["meta"]["message_index"]


def owner_only(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def assert_manifest_matches_files(data: Path) -> dict:
    m = read_manifest(data)
    for name, f in m["files"].items():
        body = (data / name).read_bytes()
        assert (hashlib.sha256(body).hexdigest(), len(body), body.count(b"\n")) == (f["sha256"], f["bytes"], f["lines"]), name
    assert m["counts"]["train"] == len(lines(data / "train.jsonl"))
    return m


@pytest.fixture(scope="module")
def mlx_teacher(server_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real `mlx_lm server` on 127.0.0.1 with the tiny model: the OpenAI-compatible teacher."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("teacher") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(server_model_dir),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        check_health(url, timeout=60, alive=lambda: proc.poll() is None).raise_for_health()
        yield url
    finally:
        kill_pid(proc.pid)
        log.close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def mlx_config(url: str, **kw) -> OpenAITeacherConfig:
    # "default_model" is mlx_lm server's name for the model it was started with.
    return OpenAITeacherConfig(enabled=True, base_url=url + "/v1", model="default_model", reply_max_tokens=8,
                               count=12, **kw)


def test_a_local_mlx_lm_teacher_adds_to_train_only_and_is_asked_once_across_two_nights(mlx_teacher, tmp_path) -> None:
    _, night1 = demo_export(tmp_path)
    held_out = {s: (night1 / f"{s}.jsonl").read_bytes() for s in ("valid", "test")}
    train_before = (night1 / "train.jsonl").read_bytes()
    prefs_before = lines(night1 / "preferences.jsonl")
    cfg = mlx_config(mlx_teacher)
    cache_path, log = tmp_path / "state" / "cache.jsonl", tmp_path / "state" / "requests.jsonl"

    r1 = distill_dataset(night1, OpenAITeacher(cfg), cfg, cache=ReplyCache(cache_path), requests_log=log)

    negatives = [p for p in prefs_before if p["meta"]["split"] == "train" and p["meta"]["chosen_from"] != "alternative"]
    assert 0 < len(negatives) < cfg.count
    assert r1.selected == cfg.count and r1.selected - r1.synthetic == len(negatives) == r1.chosen
    assert r1.asked == r1.answered == r1.requests == r1.selected and r1.cached == 0 and r1.teacher_failure is None
    assert r1.skipped.get("held_out", 0) == sum(p["meta"]["split"] != "train" for p in prefs_before)
    assert r1.tokens["output"] > 0  # mlx_lm reports usage
    # valid and test are untouched; train is the export's lines, then the distilled ones
    assert {s: (night1 / f"{s}.jsonl").read_bytes() for s in held_out} == held_out
    train_after = (night1 / "train.jsonl").read_bytes()
    assert train_after.startswith(train_before)
    added = [json.loads(line) for line in train_after[len(train_before):].splitlines()]
    assert len(added) == r1.examples == r1.selected
    for a in added:
        assert (a["meta"]["source"], a["meta"]["split"], a["meta"]["teacher"]) == ("distill", "train", "openai:default_model")
        assert a["messages"][-1]["role"] == "assistant" and a["messages"][-1]["content"].strip()
    # a thumbs-down context is given to the teacher exactly as the preference record holds it
    by_key = {key(p): p for p in prefs_before}
    from_prefs = [a for a in added if a["meta"]["context_of"] == "preference"]
    assert {key(a) for a in from_prefs} == {key(p) for p in negatives}
    for a in from_prefs:
        assert a["messages"][:-1] == by_key[key(a)]["prompt"]
    # ... and its reply is that record's chosen side; what the export had chosen is kept
    for after in lines(night1 / "preferences.jsonl"):
        before = by_key[key(after)]
        if key(after) not in {key(a) for a in from_prefs}:
            assert after == before
            continue
        (teacher_reply,) = [a["messages"][-1] for a in from_prefs if key(a) == key(after)]
        assert after["chosen"] == [teacher_reply] and after["rejected"] == before["rejected"]
        assert after["meta"]["chosen_from"] == "distill" and after["meta"]["teacher"] == "openai:default_model"
        assert (after["meta"]["export_chosen"], after["meta"]["export_chosen_from"]) == (
            before["chosen"], before["meta"]["chosen_from"])
    m = assert_manifest_matches_files(night1)
    assert {k: m["distill"][k] for k in ("selected", "synthetic", "examples", "chosen", "asked", "cached")} == {
        "selected": r1.selected, "synthetic": r1.synthetic, "examples": r1.examples, "chosen": r1.chosen,
        "asked": r1.asked, "cached": 0}
    assert len(log.read_text().splitlines()) == r1.requests and owner_only(log) and owner_only(cache_path)

    # The next night exports the same database again: every prompt is answered from the cache.
    _, night2 = demo_export(tmp_path)
    r2 = distill_dataset(night2, OpenAITeacher(cfg), cfg, cache=ReplyCache(cache_path), requests_log=log)
    assert (r2.selected, r2.cached, r2.asked, r2.requests) == (r1.selected, r1.selected, 0, 0)
    assert len(log.read_text().splitlines()) == r1.requests
    assert (night2 / "train.jsonl").read_bytes() == train_after  # the same replies, the same data
    # Running it again on a folder replaces, never stacks, its earlier work.
    distill_dataset(night2, OpenAITeacher(cfg), cfg, cache=ReplyCache(cache_path), requests_log=log)
    assert (night2 / "train.jsonl").read_bytes() == train_after
    assert lines(night2 / "preferences.jsonl") == lines(night1 / "preferences.jsonl")


def test_no_identifier_leaves_the_machine_and_the_users_own_come_back(tmp_path, server) -> None:
    db, _ = demo_export(tmp_path)
    conv = add_rated_down_conversation(db)
    _, data = demo_export(tmp_path)
    cfg = OpenAITeacherConfig(enabled=True, base_url=server.url + "/v1", model="m", count=50, synthetic=[])
    cache_path, log = tmp_path / "cache.jsonl", tmp_path / "requests.jsonl"

    r = distill_dataset(data, OpenAITeacher(cfg), cfg, cache=ReplyCache(cache_path), requests_log=log)

    sent = json.dumps([got.body for got in server.received], ensure_ascii=False)
    for value in PRIVATE.values():
        assert value not in sent
        assert value not in cache_path.read_text() and value not in log.read_text()
    assert r.redacted and r.redactions == {"CARD": 1, "EMAIL": 1, "IBAN": 1, "PHONE": 1, "SECRET": 1}
    assert "12 400₸, version 2.13.0" in sent and "[Current context]" in sent  # look-alikes and what the assistant saw
    # the teacher (which echoes the user's message) got placeholders; the example gets the user's own values back
    (ex,) = [a for a in lines(data / "train.jsonl") if a["meta"]["source"] == "distill" and key(a) == (conv, 1)]
    for value in PRIVATE.values():
        assert value in ex["messages"][-1]["content"]
    assert "[EMAIL_1]" not in ex["messages"][-1]["content"]

    # A loopback teacher sees the text as it is only when the config says so ...
    raw = cfg.model_copy(update={"loopback_unredacted": True})
    _, data2 = demo_export(tmp_path)
    server.received.clear()
    r2 = distill_dataset(data2, OpenAITeacher(raw), raw, cache=ReplyCache(tmp_path / "c2.jsonl"), requests_log=None)
    assert not r2.redacted and r2.redactions == {}
    assert PRIVATE["email"] in json.dumps([got.body for got in server.received], ensure_ascii=False)
    # ... and a teacher elsewhere never does.
    claude = ClaudeCliTeacherConfig(enabled=True, loopback_unredacted=True)
    with pytest.raises(ConfigError, match="loopback_unredacted"):
        distill_dataset(data2, ClaudeCliTeacher(claude, SubprocessRunner()), claude,
                        cache=ReplyCache(tmp_path / "c3.jsonl"), requests_log=None)


def test_the_claude_cli_gets_placeholders_only(tmp_path, monkeypatch) -> None:
    """The CLI sends everything to Anthropic: it is never loopback, so it never sees an identifier."""
    from teacher_servers import fake_claude

    db, _ = demo_export(tmp_path)
    conv = add_rated_down_conversation(db)
    _, data = demo_export(tmp_path)
    calls = tmp_path / "argv.jsonl"
    fake_claude(tmp_path / "bin", calls, answer="Done: wrote to [EMAIL_1], card [CARD_1].")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = ClaudeCliTeacherConfig(enabled=True, count=50, synthetic=[])
    sleeps: list[float] = []

    r = distill_dataset(data, ClaudeCliTeacher(cfg, SubprocessRunner()), cfg, cache=ReplyCache(tmp_path / "c.jsonl"),
                        requests_log=tmp_path / "log.jsonl", sleep=sleeps.append)

    argvs = calls.read_text()
    assert r.asked == len(argvs.splitlines()) > 1 and sleeps == [1.0] * (r.asked - 1)
    for value in PRIVATE.values():
        assert value not in argvs
    assert "[EMAIL_1]" in argvs and "[SECRET_1]" in argvs
    (ex,) = [a for a in lines(data / "train.jsonl") if a["meta"]["source"] == "distill" and key(a) == (conv, 1)]
    assert ex["messages"][-1]["content"] == f"Done: wrote to {PRIVATE['email']}, card {PRIVATE['card']}."
    # other contexts had no [EMAIL_1] to give back: those answers are not used, and not asked for again
    assert r.unusable == r.asked - 1 and r.examples == 1
    _, data2 = demo_export(tmp_path)
    again = distill_dataset(data2, ClaudeCliTeacher(cfg, SubprocessRunner()), cfg,
                            cache=ReplyCache(tmp_path / "c.jsonl"), requests_log=None, sleep=sleeps.append)
    assert (again.asked, again.cached, again.unusable, again.examples) == (0, r.asked, r.unusable, 1)
    assert len(calls.read_text().splitlines()) == r.asked


def test_a_teacher_that_hangs_or_is_gone_leaves_a_valid_dataset(tmp_path, server) -> None:
    _, data = demo_export(tmp_path)
    train_before = (data / "train.jsonl").read_bytes()
    cfg = OpenAITeacherConfig(enabled=True, base_url=server.url + "/v1", model="m", count=6, timeout_s=0.5)
    server.script = [None, "garbage", "hang"]  # one answer, one that is not, then silence

    r = distill_dataset(data, OpenAITeacher(cfg), cfg, cache=ReplyCache(tmp_path / "cache.jsonl"), requests_log=None)

    assert (r.answered, r.unusable, r.asked, r.not_asked, r.examples) == (1, 1, 3, 3, 1)
    assert "did not answer within 0.5 s" in r.teacher_failure
    assert read_manifest(data)["distill"]["teacher_failure"] == r.teacher_failure
    assert len(lines(data / "train.jsonl")) == train_before.count(b"\n") + 1
    assert_manifest_matches_files(data)

    server.close()  # nobody answers at all: the data is the export's own, and says why
    _, data2 = demo_export(tmp_path)
    gone = distill_dataset(data2, OpenAITeacher(cfg), cfg, cache=ReplyCache(tmp_path / "c2.jsonl"), requests_log=None)
    assert gone.examples == 0 and "cannot connect" in gone.teacher_failure
    assert (data2 / "train.jsonl").read_bytes() == train_before
    assert_manifest_matches_files(data2)


@pytest.fixture
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("NIGHTLORA_CONFIG", raising=False)
    for name in list(os.environ):
        if name.startswith("NIGHTLORA_") and "__" in name:
            monkeypatch.delenv(name)


def test_distill_command_dry_run_prints_exactly_what_is_sent(tmp_path, server, capsys, no_user_config,
                                                            monkeypatch) -> None:
    db, data = demo_export(tmp_path)
    cfg_path = tmp_path / "nightlora.toml"
    cfg_path.write_text(f'[source]\ndata_dir = "{db.parent}"\n[teacher]\nkind = "openai"\nbase_url = "{server.url}/v1"\n'
                        f'model = "m"\ncount = 3\n')
    run = ["-c", str(cfg_path), "distill", "--data", str(data)]

    assert main(run) == 3  # teacher.enabled is false: nothing is sent without it
    assert "teacher.enabled is false" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    assert main([*run, "--dry-run", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["payloads"]
    assert len(shown) == 3 and server.received == []
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # a dry run changes nothing
    assert main([*run, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n\n")[0]) == shown[0]  # the human form prints the same

    os.environ["NIGHTLORA_TEACHER__ENABLED"] = "true"
    try:
        assert main([*run, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert [got.body for got in server.received] == [p["body"] for p in shown]
        assert result["examples"] == 3 and result["asked"] == 3
        assert main([*run, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["cached"] == 3 and len(server.received) == 3
        assert main(["-c", str(cfg_path), "distill", "--clear-cache"]) == 0
        assert "forgot 3 cached teacher replies" in capsys.readouterr().out
        log = db.parent / "nightlora" / "teacher" / "requests.jsonl"
        assert len(log.read_text().splitlines()) == 3
        monkeypatch.setattr("nightlora.teachers.distill.LOG_MAX_BYTES", 100)  # a full log moves aside
        assert main([*run, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["asked"] == 3 and len(server.received) == 6
        assert len(log.read_text().splitlines()) == 3 and len(log.with_name("requests.jsonl.1").read_text().splitlines()) == 3
    finally:
        del os.environ["NIGHTLORA_TEACHER__ENABLED"]


@pytest.mark.slow
def test_nightly_run_distills_between_export_and_training(mlx_teacher, server_model_dir, tmp_path) -> None:
    db, _ = demo_export(tmp_path)
    (db.parent / "probe.jsonl").unlink()
    cfg_path = tmp_path / "nightlora.toml"
    cfg_path.write_text(f"""
[source]
data_dir = "{db.parent}"
[data]
min_feedback = 1
[train]
model = "{server_model_dir}"
backend = "torch"
iters = 4
batch_size = 4
max_seq_length = 384
[target]
kind = "none"
[teacher]
kind = "openai"
enabled = true
base_url = "{mlx_teacher}/v1"
model = "default_model"
reply_max_tokens = 8
count = 12
[eval]
# 4 steps on a tiny random model teach it nothing the gate could see; this test is about distillation.
gate = false
""")
    cfg = load_config(cfg_path, environ={})
    log = cfg.source.state_path / "teacher" / "requests.jsonl"

    night1 = run_nightly(cfg, build_deps(cfg, progress=False))

    assert night1.status == "completed", night1.message
    d1 = night1.distill
    assert d1.examples == d1.selected == 12 and d1.asked == 12 and d1.teacher_failure is None
    assert list(night1.stages_s)[:3] == ["check", "export", "distill"]
    data = night1.run_dir / "data"
    train = lines(data / "train.jsonl")
    assert sum(t["meta"]["source"] == "distill" for t in train) == 12
    assert not any(r["meta"]["source"] == "distill" for s in ("valid", "test") for r in lines(data / f"{s}.jsonl"))
    assert night1.export.counts["train"] == len(train)  # training was sized with the distilled examples
    assert json.loads((night1.run_dir / "result.json").read_text())["distill"]["examples"] == 12

    # A new thumbs-down (with the user's identifiers in it) arrives; the next night asks only that one.
    conv = add_rated_down_conversation(db)
    night2 = run_nightly(cfg, build_deps(cfg, progress=False))
    assert night2.status == "completed", night2.message
    d2 = night2.distill
    assert (d2.selected, d2.asked, d2.requests, d2.cached) == (12, 1, 1, 11)
    assert d2.redactions == {"CARD": 1, "EMAIL": 1, "IBAN": 1, "PHONE": 1, "SECRET": 1}
    sent = log.read_text().splitlines()
    assert len(sent) == 13
    asked = json.loads(sent[-1])["sent"]["body"]["messages"][1]["content"]
    assert all(f"[{kind}_1]" in asked for kind in ("EMAIL", "PHONE", "CARD", "IBAN", "SECRET"))
    for value in PRIVATE.values():
        assert value not in log.read_text()
    assert any(key(t) == (conv, 1) for t in lines(night2.run_dir / "data" / "train.jsonl") if t["meta"]["source"] == "distill")
