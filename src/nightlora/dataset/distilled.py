"""A teacher's replies added to an export folder (the distill stage's only writes).

* Distilled examples are appended to ``train.jsonl`` -- never valid or test -- with
  ``meta.source = "distill"``; one identical (messages and tools) to an example of any
  split is left out, so an example still never appears twice.
* A preference record the teacher answered gets the teacher's reply as ``chosen``
  (``meta.chosen_from = "distill"``, ``meta.teacher``); what the export had chosen (null, or
  the reply to the user's re-ask) is kept in ``meta.export_chosen``/``export_chosen_from``/
  ``export_chosen_index``.  A thumbs-up alternative is never replaced (teachers/select.py
  never asks about it), and the user's own examples are never touched.
* The manifest is written last, with the new hashes and counts and a ``distill`` section.

Running it again on the same folder first takes out what an earlier run added (its lines,
its chosen replies), so the folder always holds one distillation's work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from nightlora.dataset.encode import encode_record
from nightlora.dataset.manifest import read_manifest, record_distill
from nightlora.errors import ExportError
from nightlora.paths import PREFERENCES_STEM, SPLITS
from nightlora.platform.fsutil import atomic_open

DISTILL = "distill"
_EXPORT_CHOSEN = ("export_chosen", "export_chosen_from", "export_chosen_index")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    except OSError as e:
        raise ExportError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line if line.endswith(b"\n") else line + b"\n"


def _parse(path: Path, lineno: int, line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ExportError(f"{path}:{lineno}: not a JSON record of an export")
    return record


def iter_records(dataset_dir: Path, stem: str) -> Iterator[dict[str, Any]]:
    """The records of ``<stem>.jsonl`` (a split or "preferences"), streamed; none when the file is missing."""
    path = Path(dataset_dir) / f"{stem}.jsonl"
    for lineno, line in _lines(path):
        yield _parse(path, lineno, line)


def system_prompt_of(dataset_dir: Path) -> str | None:
    """The system prompt the export's records start with (every record has the same one)."""
    for stem, key in (("train", "messages"), (PREFERENCES_STEM, "prompt")):
        for record in iter_records(dataset_dir, stem):
            first = (record.get(key) or [{}])[0]
            if isinstance(first, dict) and first.get("role") == "system":
                return str(first.get("content") or "")
            break
    return None


@dataclass
class Distilled:
    examples: list[dict[str, Any]] = field(default_factory=list)
    # (conversation_id, message_index) of a preference record -> (the teacher's reply message, teacher name)
    chosen: dict[tuple[Any, Any], tuple[dict[str, Any], str]] = field(default_factory=dict)


@dataclass
class Written:
    manifest: dict[str, Any]
    examples: int     # distilled examples now in train.jsonl
    duplicates: int   # left out: identical to an example already there
    chosen: int       # preference records whose chosen is the teacher's


class _Hashing:
    def __init__(self, f: Any):
        self.f, self.sha, self.bytes, self.lines = f, hashlib.sha256(), 0, 0

    def write(self, line: bytes) -> None:
        self.f.write(line)
        self.sha.update(line)
        self.bytes += len(line)
        self.lines += 1

    def summary(self) -> dict[str, Any]:
        return {"sha256": self.sha.hexdigest(), "bytes": self.bytes, "lines": self.lines}


def _is_distilled(record: dict[str, Any]) -> bool:
    return (record.get("meta") or {}).get("source") == DISTILL


def _undo_chosen(record: dict[str, Any]) -> bool:
    """Put back what the export had chosen, if an earlier distillation replaced it."""
    meta = record.get("meta") or {}
    if meta.get("chosen_from") != DISTILL:
        return False
    record["chosen"] = meta.pop("export_chosen", None)
    meta["chosen_from"] = meta.pop("export_chosen_from", None)
    meta["chosen_index"] = meta.pop("export_chosen_index", None)
    meta.pop("teacher", None)
    return True


def _rewrite_train(dataset_dir: Path, new: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], int]:
    path = Path(dataset_dir) / "train.jsonl"
    try:
        with atomic_open(path, "wb", encoding=None) as f:
            out = _Hashing(f)
            for lineno, line in _lines(path):
                if b'"distill"' in line and _is_distilled(_parse(path, lineno, line)):
                    continue  # an earlier distillation's example
                out.write(line)
            for _, line in new:
                out.write(line)
        if out.lines == 0:
            path.unlink(missing_ok=True)  # mlx_lm's loader fails on an empty file, not on a missing one
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    return out.summary(), out.lines


def _rewrite_preferences(dataset_dir: Path, chosen: Distilled) -> tuple[dict[str, Any], int, int]:
    path = Path(dataset_dir) / f"{PREFERENCES_STEM}.jsonl"
    filled = 0
    try:
        with atomic_open(path, "wb", encoding=None) as f:
            out = _Hashing(f)
            for lineno, line in _lines(path):
                record = _parse(path, lineno, line)
                changed = _undo_chosen(record)
                meta = record.setdefault("meta", {})
                answer = chosen.chosen.get((meta.get("conversation_id"), meta.get("message_index")))
                if answer is not None:
                    message, teacher = answer
                    meta.update(export_chosen=record.get("chosen"), export_chosen_from=meta.get("chosen_from"),
                                export_chosen_index=meta.get("chosen_index"))
                    record["chosen"] = [message]
                    meta.update(chosen_from=DISTILL, chosen_index=None, teacher=teacher)
                    changed, filled = True, filled + 1
                out.write(encode_record(record)[1] if changed else line)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    return out.summary(), out.lines, filled


def write_distilled(dataset_dir: Path, distilled: Distilled, section: dict[str, Any]) -> Written:
    """Add ``distilled`` to the export folder and record it (``section``) in the manifest."""
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    new: dict[bytes, bytes] = {}
    for record in distilled.examples:
        digest, line = encode_record(record)
        new.setdefault(digest, line)
    duplicates = len(distilled.examples) - len(new)
    for split in SPLITS:  # an example identical to one of any split stays out
        path = dataset_dir / f"{split}.jsonl"
        for lineno, line in _lines(path):
            record = _parse(path, lineno, line)
            if not _is_distilled(record) and new.pop(encode_record(record)[0], None) is not None:
                duplicates += 1
    train, train_lines = _rewrite_train(dataset_dir, list(new.items()))
    prefs, pref_lines, filled = _rewrite_preferences(dataset_dir, distilled)
    files = {f"{PREFERENCES_STEM}.jsonl": prefs}
    if train_lines:
        files["train.jsonl"] = train
    manifest = record_distill(
        dataset_dir, manifest,
        files=files,
        counts={"train": train_lines, PREFERENCES_STEM: pref_lines},
        distill={**section, "examples": len(new), "duplicates": duplicates, "chosen": filled},
    )
    return Written(manifest, len(new), duplicates, filled)
