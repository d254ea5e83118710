"""The sources nightlora reads feedback from: ``[source] kind = ...``."""

from __future__ import annotations

from nightlora.kinds import Kind
from nightlora.sources.hanni.config import HanniSourceConfig

SOURCES: dict[str, Kind] = {
    "hanni": Kind(HanniSourceConfig, "nightlora.sources.hanni.source:HanniSource"),
}
