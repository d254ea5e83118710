"""Registries of kinds (sources, targets, trainers, ...): a dict from a name to its config and factory.

A kind is a folder (``sources/hanni/``, ``targets/mlx_lm/``) with a config section class
and a factory; adding one is that folder plus one line in the registry dict.  The
factory is named as ``"module:attribute"`` and imported only when a kind is built, so
that `nightlora --help` never imports a kind's dependencies.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Mapping, Union

from pydantic import Discriminator, Tag

from nightlora.config_section import Section


@dataclass(frozen=True)
class Kind:
    config: type[Section]
    factory: str  # "package.module:callable"

    def load(self) -> Callable[..., Any]:
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)


def kind_of(registry: Mapping[str, Kind], name: str, what: str) -> Kind:
    try:
        return registry[name]
    except KeyError:
        from nightlora.errors import ConfigError

        raise ConfigError(f"unknown {what} kind {name!r} (known: {', '.join(registry)})") from None


def config_union(registry: Mapping[str, Kind], default: str) -> Any:
    """The pydantic type of a section whose ``kind`` key picks one of the registry's config classes.

    A section without ``kind`` is the ``default`` kind; an unknown kind is reported like any bad value.
    """

    def pick(value: Any) -> str:
        kind = value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", default)
        return kind if isinstance(kind, str) and kind in registry else "?"  # kind = [] is a bad value, not a crash

    members = tuple(Annotated[k.config, Tag(name)] for name, k in registry.items())
    return Annotated[Union[members], Discriminator(pick, custom_error_type="unknown_kind",  # type: ignore[valid-type]
                                                   custom_error_message=f"kind must be one of: {', '.join(registry)}")]
