"""Export Hanni's rated conversations to a fine-tuning dataset, streaming, from one snapshot.

Writes to the output folder, each file atomically and owner-only:

* ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``: mlx_lm chat examples
  (``{"messages": [...], "tools"?: [...], "meta": {...}}``).  A split with no example
  gets no file, because mlx_lm's loader fails on an empty file but accepts a missing one.
* ``preferences.jsonl``: rated-down replies as preference records.
* ``manifest.json``, written last: counts, skipped rows by reason, the feedback seen
  (for ``hanni_db.mark_exported_from_manifest``), hashes and timings.

The per-conversation rules live in ``export_examples``; this module only reads and writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from nightlora.check import count_feedback
from nightlora.errors import ExportError, SourceError
from nightlora.export_dedupe import SeenDigests
from nightlora.export_examples import conversation_examples
from nightlora.export_messages import BadConversation, Message, parse_messages
from nightlora.export_split import SPLITS, split_of
from nightlora.fsutil import atomic_open, atomic_write_json, private_dir, remove_stale_temp
from nightlora.hanni_db import iter_conversations, open_snapshot, orphan_feedback_count, seen_feedback

MANIFEST = "manifest.json"
PREFERENCES = "preferences.jsonl"
MANIFEST_FORMAT = 1

FALLBACK_SYSTEM_PROMPT = (
    "You are Hanni, a friendly personal assistant running on the user's own computer. "
    "Answer briefly and in the language the user writes in."
)


@dataclass(frozen=True)
class SystemPrompt:
    text: str
    path: Path | None
    builtin: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_system_prompt(path: Path | None) -> tuple[SystemPrompt, list[str]]:
    """The prompt in ``path`` (surrounding whitespace removed), or the built-in one with a warning."""
    if path is None:
        return SystemPrompt(FALLBACK_SYSTEM_PROMPT, None, True), ["no system prompt file given; using the built-in prompt"]
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return SystemPrompt(FALLBACK_SYSTEM_PROMPT, path, True), [
            f"system prompt {path} not found; using the built-in prompt"
        ]
    except UnicodeDecodeError:
        raise SourceError(f"system prompt {path} is not UTF-8 text") from None
    except OSError as e:
        raise SourceError(f"cannot read system prompt {path}: {e.strerror}") from None
    if not text:
        return SystemPrompt(FALLBACK_SYSTEM_PROMPT, path, True), [f"system prompt {path} is empty; using the built-in prompt"]
    return SystemPrompt(text, path, False), []


class _JsonlFile:
    """One output file, opened on its first line, hashed as it is written."""

    def __init__(self, stack: contextlib.ExitStack, path: Path):
        self.path = path
        self._stack = stack
        self._f: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self.lines = 0
        self.bytes = 0

    def open(self) -> None:
        if self._f is None:
            self._f = self._stack.enter_context(atomic_open(self.path, "wb", encoding=None))

    def write(self, data: bytes) -> None:
        self.open()
        self._f.write(data)  # type: ignore[union-attr]
        self._hash.update(data)
        self.lines += 1
        self.bytes += len(data)

    @property
    def written(self) -> bool:
        return self._f is not None

    def summary(self) -> dict[str, Any]:
        return {"sha256": self._hash.hexdigest(), "bytes": self.bytes, "lines": self.lines}


# One encoder for every line: json.dumps with options builds a new encoder per call, which
# cost more than the encoding itself at hundreds of thousands of small objects.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# The record fields that hold chat messages (examples: messages; preferences: the rest).
_MESSAGE_LISTS = frozenset({"messages", "prompt", "chosen", "rejected"})


class _Encoder:
    """JSON lines for one conversation's records, each message encoded once.

    A conversation's examples share their context's message objects, so caching each
    message's UTF-8 JSON by object turns the quadratic cost of repeating contexts into
    byte joins.  The cache keeps the objects alive (ids stay unique) and is emptied for
    each conversation.
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Message, bytes]] = {}

    def clear(self) -> None:
        self._cache.clear()

    def _messages(self, messages: list[Message]) -> bytes:
        parts = []
        for m in messages:
            hit = self._cache.get(id(m))
            if hit is None:
                hit = self._cache[id(m)] = (m, _dumps(m).encode("utf-8"))
            parts.append(hit[1])
        return b"[" + b",".join(parts) + b"]"

    def line(self, record: dict[str, Any], seen: SeenDigests) -> bytes | None:
        """The record as one JSON line, or None if an identical record (meta aside) was written before."""
        fields = []
        for key, value in record.items():
            if key == "meta":
                continue
            if key in _MESSAGE_LISTS and value is not None:
                encoded = self._messages(value)
            else:
                encoded = _dumps(value).encode("utf-8")
            fields.append(b'"' + key.encode() + b'":' + encoded)
        body = b"{" + b",".join(fields)
        if not seen.add(body):
            return None
        return body + b',"meta":' + _dumps(record["meta"]).encode("utf-8") + b"}\n"


