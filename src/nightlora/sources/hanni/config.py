"""``[source] kind = "hanni"``: where the Hanni app keeps its data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar, Literal

import platformdirs
from pydantic import Field, field_validator

from nightlora.config_section import Section, expand


# What the app sends its model (desktop/src/js/chat.js); its lite mode then keeps only the last
# 8 of them, 500 characters each (chat.rs CHAT_LITE), which the stored rows do not record.
HISTORY_WINDOW = 20


def default_data_dir() -> Path:
    """Where Hanni keeps its data: Application Support on macOS, the user data dir elsewhere."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Hanni"
    return Path(platformdirs.user_data_dir("Hanni", appauthor=False))


class HanniSourceConfig(Section):
    # The app's own old nightly job (scripts/com.hanni.nightly-train.plist in its repository):
    # `nightlora schedule install` offers to disable it.
    old_agents: ClassVar[tuple[str, ...]] = ("com.hanni.nightly-train",)

    kind: Literal["hanni"] = "hanni"
    data_dir: Path = Field(default_factory=default_data_dir)
    db: Path = Path("hanni.db")
    system_prompt: Path = Path("system_prompt.txt")
    # The tool's own files (runs, adapter store, state db, lock, status file).
    state_dir: Path = Path("nightlora")
    # The app sends the model only its last 20 messages (chat.js: history.slice(-20)), with its
    # system prompt: training contexts are cut the same way.  0 = the whole conversation.
    history_window: int | None = Field(HISTORY_WINDOW, ge=0)
    # Proactive messages (the app writing first) answer no user turn: context only, unless true.
    proactive_targets: bool = False

    @field_validator("history_window")
    @classmethod
    def _zero_is_all(cls, v: int | None) -> int | None:
        return v or None

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
