"""Timestamps as the records want them."""

from __future__ import annotations

from datetime import datetime


def now_local() -> str:
    # The Hanni app writes local time with its offset (chrono's to_rfc3339); so do we.
    return datetime.now().astimezone().isoformat(timespec="seconds")
