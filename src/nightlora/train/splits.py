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
    for msg in record["messages"]:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) \
                or not isinstance(msg.get("content", ""), (str, type(None))):
            raise TrainError(f"{where}: each message must be an object with a role and text content")
    try:  # a JSON escape can hold a lone surrogate, which no tokenizer takes
        json.dumps(record["messages"], ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise TrainError(f"{where}: text that is not valid Unicode (a lone surrogate)") from None
    return record


def _json_lines(path: Path):
    """(line number, parsed JSON) of each non-blank line; a bad line is a one-line TrainError naming it."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TrainError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise TrainError(f"{path}:{lineno}: not UTF-8 text") from None
            except RecursionError:
                raise TrainError(f"{path}:{lineno}: JSON nested too deeply") from None
            except json.JSONDecodeError as e:
                raise TrainError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None


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
    return [_check_record(record, f"{path}:{lineno}") for lineno, record in _json_lines(path)]


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
    for lineno, record in _json_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), list) \
                or not isinstance(record.get("rejected"), list):
            raise TrainError(f"{path}:{lineno}: expected a preference record (prompt, chosen, rejected)")
        out.append(record)
    return out


# Chat-template tokens around each message (role markers, separators): generous for ChatML,
# Llama 3 and Qwen templates, whose per-message overhead is 4-6 tokens.
TEMPLATE_TOKENS_PER_MESSAGE = 16


def longest_tokens_bound(examples: list[dict], max_seq_length: int) -> int:
    """An upper bound on the tokens of the longest training sequence, without a tokenizer.

    Byte-level BPE and byte-fallback SentencePiece tokenizers (SmolLM2, Llama, Qwen, Mistral)
    never make a token of less than one byte, so a message's UTF-8 bytes bound its tokens; each
    conversation's examples are prefixes of its last, so the longest example bounds the merged
    sequence.  Used for the memory estimate, which with ``max_seq_length`` (2048) alone asked
    for ~18 GiB to train a night of short chats.
    """
    longest = 0
    for e in examples:
        n = 0
        for m in e.get("messages") or ():
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                n += len(content.encode("utf-8", "surrogatepass"))
            elif content is not None:  # content parts: their JSON is longer than their text
                n += len(json.dumps(content, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if isinstance(m, dict) and m.get("tool_calls"):
                n += len(json.dumps(m["tool_calls"], ensure_ascii=False).encode("utf-8", "surrogatepass"))
            n += TEMPLATE_TOKENS_PER_MESSAGE
        if e.get("tools"):
            n += len(json.dumps(e["tools"], ensure_ascii=False).encode("utf-8", "surrogatepass"))
        longest = max(longest, n)
    return max(1, min(max_seq_length, longest))
