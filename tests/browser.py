"""Headless Chromium (Debian's package) for checking pages as a person sees them."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: Path, screenshot: Path, *, width: int = 1280, height: int = 2400) -> str:
    """The page's DOM after it loaded (scripts and onload handlers run), and a screenshot of it."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed (`make setup` installs Debian's package)")
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        base = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return dom