@dataclass
class ExportResult:
    out_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]

    @property
    def skipped(self) -> dict[str, list[int]]:
        return self.manifest["skipped"]

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "manifest_path": str(self.manifest_path), **self.manifest}


def export_dataset(
    db_path: Path,
    out_dir: Path,
    system_prompt_path: Path | None,
    *,
    min_messages: int = 4,
    split: tuple[int, int, int] = (80, 10, 10),
) -> ExportResult:
    """Export every conversation of ``db_path`` with at least ``min_messages`` messages to ``out_dir``.

    Never writes to the database.  Reads one snapshot, streams its rows, and holds no more
    than one conversation's examples in memory.
    """
    t0 = time.monotonic()
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prompt, warnings = load_system_prompt(system_prompt_path)
    out_dir = Path(out_dir)
    try:
        if not out_dir.exists():
            private_dir(out_dir)
        remove_stale_temp(out_dir)
    except OSError as e:
        raise ExportError(f"cannot create output folder {out_dir}: {e.strerror}") from None

    skipped: dict[str, list[int]] = defaultdict(list)
    stats = {"total": 0, "exported": 0, "too_short": 0, "skipped": 0, "rated": 0}
    duplicates = {"examples": 0, "preferences": 0}
    with open_snapshot(db_path) as conn:
        gate = count_feedback(conn, 0)
        seen = seen_feedback(conn)
        orphans = orphan_feedback_count(conn)
        t_snapshot = time.monotonic()
        try:
            with contextlib.ExitStack() as stack:
                examples_seen = stack.enter_context(SeenDigests())
                preferences_seen = stack.enter_context(SeenDigests())
                files = {name: _JsonlFile(stack, out_dir / f"{name}.jsonl") for name in SPLITS}
                preferences = _JsonlFile(stack, out_dir / PREFERENCES)
                preferences.open()  # always written, even empty: nothing loads it by convention
                encoder = _Encoder()
                for row in iter_conversations(conn):
                    stats["total"] += 1
                    part = split_of(row.id, split)
                    try:
                        conv = conversation_examples(
                            row.id, parse_messages(row.messages), row.feedback, prompt.text,
                            split=part, min_messages=min_messages,
                        )
                    except BadConversation as e:
                        skipped[e.reason].append(row.id)
                        stats["skipped"] += 1
                        continue
                    if conv.too_short:
                        stats["too_short"] += 1
                        continue
                    if conv.skip_reason:
                        skipped[conv.skip_reason].append(row.id)
                        stats["skipped"] += 1
                        continue
                    for reason in dict.fromkeys(conv.feedback_problems):
                        skipped[reason].append(row.id)
                    stats["exported"] += 1
                    stats["rated"] += row.rated
                    encoder.clear()
                    for example in conv.examples:
                        if (line := encoder.line(example, examples_seen)) is None:
                            duplicates["examples"] += 1
                        else:
                            files[part].write(line)
                    for record in conv.preferences:
                        if (line := encoder.line(record, preferences_seen)) is None:
                            duplicates["preferences"] += 1
                        else:
                            preferences.write(line)
            for f in files.values():
                if not f.written:
                    f.path.unlink(missing_ok=True)  # a previous night's file would contradict the manifest
        except OSError as e:
            raise ExportError(f"cannot write the dataset to {out_dir}: {e.strerror or e}") from None
    t_done = time.monotonic()

    written = {f.path.name: f.summary() for f in (*files.values(), preferences) if f.written}
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created_at": created_at,
        "db_path": str(Path(db_path).absolute()),
        "min_messages": min_messages,
        "split": list(split),
        "counts": {**{name: files[name].lines for name in SPLITS}, "preferences": preferences.lines},
        "conversations": stats,
        "duplicates": duplicates,
        "skipped": dict(sorted(skipped.items())),
        "feedback": {
            "high_water": seen.high_water,
            "positive": gate.positive,
            "negative": gate.negative,
            "total": gate.total,
            "orphans": orphans,
            "seen": seen.to_dict(),
        },
        "system_prompt_sha256": prompt.sha256,
        "system_prompt": {"path": str(prompt.path) if prompt.path else None, "builtin": prompt.builtin},
        "files": written,
        "timings": {
            "snapshot_s": round(t_snapshot - t0, 3),
            "export_s": round(t_done - t_snapshot, 3),
            "total_s": round(time.monotonic() - t0, 3),
        },
        "warnings": warnings,
    }
    manifest_path = out_dir / MANIFEST
    try:
        atomic_write_json(manifest_path, manifest)
    except OSError as e:
        raise ExportError(f"cannot write {manifest_path}: {e.strerror}") from None
    return ExportResult(out_dir, manifest_path, manifest, warnings)
