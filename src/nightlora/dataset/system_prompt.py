"""The system prompt every example starts with, and every question to the model is asked with.

One reader for the export, the evaluation and the probe: when the app's file is
missing or empty, all of them use the same built-in prompt (and say so).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from nightlora.errors import SourceError
from nightlora.platform.fsutil import read_regular_bytes

PROMPT_MAX_BYTES = 1 << 20  # a system prompt of a megabyte is not one (and would not fit a context)

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
        text = read_regular_bytes(path, PROMPT_MAX_BYTES).decode("utf-8").strip()
    except FileNotFoundError:
        return SystemPrompt(FALLBACK_SYSTEM_PROMPT, path, True), [
            f"system prompt {path} not found; using the built-in prompt"
        ]
    except UnicodeDecodeError:
        raise SourceError(f"system prompt {path} is not UTF-8 text") from None
    except OSError as e:  # a FIFO or a folder (refused, never read), no permission
        raise SourceError(f"cannot read system prompt {path}: {e.strerror}") from None
    if not text:
        return SystemPrompt(FALLBACK_SYSTEM_PROMPT, path, True), [f"system prompt {path} is empty; using the built-in prompt"]
    return SystemPrompt(text, path, False), []
