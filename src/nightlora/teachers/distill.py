"""B3.4 over one export folder: select prompts, redact them, ask the teacher (or the cache), add the replies.

    select (select.py) -> request per prompt: the system prompt and the context as the assistant saw it
    -> redact (redact.py; unless a loopback teacher is allowed the text as it is) -> cache key
    -> cached? the reply : ask (ask.py: caps, retries, pause) -> restore the placeholders
    -> distilled examples into train.jsonl, chosen replies into preferences.jsonl, the manifest
       (dataset/distilled.py)

A teacher that times out, fails or reaches a cap is reported in the result (and the
manifest) and the rest goes on: whatever it answered before is kept, and the night trains
on the user's data with or without it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from nightlora.dataset.distilled import DISTILL, Distilled, iter_records, system_prompt_of, write_distilled
from nightlora.dataset.manifest import read_manifest
from nightlora.errors import ConfigError, TeacherError
from nightlora.paths import PREFERENCES_STEM
from nightlora.platform.fsutil import append_private_line
from nightlora.teachers.ask import Job, ask_all
from nightlora.teachers.base import Teacher, TeacherReply, TeacherRequest, cache_key, teacher_name
from nightlora.teachers.cache import ReplyCache
from nightlora.teachers.redact import Redactor
from nightlora.teachers.select import Prompt, select_prompts
from nightlora.teachers.settings import TeacherSettings
from nightlora.teachers.synthetic import SYNTHETIC_PROMPTS


@dataclass
class DistillResult:
    teacher: str
    focus: str
    status: str = "done"          # done | dry_run | no_prompts
    message: str = ""
    looked_at: int = 0            # candidate contexts read
    selected: int = 0             # prompts selected (real + synthetic)
    synthetic: int = 0            # of which synthetic (the real ones ran out)
    cached: int = 0               # answered from the cache, not asked
    asked: int = 0                # sent to the teacher (at least one request)
    requests: int = 0             # requests sent, retries included
    answered: int = 0             # new replies tonight
    unusable: int = 0             # answers not used: empty, a placeholder never sent, not an answer at all
    not_asked: int = 0            # left unasked: the teacher was dropped or a cap was reached
    truncated: int = 0            # replies cut at teacher.reply_max_tokens (kept)
    examples: int = 0             # distilled examples added to train
    chosen: int = 0               # preference records whose chosen is the teacher's
    duplicates: int = 0           # distilled examples identical to one already there (left out)
    redacted: bool = True         # whether what was sent was redacted
    redactions: dict[str, int] = field(default_factory=dict)  # placeholders put in, by type
    tokens: dict[str, int] | None = None  # reported usage tonight (None: the teacher reports none)
    skipped: dict[str, int] = field(default_factory=dict)     # contexts not selected, by reason
    teacher_failure: str | None = None    # why the teacher was dropped for the night
    payloads: list[dict[str, Any]] | None = None  # dry run: exactly what would be sent
    manifest: dict[str, Any] | None = field(default=None, repr=False)

    def section(self) -> dict[str, Any]:
        """What the manifest records (dataset/distilled.py adds examples, duplicates, chosen)."""
        keep = ("teacher", "focus", "status", "looked_at", "selected", "synthetic", "cached", "asked", "requests",
                "answered", "unusable", "not_asked", "truncated", "redacted", "redactions", "tokens", "skipped",
                "teacher_failure")
        return {k: getattr(self, k) for k in keep} | {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "manifest"}
        if self.payloads is None:
            d.pop("payloads")
        return d

    def summary(self) -> str:
        parts = [f"{self.selected} prompts selected" + (f" ({self.synthetic} synthetic)" if self.synthetic else ""),
                 f"{self.cached} from the cache", f"{self.asked} asked ({self.requests} requests)"]
        if self.status != "dry_run":
            parts.append(f"{self.examples} examples added to train, {self.chosen} preference replies chosen")
        if self.redactions:
            parts.append("redacted " + ", ".join(f"{k} {v}" for k, v in sorted(self.redactions.items())))
        line = f"{self.teacher}: " + "; ".join(parts)
        if self.teacher_failure:
            line += f"; teacher dropped for the night: {self.teacher_failure} ({self.not_asked} not asked)"
        return line


@dataclass
class _Item:
    prompt: Prompt
    redactor: Redactor | None
    key: str
    payload: dict[str, Any]


def check_privacy(teacher: Teacher, settings: TeacherSettings) -> None:
    if settings.loopback_unredacted and not teacher.loopback:
        raise ConfigError("teacher.loopback_unredacted is only for a teacher on this machine "
                          f"(a base_url on 127.0.0.1, ::1 or localhost); {teacher_name(teacher)} is not")


def _prepare(teacher: Teacher, prompt: Prompt, settings: TeacherSettings, redact: bool) -> _Item:
    request = TeacherRequest(prompt.system, prompt.messages, prompt.tools)
    redactor = None
    if redact:
        redactor = Redactor(tuple(settings.phone_regions))
        request = TeacherRequest(redactor.text(request.system), tuple(redactor.value(m) for m in request.messages),
                                 request.tools)
    return _Item(prompt, redactor, cache_key(teacher, request), teacher.payload(request))


LOG_MAX_BYTES = 16 << 20  # then the log moves to requests.jsonl.1 (replacing the one before)


def _requests_logger(path: Path | None, teacher: Teacher) -> Callable[..., None]:
    name = teacher_name(teacher)
    if path is not None and path.is_file() and path.stat().st_size > LOG_MAX_BYTES:
        path.replace(path.with_name(path.name + ".1"))

    def on_request(job: Job, attempt: int, outcome: str, seconds: float, reply: TeacherReply | None) -> None:
        if path is None:
            return
        entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "teacher": name, "key": job.key,
                 "attempt": attempt, "outcome": outcome, "seconds": round(seconds, 3),
                 "input_tokens": reply.input_tokens if reply else None,
                 "output_tokens": reply.output_tokens if reply else None, "sent": job.payload}
        append_private_line(path, json.dumps(entry, ensure_ascii=False))

    return on_request


def _example(prompt: Prompt, text: str, name: str) -> dict[str, Any]:
    record: dict[str, Any] = {"messages": [{"role": "system", "content": prompt.system}, *prompt.messages,
                                           {"role": "assistant", "content": text}]}
    if prompt.tools:
        record["tools"] = list(prompt.tools)
    record["meta"] = {"conversation_id": prompt.conversation_id, "message_index": prompt.message_index,
                      "rating": None, "source": DISTILL, "split": "train", "tool_call": False,
                      "teacher": name, "context_of": prompt.origin}
    return record


def distill_dataset(
    dataset_dir: Path,
    teacher: Teacher,
    settings: TeacherSettings,
    *,
    cache: ReplyCache,
    requests_log: Path | None,
    log: Callable[[str], None] = lambda msg: None,
    sleep: Callable[[float], None] = time.sleep,
    dry_run: bool = False,
) -> DistillResult:
    """Distill into the export at ``dataset_dir``; raises only for the folder (ExportError) or the config."""
    dataset_dir = Path(dataset_dir)
    read_manifest(dataset_dir)  # an export folder, or a clear error
    check_privacy(teacher, settings)
    name = teacher_name(teacher)
    result = DistillResult(name, settings.focus)
    system = system_prompt_of(dataset_dir)
    synthetic = SYNTHETIC_PROMPTS if settings.synthetic is None else tuple(settings.synthetic)
    sel = select_prompts(iter_records(dataset_dir, PREFERENCES_STEM), iter_records(dataset_dir, "train"),
                         focus=settings.focus, count=settings.count, system=system, synthetic=synthetic)
    result.looked_at, result.skipped = sel.looked_at, dict(sorted(sel.skipped.items()))
    result.selected, result.synthetic = len(sel.prompts), sel.synthetic

    result.redacted = redact = not (teacher.loopback and settings.loopback_unredacted)
    items = [_prepare(teacher, p, settings, redact) for p in sel.prompts]
    redactions: Counter = Counter()
    for item in items:
        if item.redactor is not None:
            redactions.update(item.redactor.counts)
    result.redactions = dict(sorted(redactions.items()))

    replies: dict[str, TeacherReply] = {}
    for item in items:
        hit = cache.get(item.key)
        if hit is not None:
            replies[item.key] = hit.reply
    result.cached = sum(item.key in replies for item in items)
    jobs = list({item.key: Job(item.key, item.payload) for item in items if item.key not in replies}.values())

    if dry_run:
        result.status, result.payloads = "dry_run", [job.payload for job in jobs]
        result.message = f"dry run: {len(jobs)} requests would be sent, {result.cached} prompts answered from the cache"
        return result

    if jobs:
        report = ask_all(teacher, jobs, max_requests=settings.max_requests, max_tokens=settings.max_tokens,
                         retries=settings.retries, backoff_s=settings.backoff_s, concurrency=settings.concurrency,
                         pause_s=settings.pause_s, sleep=sleep, on_request=_requests_logger(requests_log, teacher))
        result.requests = report.requests
        result.tokens = ({"input": report.usage.input_tokens, "output": report.usage.output_tokens}
                         if report.usage.reported else None)
        for out in report.outcomes:
            result.asked += out.attempts > 0
            if out.reply is not None:
                cache.put(out.job.key, name, out.reply)
                replies[out.job.key] = out.reply
                result.answered += 1
            elif out.attempts == 0:
                result.not_asked += 1
            elif out.error is not None and out.error.reason == "garbage":
                result.unusable += 1
                log(f"teacher answer not used: {out.error}")
        if report.stopped is not None:
            result.teacher_failure = str(report.stopped)
            log(f"teacher {name} dropped for the night: {report.stopped}")

    distilled = Distilled()
    for item in items:
        reply = replies.get(item.key)
        if reply is None:
            continue
        try:
            text = item.redactor.restore(reply.text) if item.redactor is not None else reply.text
        except ValueError as e:
            text, why = "", str(e)
        else:
            why = "the answer is empty"
        if not text.strip():
            result.unusable += 1
            log(f"teacher answer not used: {why}")
            continue
        result.truncated += reply.truncated
        distilled.examples.append(_example(item.prompt, text, name))
        if item.prompt.origin == "preference":
            key = (item.prompt.conversation_id, item.prompt.message_index)
            distilled.chosen[key] = ({"role": "assistant", "content": text}, name)

    if not items:
        result.status = "no_prompts"
    written = write_distilled(dataset_dir, distilled, result.section())
    result.examples, result.duplicates, result.chosen = written.examples, written.duplicates, written.chosen
    result.manifest = written.manifest
    result.message = result.summary()
    return result
