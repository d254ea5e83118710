"""Export a source's rated conversations to a fine-tuning dataset, streaming, from one snapshot.

Writes to the output folder, each file atomically and owner-only:

* ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``: mlx_lm chat examples
  (``{"messages": [...], "tools"?: [...], "meta": {...}}``).  A split with no example
  gets no file, because mlx_lm's loader fails on an empty file but accepts a missing one.
* ``preferences.jsonl``: rated-down replies as preference records.
* ``manifest.json``, written last (dataset/manifest.py): counts, skipped rows by reason, the
  feedback seen (what the commit stage marks consumed), hashes and timings.

The per-conversation rules live in dataset/examples.py; this module only reads and writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from nightlora.dataset.dedupe import SeenDigests
from nightlora.dataset.encode import Converted, convert
from nightlora.dataset.manifest import MANIFEST_FORMAT, write_manifest
from nightlora.dataset.system_prompt import SystemPrompt
from nightlora.errors import ExportError
from nightlora.paths import DATASET_FILES, MANIFEST, PREFERENCES_STEM, SPLITS
from nightlora.platform.fsutil import atomic_open, private_dir
from nightlora.sources.base import Source

WRITE_BUFFER_BYTES = 1 << 20


class _JsonlFile:
    """One output file, opened when its first lines are flushed, hashed as it is written.

    Lines are written and hashed a megabyte at a time: a write call and a hash update per
    line took twice as long.  ``flush`` must end a successful export.
    """

    def __init__(self, stack: contextlib.ExitStack, path: Path):
        self.path = path
        self._stack = stack
        self._f: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.lines = 0
        self.bytes = 0

    def open(self) -> None:
        if self._f is None:
            self._f = self._stack.enter_context(atomic_open(self.path, "wb", encoding=None))

    def write(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_bytes += len(line)
        self.lines += 1
        if self._pending_bytes >= WRITE_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        self.open()
        data = b"".join(self._pending)
        self._f.write(data)  # type: ignore[union-attr]
        self._hash.update(data)
        self.bytes += len(data)
        self._pending.clear()
        self._pending_bytes = 0

    @property
    def written(self) -> bool:
        return self._f is not None

    def summary(self) -> dict[str, Any]:
        return {"sha256": self._hash.hexdigest(), "bytes": self.bytes, "lines": self.lines}


class _Dataset:
    """The output files being written, and the tallies the manifest reports."""

    def __init__(self, stack: contextlib.ExitStack, out_dir: Path):
        self._seen = {kind: stack.enter_context(SeenDigests()) for kind in ("examples", "preferences")}
        self.files = {stem: _JsonlFile(stack, out_dir / f"{stem}.jsonl") for stem in (*SPLITS, PREFERENCES_STEM)}
        self.files[PREFERENCES_STEM].open()  # always written, even empty: no loader fails on it
        self.skipped: dict[str, list[int]] = defaultdict(list)
        self.conversations = {"total": 0, "exported": 0, "too_short": 0, "skipped": 0, "rated": 0}
        self.duplicates = {"examples": 0, "preferences": 0}
        self.cases: Counter[str] = Counter()

    def add(self, conv: Converted) -> None:
        tally = self.conversations
        tally["total"] += 1
        if conv.too_short:
            tally["too_short"] += 1
            return
        if conv.skip_reason:
            self.skipped[conv.skip_reason].append(conv.id)
            tally["skipped"] += 1
            return
        for reason in dict.fromkeys(conv.feedback_problems):
            self.skipped[reason].append(conv.id)
        tally["exported"] += 1
        tally["rated"] += conv.rated
        self.cases.update(conv.cases)
        for stem, digest, line in conv.lines:
            kind = "preferences" if stem == PREFERENCES_STEM else "examples"
            if self._seen[kind].add(digest):
                self.files[stem].write(line)
            else:
                self.duplicates[kind] += 1

    def flush(self) -> None:
        for f in self.files.values():
            f.flush()

    def remove_unwritten(self) -> None:
        """A split with no example has no file; a previous night's would contradict the manifest."""
        for f in self.files.values():
            if not f.written:
                f.path.unlink(missing_ok=True)


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


def _refuse_overwriting_the_source(source: Source, out_dir: Path) -> None:
    """The app's database named like one of the export's files, in the output folder: never replace it."""
    db = Path(source.location)
    for name in DATASET_FILES:
        target = out_dir / name
        try:
            same = target.exists() and db.exists() and os.path.samefile(target, db)
        except OSError:
            same = False
        if same or target.absolute() == db.absolute():
            raise ExportError(f"the export would overwrite the database {db} (it is {target}): "
                              "choose another --out folder")


