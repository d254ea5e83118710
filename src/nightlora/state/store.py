"""The adapter store: one folder per trained adapter, and a `current` pointer to the live one.

    <state>/adapters/
        v0001/  adapters.safetensors  adapter_config.json  nightlora.json  version.json  [peft/]
        v0002/  peft/  nightlora.json  version.json
        current -> v0002

A version holds the adapter in each format the targets need, side by side: mlx_lm's
files at the top (so ``mlx_lm server --adapter-path <store>/current`` reads them) and
PEFT's in ``peft/`` (transformers, vLLM).  Which formats a version has is read from
its files (``Version.formats``).

A version folder appears only complete (built under a temp name, then renamed);
versions are never modified except for their ``version.json`` (eval score, a
rejection note).  ``current`` is a relative symlink replaced atomically, so the
server's ``--adapter-path <store>/adapters/current`` always names a whole
version.  No ``current`` link means "serve the base model without an adapter".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from nightlora.errors import StoreError
from nightlora.paths import AdapterFiles, StatePaths
from nightlora.platform.fsutil import atomic_dir, atomic_write_json, private_dir, read_regular_bytes, remove_stale_temp

TRAINER_META = AdapterFiles.TRAINER_META
VERSION_META = AdapterFiles.VERSION_META
CURRENT = "current"
FORMATS = ("mlx", "peft")


def format_dir(version_dir: Path, fmt: str) -> Path:
    """Where a version folder keeps the files of ``fmt``."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown adapter format {fmt!r} (known: {', '.join(FORMATS)})")
    return Path(version_dir) if fmt == "mlx" else Path(version_dir) / AdapterFiles.PEFT_SUBDIR


def formats_in(version_dir: Path) -> tuple[str, ...]:
    return tuple(f for f in FORMATS if AdapterFiles.format_of(format_dir(version_dir, f)) == f)
_NAME = re.compile(r"^v(\d{4,})$")


def version_name(number: int) -> str:
    return f"v{number:04d}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Version:
    name: str
    number: int
    path: Path
    created_at: str | None = None
    base_model: str | None = None
    data_counts: dict[str, int] = field(default_factory=dict)
    eval_score: float | None = None
    run_id: int | None = None
    # Why a deploy refused this version (its server failed the health check); None = never refused.
    rejected: str | None = None
    trainer: dict[str, Any] = field(default_factory=dict)

    @property
    def formats(self) -> tuple[str, ...]:
        return formats_in(self.path)

    def adapter_dir(self, fmt: str) -> Path:
        """The folder of this version's adapter in ``fmt`` (StoreError if the version lacks it)."""
        if fmt not in self.formats:
            files = ", ".join(AdapterFiles.REQUIRED[fmt]) if fmt in AdapterFiles.REQUIRED else fmt
            raise StoreError(f"{self.name} has no {fmt} adapter ({files}; adapters load only from safetensors files; "
                             f"it has: {', '.join(self.formats) or 'none'})")
        return format_dir(self.path, fmt)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["formats"] = list(self.formats)
        return d


