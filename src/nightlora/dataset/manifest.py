"""``manifest.json``, the record of one export: its only writer and its only reader.

Written last by the export (counts, skipped rows by reason, the feedback seen, hashes
and timings), and again by the distill stage (``record_distill``: the files it changed and
a ``distill`` section saying what the teacher added); read by the commit stage (which feedback to mark consumed), by the
trainers (which data an adapter saw) and by people.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nightlora.errors import ExportError
from nightlora.paths import MANIFEST
from nightlora.platform.fsutil import atomic_write_json
from nightlora.sources.base import SeenFeedback

MANIFEST_FORMAT = 1


def manifest_path(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / MANIFEST


def write_manifest(dataset_dir: Path, manifest: dict[str, Any]) -> Path:
    path = manifest_path(dataset_dir)
    try:
        atomic_write_json(path, manifest)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror}") from None
    return path


def record_distill(dataset_dir: Path, manifest: dict[str, Any], *, files: dict[str, dict[str, Any]],
                   counts: dict[str, int], distill: dict[str, Any]) -> dict[str, Any]:
    """Write the export's manifest again with what distillation changed: the new hashes and line
    counts of the files it rewrote, and its ``distill`` section.  Returns the new manifest."""
    updated = {**manifest, "counts": {**manifest.get("counts", {}), **counts},
               "files": {**manifest.get("files", {}), **files}, "distill": distill}
    write_manifest(dataset_dir, updated)
    return updated


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest (the file, or the dataset folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = manifest_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ExportError(f"cannot read manifest {path}: {e.strerror}") from None
    except ValueError as e:
        raise ExportError(f"{path} is not an export manifest: {e}") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path} is not an export manifest")
    return data


def read_seen(path: Path) -> SeenFeedback:
    """The feedback an export saw unconsumed (what a promoted night marks consumed)."""
    manifest = read_manifest(path)
    try:
        return SeenFeedback.from_dict(manifest["feedback"]["seen"])
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path} is not an export manifest: {e}") from None


def manifest_sha256(dataset_dir: Path) -> str | None:
    """Hash of the export's manifest.json: ties an adapter to the exact data it saw."""
    path = manifest_path(dataset_dir)
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def try_read_manifest(dataset_dir: Path) -> dict[str, Any] | None:
    """The manifest beside a dataset, or None when there is none (a hand-made dataset)."""
    path = manifest_path(dataset_dir)
    return read_manifest(path) if path.is_file() else None
