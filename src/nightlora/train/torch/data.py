"""Chats to tensors for the torch backend: tokenization, the loss mask, length-grouped batches.

The loss mask is mlx_lm's ``--mask-prompt`` rule (mlx_lm.tuner.datasets.ChatDataset),
so both backends optimise the same thing: the target of an example is every token after
``apply_chat_template(messages[:-1], tools=tools, add_generation_prompt=True)``.
(mlx_lm's loss also counts one padding position past each sequence, an off-by-one in
its mask, which this backend does not copy.)

The export writes one example per assistant turn with its whole history, so a
conversation with k targets is k examples, each a prefix of the next.  Training them one
by one reads the conversation about k(k+1)/2 times.  Under causal attention the loss of a
turn inside the whole conversation is its loss in its own example, so the examples of a
conversation are merged (data/merge.py): one sequence whose mask covers every target.

Batches are length-grouped with per-batch dynamic padding rather than packed, because packing
does not pay on a CPU (bench/train_throughput.py, contenders ``torch`` and ``torch-packed``).
Length grouping leaves little padding: on the demo export (62 conversations, 73 merged
sequences, batch 4) the batches compute 16,688 positions for 15,963 tokens (4.5 % padding).
Packing a batch into one row (position ids restarting per sequence, no attention mask, so
transformers gives SDPA a block-diagonal causal mask) saves that 4.5 %, but SDPA on a CPU
computes the whole square under a dense mask: the score area grows 3.6x (sum of row
lengths squared, 16.2M against 4.5M), and the epoch took 200.7 s against 156.7 s
(1.28x slower, the same validation loss 1.7208; 2 shared cores, one thread).  A varlen
kernel that skips the off-diagonal blocks (flash-attention's) would change this on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from nightlora.train.sequences import Encoded, EncodedSplit, encode_all, length_grouped_batches  # noqa: F401

IGNORE_INDEX = -100  # the label torch's cross_entropy skips


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
    return Encoded(tokens, ((len(prompt), len(tokens)),))


def encode_examples(tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict], max_seq_length: int,
                    *, merge: bool = True) -> EncodedSplit:
    """Encode with the chat template, merge each conversation's examples where exact (train/sequences.py)."""
    return encode_all([encode_chat(tokenizer, e) for e in examples], examples, max_seq_length, merge=merge)


def encode_split(tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict], max_seq_length: int) -> tuple[list[Encoded], int]:
    """Encode and truncate like mlx_lm, one sequence per example (no merging).

    Returns the encoded chats and how many were dropped because truncation left no target.
    """
    split = encode_examples(tokenizer, examples, max_seq_length, merge=False)
    return split.items, split.dropped


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
        for start, end in e.spans:
            labels[row, start:end] = input_ids[row, start:end]
    return Batch(input_ids, attention_mask, labels)


def eval_batches(items: Sequence[Encoded], batch_size: int) -> Iterator[list[Encoded]]:
    """Fixed, length-sorted batches for validation and test."""
    ordered = sorted(items, key=lambda e: len(e.tokens))
    for i in range(0, len(ordered), batch_size):
        yield ordered[i:i + batch_size]
