"""``[source] kind = "hanni"``: where the Hanni app keeps its data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field

from nightlora.config_section import Section, expand


def default_data_dir() -> Path:
    """Where Hanni keeps its data: Application Support on macOS, the user data dir elsewhere."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Hanni"
    return Path(platformdirs.user_data_dir("Hanni", appauthor=False))


class HanniSourceConfig(Section):
    kind: Literal["hanni"] = "hanni"
    data_dir: Path = Field(default_factory=default_data_dir)
    db: Path = Path("hanni.db")
    system_prompt: Path = Path("system_prompt.txt")
    # The tool's own files (runs, adapter store, state db, lock, status file).
    state_dir: Path = Path("nightlora")

    def resolve(self, p: Path) -> Path:
        p = expand(p)
        return p if p.is_absolute() else expand(self.data_dir) / p

    @property
    def db_path(self) -> Path:
        return self.resolve(self.db)

    @property
    def system_prompt_path(self) -> Path:
        return self.resolve(self.system_prompt)

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state_dir)

    @property
    def probe_path(self) -> Path:
        """Held-out questions about the user (``nightlora demo-db`` writes one beside the database)."""
        return self.db_path.parent / "probe.jsonl"
