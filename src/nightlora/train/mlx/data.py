"""Chats to mlx_lm batches: tokenization with the prompt mask, the loss, token counting.

Tokenization is mlx_lm's own (``ChatDataset(mask_prompt=True).process``, what
``mlx_lm lora --mask-prompt`` runs): the target of a chat is every token after
``apply_chat_template(messages[:-1], add_generation_prompt=True)``, i.e. the last
assistant message. Two deliberate differences from the CLI's data path:

- Chats are handed to mlx_lm's ``iterate_batches`` as ``(tokens, offset)`` pairs, so it
  groups batches by token length. The CLI wraps them in ``CacheDataset``, whose
  ``itemlen`` is the number of keys of the JSON object, so its "length sort" keeps
  file order and pads batches of mixed lengths.
- ``target_loss`` ends the mask at the last real token. mlx_lm's ``default_loss`` also
  counts the position after it, i.e. it trains every chat to predict the padding id 0
  after its end (``<|endoftext|>`` on SmolLM2, ``!`` on Qwen). The torch backend uses
  the same rule as here, so both backends report comparable losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.datasets import ChatDataset
from mlx_lm.tuner.trainer import iterate_batches

from nightlora.errors import TrainError

Encoded = tuple[list[int], int]  # (tokens, offset): tokens[offset:] are the target


@dataclass(frozen=True)
class EncodedSplit:
    examples: list[Encoded]
    dropped: int  # chats whose target lies entirely beyond max_seq_length
    truncated: int  # chats cut at max_seq_length that keep part of their target


def encode_split(tokenizer, chats: Sequence[dict], max_seq_length: int, where: str) -> EncodedSplit:
    """Tokenize ``chats`` as ``mlx_lm lora --mask-prompt`` does, truncated to ``max_seq_length``."""
    # Only the keys ChatDataset reads: the export's "meta" never reaches the tokenizer.
    dataset = ChatDataset([], tokenizer, mask_prompt=True)
    examples: list[Encoded] = []
    dropped = truncated = 0
    for i, chat in enumerate(chats, 1):
        try:
            full, offset = dataset.process({"messages": chat["messages"], "tools": chat.get("tools")})
        except Exception as e:  # a template that cannot render this chat: name the chat, not the traceback
            raise TrainError(f"{where} chat {i}: the chat template cannot render it ({type(e).__name__}: {e})") from None
        tokens = list(full[:max_seq_length])
        if offset >= len(tokens):
            dropped += 1
            continue
        truncated += len(full) > max_seq_length
        examples.append((tokens, offset))
    return EncodedSplit(examples, dropped, truncated)


def target_loss(model: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over the target tokens; ``lengths`` rows are (offset, length).

    Position t of ``targets`` is token t + 1 of the chat: it is a target when
    offset <= t + 1 < length.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    position = mx.arange(1, targets.shape[1] + 1)
    mask = mx.logical_and(position >= lengths[:, 0:1], position < lengths[:, 1:])
    ce = nn.losses.cross_entropy(logits, targets) * mask
    ntoks = mask.sum()
    return ce.astype(mx.float32).sum() / ntoks, ntoks


@dataclass
class TokenCounter:
    """Counts the real (unpadded) tokens of every training batch mlx_lm draws."""

    tokens: int = 0

    def iterate_batches(self, **kwargs) -> Iterator[tuple[mx.array, mx.array]]:
        for batch, lengths in iterate_batches(**kwargs):
            n = int(lengths[:, 1].sum().item())
            self.tokens += n
            yield batch, lengths
