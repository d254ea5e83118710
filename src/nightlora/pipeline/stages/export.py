"""B3.2-B3.3, the dataset: every conversation of the source as training examples.

Reads: the source (one snapshot, read-only), the system prompt, the consumed cursor.
Writes: <run>/data/ (train/valid/test.jsonl, preferences.jsonl, manifest.json).
"""

from __future__ import annotations

from nightlora.dataset.writer import export_dataset
from nightlora.errors import ExportError
from nightlora.pipeline.night import Night


def run(night: Night) -> str | None:
    source, data = night.deps.source, night.cfg.data
    prompt, warnings = source.system_prompt()
    for w in warnings:
        night.log(f"warning: {w}")
    exported = export_dataset(source, night.run.data, prompt, consumed=night.consumed,
                              min_messages=data.min_messages, split=tuple(data.split), warnings=warnings)
    night.result.export = exported
    if exported.counts.get("train", 0) == 0:
        raise ExportError("the export produced no training examples")
    return None
