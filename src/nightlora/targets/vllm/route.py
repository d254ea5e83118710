"""Which vLLM model the stable name (``hanni``) means now: the route file the proxy reads.

The switch is one atomic rename of this small JSON file, so a request sees either
the old version or the new one, never a mix; the proxy re-reads it when its
identity (inode, size, mtime) changes, which costs one ``stat`` per request.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nightlora.platform.fsutil import atomic_write_json

# Requests whose JSON body names a model; other paths pass through untouched.
MODEL_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
                         "/tokenize", "/detokenize"})


@dataclass(frozen=True)
class Route:
    stable: str        # the name the app asks for ("hanni")
    base: str          # vLLM's name for the base model (its --model or --served-model-name)
    live: str | None   # the loaded LoRA the stable name means ("hanni-v0007"); None: the base model

    @property
    def upstream_model(self) -> str:
        return self.live or self.base


def lora_name(stable: str, version: str) -> str:
    """Each version under its own name: vLLM's tracker advises never reusing a LoRA name (#48312, #42125)."""
    return f"{stable}-{version}"


def version_of(stable: str, name: str | None) -> str | None:
    """``hanni-v0007`` -> ``v0007``; None for the base model or a name that is not one of ours."""
    prefix = stable + "-"
    return name[len(prefix):] if name and name.startswith(prefix) else None


def write_route(path: Path, route: Route) -> None:
    atomic_write_json(path, asdict(route))


def read_route(path: Path) -> Route | None:
    try:
        data = json.loads(Path(path).read_text())
        return Route(str(data["stable"]), str(data["base"]), data.get("live") or None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rewrite(body: Any, route: Route) -> tuple[Any, str | None]:
    """The request body with the stable name replaced by what it means now, and that name.

    Returns the body unchanged (and None) when it does not ask for the stable name: a request
    for ``hanni-v0007`` or the base model by its own name goes through as it is."""
    if isinstance(body, dict) and body.get("model") == route.stable:
        return {**body, "model": route.upstream_model}, route.upstream_model
    return body, None


class RouteFile:
    """The route file, re-read only when it was replaced."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._key: tuple[int, int, int] | None = None
        self._route: Route | None = None

    def get(self) -> Route | None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._key, self._route = None, None
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._key:
            self._route, self._key = read_route(self.path), key
        return self._route
