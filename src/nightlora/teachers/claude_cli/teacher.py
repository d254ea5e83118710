"""The `claude` CLI (Claude Code) as a teacher, invoked as the original did:

    claude -p PROMPT --output-format text        (+ --model MODEL when teacher.model is set)

one prompt per call, 60 s timeout, 1 s pause between calls (teacher.timeout_s, teacher.pause_s),
through the CommandRunner (argv only: the prompt is one argument, never shell text).  The
prompt is the assistant's system prompt and the conversation so far as text
(teachers/transcript.py); the reply is the command's standard output.  The CLI talks to
Anthropic's servers, so this teacher is never loopback: it always gets redacted text.
"""

from __future__ import annotations

from typing import Any

from nightlora.errors import TeacherError
from nightlora.platform.runner import CommandRunner
from nightlora.teachers.base import TeacherReply, TeacherRequest
from nightlora.teachers.claude_cli.config import ClaudeCliTeacherConfig
from nightlora.teachers.transcript import single_prompt

# Words in the CLI's error output that mean "try again later" rather than "this will not work".
_TRANSIENT = ("overloaded", "529", "500 ", "502", "503", "504", "internal server error", "rate limit", "429")


class ClaudeCliTeacher:
    kind = "claude-cli"
    loopback = False

    def __init__(self, cfg: ClaudeCliTeacherConfig, runner: CommandRunner):
        self.cfg, self.runner = cfg, runner
        self.model = cfg.model or "default"

    def payload(self, request: TeacherRequest) -> dict[str, Any]:
        argv = [self.cfg.command, "-p", single_prompt(request), "--output-format", "text"]
        if self.cfg.model:
            argv += ["--model", self.cfg.model]
        return {"argv": argv}

    def send(self, payload: dict[str, Any]) -> TeacherReply:
        argv = payload["argv"]
        if len(argv[2].encode("utf-8")) > self.cfg.max_prompt_bytes:
            raise TeacherError(f"the prompt is longer than teacher.max_prompt_bytes ({self.cfg.max_prompt_bytes})",
                               "garbage")
        r = self.runner.run(argv, timeout=self.cfg.timeout_s)
        if r.returncode == 124:
            raise TeacherError(f"`{self.cfg.command}` did not answer within {self.cfg.timeout_s:g} s", "timeout")
        if r.returncode in (126, 127):
            raise TeacherError(f"`{self.cfg.command}` cannot be run: {r.stderr.strip()}", "unavailable")
        if r.returncode != 0:
            said = (r.stderr.strip() or r.stdout.strip()).splitlines()
            tail = said[-1][:200] if said else ""
            transient = any(w in tail.lower() for w in _TRANSIENT)
            raise TeacherError(f"`{self.cfg.command} -p` exited {r.returncode}" + (f": {tail}" if tail else ""),
                               "server_error" if transient else "unavailable")
        return TeacherReply(r.stdout.strip())  # printing nothing is an answer too, and not a usable one


def build(cfg: ClaudeCliTeacherConfig, *, runner: CommandRunner, environ: Any = None) -> ClaudeCliTeacher:
    return ClaudeCliTeacher(cfg, runner)