def export_dataset(
    source: Source,
    out_dir: Path,
    prompt: SystemPrompt,
    *,
    consumed: frozenset[str] | set[str] = frozenset(),
    min_messages: int = 4,
    split: tuple[int, int, int] = (80, 10, 10),
    warnings: list[str] | None = None,
) -> ExportResult:
    """Export every conversation of ``source`` with at least ``min_messages`` messages to ``out_dir``.

    Never writes to the source.  Reads one snapshot and streams its rows: memory holds
    one conversation and the write buffers at a time, however large the database.
    ``consumed``: the feedback ids nightlora already used (left out of the counts and of ``seen``).
    """
    t0 = time.monotonic()
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    warnings = list(warnings or [])
    out_dir = Path(out_dir)
    _refuse_overwriting_the_source(source, out_dir)
    try:
        if not out_dir.exists():
            private_dir(out_dir)
        # Temp files of a killed export; only ours: the folder may be one the user also uses.
        for name in DATASET_FILES:
            for leftover in out_dir.glob(f".{name}.*.tmp"):
                leftover.unlink(missing_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output folder {out_dir}: {e.strerror}") from None

    window = getattr(source, "history_window", None)
    with source.snapshot(consumed) as snap:
        gate = snap.counts(0)
        seen = snap.seen()
        orphans = snap.orphans()
        elsewhere = len(snap.marked_elsewhere())
        t_snapshot = time.monotonic()
        try:
            # From now until the new manifest is in place the folder is no complete dataset: an
            # earlier export's manifest must never describe files this one replaces.
            (out_dir / MANIFEST).unlink(missing_ok=True)
            return _write(snap, out_dir, prompt, min_messages, split, warnings, window,
                          gate, seen, orphans, elsewhere, t0, t_snapshot, created_at, source)
        except BaseException:
            # A full disk, SIGTERM, a source error half-way: each file is renamed into place only
            # when complete, not all at once; leave no mix of new and old files to be read.
            for name in DATASET_FILES:
                with contextlib.suppress(OSError):
                    (out_dir / name).unlink(missing_ok=True)
            raise


def _write(snap: Any, out_dir: Path, prompt: SystemPrompt, min_messages: int, split: tuple[int, int, int],
           warnings: list[str], window: int | None, gate: Any, seen: Any, orphans: int, elsewhere: int,
           t0: float, t_snapshot: float, created_at: str, source: Source) -> ExportResult:
    try:
        with contextlib.ExitStack() as stack:
            dataset = _Dataset(stack, out_dir)
            for conv in snap.conversations():
                dataset.add(convert(conv, prompt.text, split, min_messages, window))
            dataset.cases.update(snap.cases())
            dataset.flush()
        dataset.remove_unwritten()
    except OSError as e:
        raise ExportError(f"cannot write the dataset to {out_dir}: {e.strerror or e}") from None
    t_done = time.monotonic()

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created_at": created_at,
        "source": {"kind": source.kind, "key": source.key},
        "db_path": source.location,
        "min_messages": min_messages,
        "split": list(split),
        "counts": {stem: f.lines for stem, f in dataset.files.items()},
        "conversations": dataset.conversations,
        "duplicates": dataset.duplicates,
        "skipped": dict(sorted(dataset.skipped.items())),
        # Turns left out or handled by a special rule, by reason (docs/export.md lists them).
        "cases": dict(sorted(dataset.cases.items())),
        "history_window": window,
        "feedback": {
            "high_water": seen.high_water,
            "positive": gate.positive,
            "negative": gate.negative,
            "total": gate.total,
            "orphans": orphans,
            "marked_elsewhere": elsewhere,
            "seen": seen.to_dict(),
        },
        "system_prompt_sha256": prompt.sha256,
        "system_prompt": {"path": str(prompt.path) if prompt.path else None, "builtin": prompt.builtin},
        "files": {f.path.name: f.summary() for f in dataset.files.values() if f.written},
        "timings": {
            "snapshot_s": round(t_snapshot - t0, 3),
            "export_s": round(t_done - t_snapshot, 3),
            "total_s": round(time.monotonic() - t0, 3),
        },
        "warnings": warnings,
    }
    path = write_manifest(out_dir, manifest)
    return ExportResult(out_dir, path, manifest, warnings)
