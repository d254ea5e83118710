"""Reading the export's dataset folder (train/valid/test.jsonl). Backend-neutral: no torch, no mlx.

Each line is ``{"messages": [...], "tools"?: [...], "meta": {...}}`` and the last
message is the assistant turn to learn.  ``replay.jsonl``, when the train stage wrote one
(the base model's own answers to general prompts, evaluate/general.py), is trained with
the train split.
"""

from __future__ import annotations

import json
from pathlib import Path

from nightlora.errors import TrainError
from nightlora.paths import REPLAY, SPLITS


def _check_record(record: object, where: str) -> dict:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        raise TrainError(f"{where}: expected an object with a non-empty 'messages' list")
    last = record["messages"][-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise TrainError(f"{where}: the last message must be the assistant's (the target)")
    return record


def read_split(dataset_dir: Path, split: str) -> list[dict]:
    """The chats of one split; a missing valid/test file is an empty split, a missing train file an error."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise TrainError(f"dataset folder {dataset_dir} not found (run `nightlora export` first)")
    path = dataset_dir / (REPLAY if split == "replay" else f"{split}.jsonl")
    if not path.is_file():
        if split == "train":
            raise TrainError(f"{dataset_dir} has no train.jsonl: not a dataset written by `nightlora export`")
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            records.append(_check_record(record, f"{path}:{lineno}"))
    return records


def read_splits(dataset_dir: Path) -> dict[str, list[dict]]:
    """train (with replay.jsonl's examples after the user's), valid, test."""
    out = {split: read_split(dataset_dir, split) for split in SPLITS}
    out["train"] = out["train"] + read_split(dataset_dir, "replay")
    return out


def conversations(examples: list[dict]) -> int:
    """How many conversations the examples come from: what an epoch counts (each conversation's
    examples are trained in one sequence, train/merge.py); an example without one counts alone."""
    ids = set()
    alone = 0
    for e in examples:
        meta = e.get("meta") or {}
        if meta.get("conversation_id") is None:
            alone += 1
        else:
            ids.add((meta.get("source"), meta.get("split"), meta["conversation_id"]))
    return len(ids) + alone


def read_preferences(dataset_dir: Path) -> list[dict]:
    """preferences.jsonl (the export's rated-down replies); none when the file is missing."""
    from nightlora.paths import PREFERENCES

    path = Path(dataset_dir) / PREFERENCES
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), list) \
                    or not isinstance(record.get("rejected"), list):
                raise TrainError(f"{path}:{lineno}: expected a preference record (prompt, chosen, rejected)")
            out.append(record)
    return out
