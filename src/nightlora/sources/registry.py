"""The sources nightlora reads feedback from: ``[source] kind = ...``."""

from __future__ import annotations

from nightlora.kinds import Kind
from nightlora.sources.hanni.config import HanniSourceConfig
from nightlora.sources.openwebui.config import OpenWebUISourceConfig

SOURCES: dict[str, Kind] = {
    "hanni": Kind(HanniSourceConfig, "nightlora.sources.hanni.source:HanniSource"),
    "openwebui": Kind(OpenWebUISourceConfig, "nightlora.sources.openwebui.source:OpenWebUISource"),
}
