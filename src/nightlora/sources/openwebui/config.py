"""``[source] kind = "openwebui"``: Open WebUI's ``webui.db``, and which of its ratings to learn from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

import platformdirs
from pydantic import Field, field_validator

from nightlora.config_section import Section, expand

# Where Open WebUI's Docker image keeps its data (a volume mounted there).
DOCKER_DATA_DIR = Path("/app/backend/data")


def default_db() -> Path:
    """Open WebUI's own rule (open_webui/env.py): ``$DATA_DIR/webui.db``; the Docker image's folder otherwise."""
    data_dir = os.environ.get("DATA_DIR")
    return Path(data_dir) / "webui.db" if data_dir else DOCKER_DATA_DIR / "webui.db"


def default_data_dir() -> Path:
    """nightlora's own files for this source: never inside Open WebUI's data folder (often a root-owned volume)."""
    return Path(platformdirs.user_data_dir("nightlora", appauthor=False)) / "openwebui"


class OpenWebUISourceConfig(Section):
    old_agents: ClassVar[tuple[str, ...]] = ()

    kind: Literal["openwebui"]
    # webui.db (nightlora init --preset openwebui finds it); read-only, never written.
    db: Path = Field(default_factory=default_db)
    # nightlora's own folder for this source; relative paths below are inside it.
    data_dir: Path = Field(default_factory=default_data_dir)
    state_dir: Path = Path("state")  # runs, adapter store, state db, lock, status.json
    # The system prompt of chats that had none of their own (Open WebUI sends the chat's, else the
    # user's settings one); unset: such examples have no system message, as the model saw them.
    system_prompt: Path | None = None
    # Whose ratings to learn from (Open WebUI user ids; empty: every user's).
    user_ids: list[str] = Field(default_factory=list)
    # Which model's replies (the model ids Open WebUI shows; empty: all).  Train one adapter per
    # base model: replies by other models stay in the context, never targets.
    model_ids: list[str] = Field(default_factory=list)
    # Arena ratings (blind comparisons): off by default.
    arena: bool = False
    # Open WebUI sends the whole path by default: 0 = all.
    history_window: int | None = Field(None, ge=0)

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
    def system_prompt_path(self) -> Path | None:
        return self.resolve(self.system_prompt) if self.system_prompt is not None else None

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state_dir)

    @property
    def probe_path(self) -> Path:
        """Held-out questions about the user, if someone put them beside webui.db (``demo-db`` does)."""
        return self.db_path.parent / "probe.jsonl"