def _read_json(path: Path) -> dict[str, Any]:
    try:  # a regular file only (a FIFO would block), of a sensible size
        data = json.loads(read_regular_bytes(path, 1 << 24).decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not UTF-8, not JSON, nested too deep
        return {}
    return data if isinstance(data, dict) else {}


def _adapter_config(version_dir: Path) -> dict[str, Any]:
    for fmt in FORMATS:
        cfg = _read_json(format_dir(version_dir, fmt) / AdapterFiles.MLX_CONFIG)
        if cfg:
            return cfg
    return {}


def _base_model_of(trainer: Mapping[str, Any], adapter_config: Mapping[str, Any]) -> str | None:
    for source in (trainer, trainer.get("config") or {}, adapter_config):
        if isinstance(source, Mapping):
            for key in ("base_model", "model"):
                if isinstance(source.get(key), str):
                    return source[key]
    return None


class AdapterStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> "AdapterStore":
        return cls(StatePaths(Path(state_dir)).adapters)

    @property
    def current_link(self) -> Path:
        """The stable path the server is pointed at (``--adapter-path``)."""
        return self.root / CURRENT

    def stable_path(self, fmt: str) -> Path:
        """The live version's ``fmt`` folder through ``current``: a path that never changes across nights."""
        return format_dir(self.current_link, fmt)

    # -- reading -----------------------------------------------------------------------------

    def _load(self, path: Path) -> Version:
        m = _NAME.match(path.name)
        assert m, path
        meta = _read_json(path / VERSION_META)
        trainer = _read_json(path / TRAINER_META)
        # version.json is ours, but a hand edit or another tool may leave any JSON in it: wrong types are unknown values
        counts = meta.get("data_counts") if isinstance(meta.get("data_counts"), dict) else {}
        score = meta.get("eval_score")
        text = lambda key: meta.get(key) if isinstance(meta.get(key), str) else None  # noqa: E731
        return Version(
            name=path.name,
            number=int(m.group(1)),
            path=path,
            created_at=text("created_at"),
            base_model=text("base_model") or _base_model_of(trainer, _adapter_config(path)),
            data_counts={str(k): v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)},
            eval_score=float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
            run_id=meta.get("run_id") if isinstance(meta.get("run_id"), int) else None,
            rejected=meta.get("rejected") if isinstance(meta.get("rejected"), str) else None,
            trainer=trainer,
        )

    def list(self) -> list[Version]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _NAME.match(p.name) and p.is_dir() and not p.is_symlink()]
        return sorted((self._load(p) for p in found), key=lambda v: v.number)

    def get(self, ref: str | int) -> Version:
        """A version by name (``v0003``, ``v3``) or number (3, ``"3"``)."""
        text = str(ref).strip().lower()
        m = re.fullmatch(r"v?(\d+)", text)
        if m:
            name = version_name(int(m.group(1)))
        else:
            raise StoreError(f"not a version name: {ref!r} (expected e.g. v0003 or 3)")
        path = self.root / name
        if not path.is_dir():
            known = ", ".join(v.name for v in self.list()) or "none"
            raise StoreError(f"no adapter version {name} in {self.root} (known: {known})")
        return self._load(path)

    def current(self) -> Version | None:
        """The live version, or None (no pointer, or a pointer to a missing folder)."""
        link = self.current_link
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        if not _NAME.match(name) or not (self.root / name).is_dir():
            return None
        return self._load(self.root / name)

    def previous(self) -> Version | None:
        """The newest version older than the live one that no deploy has refused."""
        cur = self.current()
        if cur is None:
            return None
        older = [v for v in self.list() if v.number < cur.number and v.rejected is None]
        return older[-1] if older else None

    # -- writing -----------------------------------------------------------------------------

    def add(
        self,
        adapter_dir: Path,
        *,
        base_model: str | None = None,
        data_counts: Mapping[str, int] | None = None,
        eval_score: float | None = None,
        run_id: int | None = None,
        created_at: str | None = None,
    ) -> Version:
        """Move a finished adapter folder in as the next version; ``adapter_dir`` is consumed.

        ``adapter_dir`` is laid out as a version (mlx_lm files at the top, PEFT files in
        ``peft/``) with at least one format complete.  The version appears whole or not at
        all: its files are gathered under a temp name and the folder is renamed into place last.
        """
        src = Path(adapter_dir)
        if not src.is_dir():
            raise StoreError(f"adapter folder not found: {src}")
        if not formats_in(src):
            # Name what is missing of the format that is partly there (mlx_lm's when neither is).
            fmt = "peft" if (src / AdapterFiles.PEFT_SUBDIR / AdapterFiles.PEFT_WEIGHTS).is_file() else "mlx"
            folder = format_dir(src, fmt)
            missing = [f for f in AdapterFiles.REQUIRED[fmt] if not (folder / f).is_file()]
            raise StoreError(f"{src} is not a {'PEFT' if fmt == 'peft' else 'mlx_lm'} adapter: missing {', '.join(missing)}")
        if self.root.resolve() in src.resolve().parents:
            raise StoreError(f"{src} is already inside the adapter store")
        private_dir(self.root)
        remove_stale_temp(self.root)
        numbers = [v.number for v in self.list()]
        name = version_name(max(numbers, default=0) + 1)
        final = self.root / name
        trainer = _read_json(src / TRAINER_META)
        meta = {
            "version": name,
            "created_at": created_at or utc_now(),
            "base_model": base_model or _base_model_of(trainer, _adapter_config(src)),
            "data_counts": dict(data_counts or {}),
            "eval_score": eval_score,
            "run_id": run_id,
            "rejected": None,
        }
        with atomic_dir(final) as tmp:
            for child in src.iterdir():
                shutil.move(str(child), str(tmp / child.name))
            atomic_write_json(tmp / VERSION_META, meta)
        with contextlib.suppress(OSError):
            src.rmdir()
        return self._load(final)

    def update(self, version: Version | str, **fields: Any) -> Version:
        """Change what the store records about a version (eval_score, rejected, ...)."""
        v = self.get(version.name if isinstance(version, Version) else version)
        allowed = {"eval_score", "rejected", "data_counts", "base_model", "run_id"}
        bad = set(fields) - allowed
        if bad:
            raise StoreError(f"cannot update {', '.join(sorted(bad))} of a version")
        meta = _read_json(v.path / VERSION_META) or {"version": v.name}
        meta.update(fields)
        atomic_write_json(v.path / VERSION_META, meta)
        return self._load(v.path)

    def reject(self, version: Version | str, reason: str) -> Version:
        """Remember that serving this version failed, so it is never a rollback target."""
        return self.update(version, rejected=" ".join(reason.split()) or "rejected")

    def set_current(self, version: Version | str | None) -> Version | None:
        """Point ``current`` at ``version`` (None: no adapter), atomically."""
        link = self.current_link
        if version is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            return None
        v = self.get(version.name if isinstance(version, Version) else version)
        private_dir(self.root)
        # A new link under a temp name, renamed over the old one: readers see old or new, never none.
        tmp = Path(tempfile.mktemp(dir=self.root, prefix=f".{CURRENT}.", suffix=".tmp"))
        os.symlink(v.name, tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return v

    def prune(self, keep: int) -> list[Version]:
        """Delete all but the newest ``keep`` versions; the live one and its previous always stay."""
        if keep < 1:
            raise StoreError(f"keep must be at least 1, not {keep}")
        versions = self.list()
        protected = {v.name for v in (self.current(), self.previous()) if v is not None}
        keep_names = {v.name for v in versions[-keep:]} | protected
        removed = []
        for v in versions:
            if v.name in keep_names:
                continue
            # Renamed first so a half-deleted folder is never listed as a version.
            doomed = self.root / f".{v.name}.deleting.tmp"
            os.replace(v.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(v)
        return removed
