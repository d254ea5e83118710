"""Where an Open WebUI install keeps ``webui.db`` (for ``nightlora init --preset openwebui``).

Open WebUI's own rules (open_webui/env.py): ``DATABASE_URL`` when set (``sqlite:///path``;
anything else is another database server); else ``$DATA_DIR/webui.db``; else, for ``pip``
installs started with ``open-webui serve``, ``data/`` inside the installed ``open_webui``
package, and for the Docker image ``/app/backend/data`` (a volume; from the host, its mount
point as ``docker volume inspect`` tells).  The environment, the file system and the docker
command all come in as arguments.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from nightlora.platform.runner import CommandRunner
from nightlora.sources.openwebui.config import DOCKER_DATA_DIR

DOCKER_VOLUME = "open-webui"  # the volume name Open WebUI's README uses (-v open-webui:/app/backend/data)
# Installed packages: tools (uv, pipx) and virtual environments people keep in their home.
_PACKAGE_GLOBS = (
    ".local/share/uv/tools/open-webui/lib/python3*/site-packages/open_webui/data/webui.db",
    ".local/pipx/venvs/open-webui/lib/python3*/site-packages/open_webui/data/webui.db",
    ".local/share/pipx/venvs/open-webui/lib/python3*/site-packages/open_webui/data/webui.db",
    "*/lib/python3*/site-packages/open_webui/data/webui.db",
    "*/*/lib/python3*/site-packages/open_webui/data/webui.db",
    ".local/lib/python3*/site-packages/open_webui/data/webui.db",
)


@dataclass(frozen=True)
class Found:
    path: Path
    how: str  # where the rule came from, for people


def _sqlite_url_path(url: str) -> Path | None:
    for prefix in ("sqlite:///", "sqlite+sqlcipher:///"):  # sqlite:////abs/webui.db, sqlite:///relative.db
        if url.startswith(prefix):
            return Path(url[len(prefix):].split("?", 1)[0])
    return None


def find_webui_db(
    environ: Mapping[str, str],
    home: Path,
    runner: CommandRunner | None = None,
    *,
    site_packages: list[Path] | None = None,
    docker_data_dir: Path = DOCKER_DATA_DIR,
    glob_fn: Callable[[str], list[str]] = glob.glob,
) -> tuple[list[Found], str | None]:
    """Every existing webui.db the rules point at, best first, and a note when Open WebUI uses
    another database server (``DATABASE_URL`` not SQLite)."""
    found: list[Found] = []
    note = None

    def add(path: Path, how: str) -> None:
        path = Path(path)
        if path.is_file() and all(f.path.resolve() != path.resolve() for f in found):
            found.append(Found(path, how))

    url = environ.get("DATABASE_URL", "")
    if url:
        db = _sqlite_url_path(url)
        if db is None:
            note = ("DATABASE_URL points Open WebUI at another database server; nightlora reads SQLite only "
                    "(see the README: copy the tables to a SQLite file)")
        else:
            add(db, "DATABASE_URL")
    if environ.get("DATA_DIR"):
        add(Path(environ["DATA_DIR"]) / "webui.db", "$DATA_DIR")
    for sp in site_packages or []:
        add(Path(sp) / "open_webui" / "data" / "webui.db", "the open_webui package")
    for pattern in _PACKAGE_GLOBS:
        for hit in sorted(glob_fn(str(home / pattern))):
            add(Path(hit), "an installed open_webui package")
    add(docker_data_dir / "webui.db", "Open WebUI's Docker image")
    if runner is not None:
        r = runner.run(["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", DOCKER_VOLUME], timeout=30)
        if r.ok and r.stdout.strip():
            add(Path(r.stdout.strip()) / "webui.db", f"the Docker volume {DOCKER_VOLUME}")
    return found, note


def current_site_packages() -> list[Path]:
    """Where this interpreter would import open_webui from (Open WebUI installed beside nightlora)."""
    import importlib.util

    spec = importlib.util.find_spec("open_webui")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(os.fspath(p)).parent for p in spec.submodule_search_locations]
