"""B3.4, distillation: a stronger teacher's replies for the prompts that matter (teacher.enabled).

Reads: <run>/data/ (the export), the teacher's cache in the state dir.
Writes: <run>/data/train.jsonl (distilled examples, train split only), preferences.jsonl (the
teacher's reply as ``chosen``), manifest.json (its ``distill`` section); the cache and the
requests log (owner-only).  A teacher that fails, times out or reaches its cap is reported
and the night goes on without it (teachers/distill.py).
"""

from __future__ import annotations

from nightlora.pipeline.night import Night


def run(night: Night) -> str | None:
    teacher = night.deps.teacher
    if teacher is None:
        night.log("no teacher (teacher.enabled = false): nothing to distill")
        return None
    # Imported here: the redaction libraries load only on nights that use a teacher.
    from nightlora.teachers.cache import ReplyCache
    from nightlora.teachers.distill import distill_dataset

    result = distill_dataset(night.run.data, teacher, night.cfg.teacher, cache=ReplyCache(night.state.teacher_cache),
                             requests_log=night.state.teacher_log, log=night.log)
    night.result.distill = result
    night.log(result.summary())
    if result.manifest is not None and night.result.export is not None:
        night.result.export.manifest = result.manifest  # the train stage sizes its run from these counts
    return None
