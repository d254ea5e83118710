"""The teachers' replies, kept so that a prompt is asked once, not every night.

One JSON line per reply in an owner-only file (``<state>/teacher/cache.jsonl``), keyed by a
hash of (teacher, model, system prompt, context) as sent -- that is, after redaction, so
the cache holds placeholders, never the identifiers they stand for.  Lines are appended
as replies arrive: a night killed halfway keeps what it paid for.  A truncated last line
(a kill mid-write) is skipped; a later line for the same key wins.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from nightlora.platform.fsutil import append_private_line
from nightlora.teachers.base import TeacherReply


@dataclass(frozen=True)
class CachedReply:
    key: str
    teacher: str
    reply: TeacherReply
    at: str


class ReplyCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, CachedReply] = {}
        self._load()

    def _load(self) -> None:
        try:
            f = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for line in f:
                try:
                    d = json.loads(line)
                    reply = TeacherReply(str(d["text"]), d.get("input_tokens"), d.get("output_tokens"),
                                         bool(d.get("truncated", False)))
                    self._entries[str(d["key"])] = CachedReply(str(d["key"]), str(d["teacher"]), reply, str(d["at"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill, or not ours

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedReply | None:
        return self._entries.get(key)

    def put(self, key: str, teacher: str, reply: TeacherReply) -> None:
        entry = CachedReply(key, teacher, reply, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with self._lock:
            append_private_line(self.path, json.dumps({"key": key, "teacher": teacher, "at": entry.at, **asdict(reply)},
                                                      ensure_ascii=False))
            self._entries[key] = entry

    def clear(self) -> int:
        """Forget every reply (they will be asked again); how many there were."""
        with self._lock:
            n = len(self._entries)
            self.path.unlink(missing_ok=True)
            self._entries.clear()
            return n
