"""What every config section shares: strict keys, typed values, and the few value rules used twice.

Kept apart from config.py so that each kind's section (sources/hanni/config.py,
targets/mlx_lm/config.py, ...) can live in its own folder without importing the
module that assembles them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


def _has_nul(value: Any) -> bool:
    if isinstance(value, (str, Path)):
        return "\x00" in str(value)
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


class Section(BaseModel):
    # inf and nan are no number of epochs, steps, seconds or megabytes
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_bytes(cls, value: Any) -> Any:
        # No path or argument can hold one (the OS would refuse it later, far from the config's key).
        if _has_nul(value):
            raise ValueError("must not contain a NUL byte")
        return value


def expand(p: Path | str) -> Path:
    return Path(os.path.expanduser(str(p)))


def parse_hh_mm(text: str) -> tuple[int, int]:
    """``"3:05"`` -> (3, 5); ValueError unless it is a time of day."""
    try:
        hh, mm = str(text).split(":")
        h, m = int(hh), int(mm)
    except ValueError:
        raise ValueError("must be HH:MM") from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError("must be HH:MM between 00:00 and 23:59")
    return h, m


def toml_str(text: str | Path) -> str:
    """A TOML basic string: JSON's escapes (\\" \\\\ \\n \\uXXXX) are all TOML escapes too."""
    return json.dumps(str(text), ensure_ascii=False)
