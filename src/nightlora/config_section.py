"""What every config section shares: strict keys, typed values, and the few value rules used twice.

Kept apart from config.py so that each kind's section (sources/hanni/config.py,
targets/mlx_lm/config.py, ...) can live in its own folder without importing the
module that assembles them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


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
