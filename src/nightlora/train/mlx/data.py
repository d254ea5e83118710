"""Chats to mlx_lm batches: tokenization with the prompt mask, merging, batches, the loss, token counting.

Tokenization is mlx_lm's own (``ChatDataset(mask_prompt=True).process``, what
``mlx_lm lora --mask-prompt`` runs): the target of an example is every token after
``apply_chat_template(messages[:-1], add_generation_prompt=True)``, i.e. its last assistant
message.  Then, as in the torch backend, each conversation's examples are merged into one
sequence whose mask covers every target, where that is exact (train/sequences.py).

mlx_lm's trainer takes the batching and the loss as parameters (its ``iterate_batches`` and
``loss`` seams): ours yield ``(tokens, mask)`` with the mask of every target span, and batch
by length over shuffled epochs like the torch backend.  Two deliberate differences from the
CLI's data path: its ``CacheDataset`` sorts by the number of keys of the JSON object (so its
"length sort" keeps file order), and its ``default_loss`` also counts the position after each
sequence (training every chat to predict the padding id).  The torch backend uses the same
rule as here, so both backends report comparable losses.  And where the model's forward is
``head(body(inputs))`` the vocabulary head runs at the target positions only, as in the torch
backend (``target_loss``): the same loss, without the logits of every prompt position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.tuner.datasets import ChatDataset

from nightlora.errors import TrainError
from nightlora.train.sequences import Encoded, EncodedSplit, encode_all, length_grouped_batches

PAD_TO = 32  # batch widths are multiples of this, as mlx_lm pads, so compiled steps are reused
TARGETS_PAD_TO = 64  # target counts are padded to multiples of this (weight 0), for the same reason
# Models whose forward is exactly ``head(model.model(inputs))`` (mlx_lm's llama, qwen2, qwen3 and qwen3_moe):
# for them the head runs at target positions only. Any other model computes full logits, then masks.
HEAD_AT_TARGETS = frozenset({"llama", "qwen2", "qwen3", "qwen3_moe"})


@dataclass(frozen=True)
class MlxSplit:
    examples: list[Encoded]
    dropped: int    # targets lying entirely beyond max_seq_length
    truncated: int  # sequences cut at max_seq_length that keep part of their targets
    split: EncodedSplit


def encode_split(tokenizer, chats: Sequence[dict], max_seq_length: int, where: str, *, merge: bool = True) -> MlxSplit:
    """Tokenize ``chats`` as ``mlx_lm lora --mask-prompt`` does, merged per conversation, truncated."""
    # Only the keys ChatDataset reads: the export's "meta" never reaches the tokenizer.
    dataset = ChatDataset([], tokenizer, mask_prompt=True)
    encoded = []
    for i, chat in enumerate(chats, 1):
        try:
            full, offset = dataset.process({"messages": chat["messages"], "tools": chat.get("tools")})
        except Exception as e:  # a template that cannot render this chat: name the chat, not the traceback
            raise TrainError(f"{where} chat {i}: the chat template cannot render it ({type(e).__name__}: {e})") from None
        encoded.append(Encoded(list(full), ((offset, len(full)),)))
    split = encode_all(encoded, chats, max_seq_length, merge=merge)
    truncated = sum(1 for e in split.items if len(e.tokens) == max_seq_length)
    return MlxSplit(split.items, split.dropped, truncated, split)


def _batch(items: Sequence[Encoded], max_seq_length: int) -> tuple[mx.array, ...]:
    """``(tokens, mask, lengths, index, weight)``: ``index`` lists the flat positions of the
    predictions that are targets, padded with position 0 at ``weight`` 0 to a multiple of
    TARGETS_PAD_TO, so that the loss can run the vocabulary head at those positions only."""
    longest = max(len(e.tokens) for e in items)
    width = min(1 + PAD_TO * ((longest + PAD_TO - 1) // PAD_TO), max_seq_length)
    tokens = np.zeros((len(items), width), np.int32)
    # mask[t] marks token t + 1 as a target: the model's output at t predicts it.
    mask = np.zeros((len(items), width - 1), np.float32)
    lengths = np.zeros(len(items), np.int32)
    for row, e in enumerate(items):
        n = lengths[row] = min(len(e.tokens), width)
        tokens[row, :n] = e.tokens[:n]
        for start, end in e.spans:
            mask[row, max(start - 1, 0):min(end, n) - 1] = 1.0
    where = np.flatnonzero(mask)
    k = max(TARGETS_PAD_TO, TARGETS_PAD_TO * -(-len(where) // TARGETS_PAD_TO))
    index = np.zeros(k, np.int32)
    index[:len(where)] = where
    weight = np.zeros(k, np.float32)
    weight[:len(where)] = 1.0
    return mx.array(tokens), mx.array(mask), mx.array(lengths), mx.array(index), mx.array(weight)


def iterate_batches(dataset: Sequence[Encoded], batch_size: int, max_seq_length: int, loop: bool = False,
                    seed: int | None = None, comm_group=None) -> Iterator[tuple[mx.array, ...]]:
    """mlx_lm's ``iterate_batches`` seam: ``(tokens, target mask, lengths, target index, weight)`` batches
    (mlx_lm passes them on to the loss as they are).

    Training (``loop``): endless length-grouped batches over shuffled epochs, every batch full.
    Evaluation: every item once, in length order, the last batch possibly smaller.
    """
    if comm_group is not None and comm_group.size() > 1:
        raise TrainError("distributed mlx training is not supported by nightlora's batching yet")
    if loop:
        schedule = length_grouped_batches([len(e.tokens) for e in dataset], batch_size, 0 if seed is None else seed)
        for indices in schedule:
            yield _batch([dataset[i] for i in indices], max_seq_length)
    else:
        ordered = sorted(dataset, key=lambda e: len(e.tokens))
        for i in range(0, len(ordered), batch_size):
            yield _batch(ordered[i:i + batch_size], max_seq_length)


def _head_at_targets(model: nn.Module):
    """(body, head) where the model is exactly head(body(inputs)), else None."""
    args = getattr(model, "args", None)
    if getattr(model, "model_type", None) not in HEAD_AT_TARGETS or args is None or not hasattr(model, "model"):
        return None
    head = model.model.embed_tokens.as_linear if args.tie_word_embeddings else model.lm_head
    return model.model, head


def target_loss(model: nn.Module, batch: mx.array, mask: mx.array, lengths: mx.array | None = None,
                index: mx.array | None = None, weight: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over the target tokens (``mask``: which predictions are targets).

    With ``index``/``weight`` (what our batches carry) and a model of HEAD_AT_TARGETS, the
    vocabulary head and the softmax run at the targets only: the same loss (the head is
    position-wise), without the (tokens x vocabulary) logits of every prompt position, which on
    SmolLM2's 49,152-word vocabulary are a large part of a step.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    parts = _head_at_targets(model) if index is not None else None
    if parts is not None:
        body, head = parts
        hidden = body(inputs)
        picked = mx.take(hidden.reshape(-1, hidden.shape[-1]), index, axis=0)
        ce = nn.losses.cross_entropy(head(picked), mx.take(targets.reshape(-1), index)) * weight
        ntoks = weight.sum()
        return ce.astype(mx.float32).sum() / ntoks, ntoks
    logits = model(inputs)
    ce = nn.losses.cross_entropy(logits, targets) * mask
    ntoks = mask.sum()
    return ce.astype(mx.float32).sum() / ntoks, ntoks


@dataclass
class TokenCounter:
    """Counts the real (unpadded) tokens of every training batch."""

    tokens: int = 0
    seed: int = 0

    def iterate_batches(self, **kwargs) -> Iterator[tuple[mx.array, ...]]:
        kwargs.setdefault("seed", self.seed)
        for batch in iterate_batches(**kwargs):
            self.tokens += int(batch[2].sum().item())  # lengths
            yield batch
