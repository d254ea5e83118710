"""Each teacher kind against what it talks to: a stand-in `claude` on PATH (the CLI contract), a real
HTTP server speaking Anthropic's Messages API (through the official SDK), and OpenAI's chat
completions -- answering, hanging, rate limiting, failing and talking nonsense."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nightlora.errors import TeacherError
from nightlora.platform.runner import SubprocessRunner
from nightlora.teachers.anthropic_api.config import AnthropicTeacherConfig
from nightlora.teachers.anthropic_api.teacher import AnthropicTeacher
from nightlora.teachers.ask import Job, ask_all
from nightlora.teachers.base import TeacherRequest
from nightlora.teachers.claude_cli.config import ClaudeCliTeacherConfig
from nightlora.teachers.claude_cli.teacher import ClaudeCliTeacher
from nightlora.teachers.openai_api.config import OpenAITeacherConfig
from nightlora.teachers.openai_api.teacher import OpenAITeacher
from teacher_servers import ChatServer, fake_claude

SYSTEM = "You are Hanni, a warm assistant."
TOOL_CONTEXT = (
    {"role": "user", "content": "What's the weather in Almaty?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_00001", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Almaty"}'}}]},
    {"role": "tool", "tool_call_id": "call_00001", "name": "get_weather", "content": "sunny, 21°C"},
    {"role": "assistant", "content": "It's sunny, 21°C."},
    {"role": "user", "content": "Thanks! Remind me to take an umbrella tomorrow"},
)
TOOLS = ({"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},)


def request(text: str = "What's my cat's name?") -> TeacherRequest:
    return TeacherRequest(SYSTEM, ({"role": "user", "content": text},))


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def ask(teacher, payloads, **kw):
    sleeps: list[float] = []
    opts = dict(max_requests=50, max_tokens=None, retries=3, backoff_s=0.5, concurrency=1, pause_s=0.0)
    report = ask_all(teacher, [Job(str(i), p) for i, p in enumerate(payloads)], sleep=sleeps.append, **{**opts, **kw})
    return report, sleeps


# ---- the claude CLI ---------------------------------------------------------------------------


class TimeoutRecordingRunner(SubprocessRunner):
    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def run(self, argv, *, timeout=60.0, env=None):
        self.timeouts.append(timeout)
        return super().run(argv, timeout=timeout, env=env)


def test_claude_cli_is_asked_as_the_original_asked_it(tmp_path: Path, monkeypatch) -> None:
    calls = tmp_path / "calls.jsonl"
    fake_claude(tmp_path / "bin", calls, answer="Your cat is Murka.")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = ClaudeCliTeacherConfig(enabled=True)
    runner = TimeoutRecordingRunner()
    teacher = ClaudeCliTeacher(cfg, runner)
    assert (cfg.timeout_s, cfg.pause_s, teacher.loopback) == (60.0, 1.0, False)

    report, sleeps = ask(teacher, [teacher.payload(TeacherRequest(SYSTEM, TOOL_CONTEXT, TOOLS)), teacher.payload(request())],
                         pause_s=cfg.pause_s)

    assert [o.reply.text for o in report.outcomes] == ["Your cat is Murka."] * 2
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(argvs) == 2
    first = argvs[0]
    assert Path(first[0]).name == "claude" and first[1] == "-p" and first[3:] == ["--output-format", "text"]
    prompt = first[2]
    assert SYSTEM in prompt
    assert prompt.index("User: What's the weather in Almaty?") < prompt.index(
        'Assistant called the tool get_weather with {"city": "Almaty"}') < prompt.index(
        "Tool result (get_weather): sunny, 21°C") < prompt.index("User: Thanks! Remind me to take an umbrella tomorrow")
    assert prompt.rstrip().endswith("Output only the assistant's reply, nothing else.")
    assert runner.timeouts == [60.0, 60.0]
    assert sleeps == [1.0]  # a pause between the two requests, none after the last
    assert report.usage.reported is False  # text output carries no usage


def test_claude_cli_model_flag_failure_and_absence(tmp_path: Path, monkeypatch) -> None:
    calls = tmp_path / "calls.jsonl"
    fake_claude(tmp_path / "bin", calls, answer="Error: Invalid API key", exit_code=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    teacher = ClaudeCliTeacher(ClaudeCliTeacherConfig(model="sonnet"), SubprocessRunner())
    payload = teacher.payload(request())
    assert payload["argv"][-2:] == ["--model", "sonnet"] and teacher.model == "sonnet"
    report, _ = ask(teacher, [payload, payload])
    assert report.stopped.reason == "unavailable" and "exited 1: Error: Invalid API key" in str(report.stopped)
    assert [o.attempts for o in report.outcomes] == [1, 0]  # dropped for the night after the first

    missing = ClaudeCliTeacher(ClaudeCliTeacherConfig(command=str(tmp_path / "nowhere" / "claude")), SubprocessRunner())
    with pytest.raises(TeacherError) as e:
        missing.send(missing.payload(request()))
    assert e.value.reason == "unavailable"


def test_claude_cli_that_hangs_is_dropped_after_its_timeout(tmp_path: Path) -> None:
    hang = tmp_path / "claude"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    teacher = ClaudeCliTeacher(ClaudeCliTeacherConfig(command=str(hang), timeout_s=0.5), SubprocessRunner())
    report, _ = ask(teacher, [teacher.payload(request())] * 3)
    assert report.stopped.reason == "timeout" and "within 0.5 s" in str(report.stopped)
    assert [o.attempts for o in report.outcomes] == [1, 0, 0]


# ---- the Anthropic Messages API, through the SDK --------------------------------------------------


def test_anthropic_sdk_speaks_the_messages_api(server: ChatServer) -> None:
    teacher = AnthropicTeacher(AnthropicTeacherConfig(model="claude-test", base_url=server.url, reply_max_tokens=64),
                               environ={"ANTHROPIC_API_KEY": "sk-ant-test-key"})
    assert teacher.loopback
    payload = teacher.payload(TeacherRequest(SYSTEM, TOOL_CONTEXT, TOOLS))
    reply = teacher.send(payload)

    assert reply.text == "Teacher: Thanks! Remind me to take an umbrella tomorrow"
    assert (reply.input_tokens, reply.output_tokens, reply.truncated) == (11, 7, False)
    (got,) = server.received
    assert got.path == "/v1/messages"
    # the key as the SDK sends it (older versions: x-api-key; newer: a bearer token), and the API version
    assert "sk-ant-test-key" in (got.headers.get("x-api-key"), got.headers.get("authorization", "").removeprefix("Bearer "))
    assert got.headers["anthropic-version"]
    assert got.body == payload["body"]
    assert got.body["system"] == SYSTEM and got.body["max_tokens"] == 64 and got.body["model"] == "claude-test"
    assert got.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What's the weather in Almaty?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_00001", "name": "get_weather",
                                           "input": {"city": "Almaty"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_00001", "content": "sunny, 21°C"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It's sunny, 21°C."}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks! Remind me to take an umbrella tomorrow"}]},
    ]
    assert got.body["tools"] == [{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}]


def test_anthropic_429_then_200_is_retried_once_by_us_not_by_the_sdk(server: ChatServer) -> None:
    server.script = [429]
    teacher = AnthropicTeacher(AnthropicTeacherConfig(model="m", base_url=server.url), environ={"ANTHROPIC_API_KEY": "k"})
    report, sleeps = ask(teacher, [teacher.payload(request())])
    assert report.outcomes[0].reply.text == "Teacher: What's my cat's name?"
    assert len(server.received) == 2 and report.requests == 2 and sleeps == [0.5]
    assert report.stopped is None and report.usage.input_tokens == 11


def test_anthropic_garbage_overload_and_missing_key(server: ChatServer) -> None:
    teacher = AnthropicTeacher(AnthropicTeacherConfig(model="m", base_url=server.url, retries=1),
                               environ={"ANTHROPIC_API_KEY": "k"})
    server.script = ["garbage", "empty"]
    report, _ = ask(teacher, [teacher.payload(request())] * 3)
    assert [o.error.reason if o.error else o.reply.text for o in report.outcomes] == [
        "garbage", "", "Teacher: What's my cat's name?"]
    assert report.stopped is None

    server.script = [529, 529, 529]
    report, sleeps = ask(teacher, [teacher.payload(request())], retries=1)
    assert report.stopped.reason == "server_error" and "529" in str(report.stopped) and "after 2 tries" in str(report.stopped)
    assert sleeps == [0.5]

    keyless = AnthropicTeacher(AnthropicTeacherConfig(model="m", base_url=server.url), environ={})
    n = len(server.received)
    with pytest.raises(TeacherError, match=r"\$ANTHROPIC_API_KEY, which is not set"):
        keyless.send(keyless.payload(request()))
    assert len(server.received) == n  # nothing was sent


# ---- OpenAI-compatible endpoints --------------------------------------------------------------


def test_openai_sends_the_conversation_as_it_was_with_the_key_from_the_environment(server: ChatServer) -> None:
    cfg = OpenAITeacherConfig(base_url=server.url + "/v1", model="gpt-test", api_key_env="MY_TEACHER_KEY",
                              reply_max_tokens=32, temperature=0.2)
    teacher = OpenAITeacher(cfg, environ={"MY_TEACHER_KEY": "sk-test"})
    payload = teacher.payload(TeacherRequest(SYSTEM, TOOL_CONTEXT, TOOLS))
    assert payload["url"] == server.url + "/v1/chat/completions" and "sk-test" not in json.dumps(payload)
    assert teacher.send(payload).text == "Teacher: Thanks! Remind me to take an umbrella tomorrow"
    (got,) = server.received
    assert got.headers["authorization"] == "Bearer sk-test"
    assert got.body == {"model": "gpt-test", "messages": [{"role": "system", "content": SYSTEM}, *TOOL_CONTEXT],
                        "max_tokens": 32, "tools": list(TOOLS), "temperature": 0.2}


def test_openai_hang_429_garbage_and_caps(server: ChatServer) -> None:
    teacher = OpenAITeacher(OpenAITeacherConfig(base_url=server.url + "/v1", model="m", timeout_s=0.5))
    p = teacher.payload(request())

    server.script = ["hang"]
    report, _ = ask(teacher, [p, p, p])
    assert report.stopped.reason == "timeout" and [o.attempts for o in report.outcomes] == [1, 0, 0]

    server.script = [429, 503]
    report, sleeps = ask(teacher, [p, p])
    assert [o.attempts for o in report.outcomes] == [3, 1] and all(o.reply for o in report.outcomes)
    assert sleeps == [0.5, 1.0]  # doubling back-off (the server's Retry-After: 0 is shorter)

    server.script = ["garbage"]
    report, _ = ask(teacher, [p, p])
    assert report.outcomes[0].error.reason == "garbage" and report.outcomes[1].reply is not None

    report, _ = ask(teacher, [p, p, p], max_requests=2)
    assert [o.attempts for o in report.outcomes] == [1, 1, 0] and report.stopped.reason == "capped"
    report, _ = ask(teacher, [p, p, p], max_tokens=30)  # 18 tokens per answer: the third is over the cap
    assert [o.attempts for o in report.outcomes] == [1, 1, 0] and "30 tokens" in str(report.stopped)
    report, _ = ask(teacher, [p] * 6, concurrency=3, max_requests=4)
    assert sum(o.attempts for o in report.outcomes) == report.requests == 4


def test_openai_refusals_and_unreachable_servers_drop_the_teacher(server: ChatServer) -> None:
    teacher = OpenAITeacher(OpenAITeacherConfig(base_url=server.url + "/v1", model="m"))
    server.script = [401]
    report, _ = ask(teacher, [teacher.payload(request())] * 2)
    assert report.stopped.reason == "unavailable" and "401" in str(report.stopped)

    from server_fixtures import free_port

    gone = OpenAITeacher(OpenAITeacherConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m"))
    with pytest.raises(TeacherError) as e:
        gone.send(gone.payload(request()))
    assert e.value.reason == "unavailable"
    remote = OpenAITeacher(OpenAITeacherConfig(base_url="https://api.openai.com/v1", model="m"))
    assert not remote.loopback and OpenAITeacher(OpenAITeacherConfig(base_url="http://[::1]:8080/v1", model="m")).loopback


# ---- the config -------------------------------------------------------------------------------


def test_teacher_section_is_off_by_default_and_checked_per_kind(tmp_path: Path) -> None:
    from nightlora.cli.wiring import build_teacher
    from nightlora.config import load_config
    from nightlora.errors import ConfigError

    default = load_config(None, environ={})
    assert (default.teacher.kind, default.teacher.enabled, default.teacher.focus) == ("claude-cli", False, "negatives")
    assert build_teacher(default) is None

    path = tmp_path / "c.toml"
    path.write_text('[teacher]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\ncommand = "claude"\nfocus = "some"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert "teacher.model: Field required" in str(e.value) and "teacher.command: unknown key" in str(e.value)
    assert "teacher.focus:" in str(e.value)

    path.write_text('[teacher]\nkind = "anthropic"\nmodel = "claude-x"\n')
    cfg = load_config(path, environ={"NIGHTLORA_TEACHER__ENABLED": "true", "NIGHTLORA_TEACHER__COUNT": "3"})
    teacher = build_teacher(cfg)
    assert (teacher.kind, teacher.model, cfg.teacher.count, teacher.loopback) == ("anthropic", "claude-x", 3, False)

    path.write_text('[teacher]\nkind = "openai"\nenabled = true\nbase_url = "https://api.example.com/v1"\n'
                    'model = "m"\nloopback_unredacted = true\n')
    from nightlora.teachers.distill import check_privacy

    remote = load_config(path, environ={})
    with pytest.raises(ConfigError, match="only for a teacher on this machine"):
        check_privacy(build_teacher(remote), remote.teacher)


def test_cache_survives_a_cut_last_line_and_is_owner_only(tmp_path: Path) -> None:
    from nightlora.teachers.base import TeacherReply
    from nightlora.teachers.cache import ReplyCache

    path = tmp_path / "teacher" / "cache.jsonl"
    cache = ReplyCache(path)
    cache.put("a", "openai:m", TeacherReply("first", 3, 4))
    cache.put("a", "openai:m", TeacherReply("second", 3, 4, truncated=True))
    cache.put("b", "openai:m", TeacherReply("other"))
    with open(path, "a") as f:
        f.write('{"key": "c", "teacher": "openai:m", "te')  # a kill mid-write
    again = ReplyCache(path)
    assert len(again) == 2 and again.get("a").reply == TeacherReply("second", 3, 4, truncated=True)
    assert again.get("c") is None
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert again.clear() == 2 and not path.exists() and len(ReplyCache(path)) == 0
