"""Chats to tensors for the torch backend: tokenization, the loss mask, length-grouped batches.

The loss mask is mlx_lm's ``--mask-prompt`` rule (mlx_lm.tuner.datasets.ChatDataset),
so both backends optimise the same thing: the target is every token after
``apply_chat_template(messages[:-1], tools=tools, add_generation_prompt=True)``.
(mlx_lm's loss also counts one padding position past each sequence, an off-by-one in
its mask, which this backend does not copy.)

Batches are length-grouped with per-batch dynamic padding rather than packed: packing
would let attention cross chat boundaries unless every model honoured per-chat
position ids, and grouping already keeps padding small on short, similar chats.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label torch's cross_entropy skips
# Examples per length-sorting window, in global batches (transformers' LengthGroupedSampler uses 50).
MEGABATCH_BATCHES = 50


@dataclass(frozen=True)
class Encoded:
    tokens: list[int]
    offset: int  # tokens[offset:] are the target

    @property
    def n_targets(self) -> int:
        return len(self.tokens) - self.offset


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # input_ids with IGNORE_INDEX on the prompt and the padding

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def n_targets(self) -> int:
        # Position 0 is never predicted, so it is never a target.
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def encode_chat(tokenizer: PreTrainedTokenizerBase, example: dict) -> Encoded:
    """The chat's tokens and where its target starts, exactly as mlx_lm's ChatDataset(mask_prompt=True)."""
    messages = example["messages"]
    tools = example.get("tools")
    tokens = list(tokenizer.apply_chat_template(messages, tools=tools, return_dict=False))
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tools=tools, add_generation_prompt=messages[-1].get("role") == "assistant", return_dict=False,
    )
    return Encoded(tokens, len(prompt))


def encode_split(tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict], max_seq_length: int) -> tuple[list[Encoded], int]:
    """Encode and truncate like mlx_lm (keep the first max_seq_length tokens).

    Returns the encoded chats and how many were dropped because truncation left no target.
    """
    out = []
    for example in examples:
        enc = encode_chat(tokenizer, example)
        enc = Encoded(enc.tokens[:max_seq_length], enc.offset)
        if enc.n_targets > 0:
            out.append(enc)
    return out, len(examples) - len(out)


def collate(items: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-pad to the longest chat in the batch (not to max_seq_length)."""
    width = max(len(e.tokens) for e in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.tokens)
        input_ids[row, :n] = torch.tensor(e.tokens)
        attention_mask[row, :n] = 1
        labels[row, e.offset:n] = input_ids[row, e.offset:n]
    return Batch(input_ids, attention_mask, labels)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless global batches of example indices, each batch of similar lengths.

    The examples run as a stream of shuffled epochs, so every batch is full and no
    example is dropped systematically (mlx_lm drops the longest remainder each
    epoch). Each window of MEGABATCH_BATCHES batches is sorted by length, cut into
    batches, and the batches are shuffled.
    """
    rng = random.Random(seed)
    n = len(lengths)

    def stream() -> Iterator[int]:
        while True:
            order = list(range(n))
            rng.shuffle(order)
            yield from order

    examples = stream()
    # A window longer than an epoch would hold an example twice, side by side once sorted.
    window = batch_size * max(1, min(MEGABATCH_BATCHES, n // batch_size))
    while True:
        chunk = [next(examples) for _ in range(window)]
        chunk.sort(key=lambda i: lengths[i], reverse=True)
        batches = [chunk[i:i + batch_size] for i in range(0, window, batch_size)]
        rng.shuffle(batches)
        yield from batches


def eval_batches(items: Sequence[Encoded], batch_size: int) -> Iterator[list[Encoded]]:
    """Fixed, length-sorted batches for validation and test."""
    ordered = sorted(items, key=lambda e: len(e.tokens))
    for i in range(0, len(ordered), batch_size):
        yield ordered[i:i + batch_size]
