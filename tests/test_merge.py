"""Each conversation's targets trained in one sequence: the same per-target losses as the per-turn examples.

The export writes one example per target turn (train/sequences.py merges them where exact).  On
the tiny real model in fp32, the loss of every target inside the merged sequence equals its
loss in its own example to 1e-4: with tool calls, a rated-down turn in the middle (context, not
a target), and a conversation longer than max_seq_length.  A template that renders earlier
assistant turns differently (as Qwen3's drops <think>) is not merged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from nightlora.sources.hanni.source import conversation_examples
from nightlora.train.sequences import Encoded
from nightlora.train.torch.data import encode_chat, encode_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYSTEM = "You are Hanni."


def conversation() -> tuple[list[dict], dict[int, int]]:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Lisbon"})}}
    messages = [
        {"role": "user", "content": "Hi! My name is Dmitry."},
        {"role": "assistant", "content": "Nice to meet you, Dmitry."},
        {"role": "user", "content": "What's my name?"},
        {"role": "assistant", "content": "Your name is Alexey."},           # rated down: context only
        {"role": "user", "content": "No, it is Dmitry."},
        {"role": "assistant", "content": "Sorry! Your name is Dmitry."},
        {"role": "user", "content": "What's the weather in Lisbon?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"temp_c": 21})},
        {"role": "assistant", "content": "It's 21 °C in Lisbon."},
    ]
    return messages, {3: -1, 5: 1}


def examples(messages, ratings) -> list[dict]:
    out = conversation_examples(7, messages, ratings, SYSTEM)
    assert out.skip_reason is None
    return out.examples


def per_span_losses(model, enc: Encoded) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([enc.tokens])).logits[0].float()
    # Position t predicts token t + 1.
    return [float(F.cross_entropy(logits[s - 1:e - 1], torch.tensor(enc.tokens[s:e]), reduction="sum"))
            for s, e in enc.spans]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_merged_targets_have_their_per_turn_losses(model, tokenizer):
    exs = examples(*conversation())
    assert len(exs) == 4 and any("tool_calls" in e["messages"][-1] for e in exs)  # 1, 5, the call, the answer
    assert all(e["messages"][-1]["content"] != "Your name is Alexey." for e in exs)
    per_turn = [per_span_losses(model, encode_chat(tokenizer, e))[0] for e in exs]
    merged = encode_examples(tokenizer, exs, 4096)
    # The export declares tools from the first call on, so the system prompt changes there: the turns
    # before it merge into one sequence, the call and its answer into another.
    assert (len(merged.items), merged.merged, merged.fallback) == (2, 2, 1)
    assert [len(s.spans) for s in merged.items] == [2, 2]
    assert [x for s in merged.items for x in per_span_losses(model, s)] == pytest.approx(per_turn, abs=1e-4)
    seq = merged.items[0]
    # The rated-down reply is in the sequence as context, never inside a target span.
    alexey = tokenizer.encode("Alexey", add_special_tokens=False)
    at = next(i for i in range(len(seq.tokens)) if seq.tokens[i:i + len(alexey)] == alexey)
    assert not any(s <= at < e for s, e in seq.spans)
    # Fewer tokens read: the history once instead of once per turn.
    assert sum(len(s.tokens) for s in merged.items) < sum(len(encode_chat(tokenizer, e).tokens) for e in exs)


def test_a_conversation_longer_than_max_seq_length_keeps_the_same_targets(model, tokenizer):
    exs = examples(*conversation())[:2]  # the part without tools: one merged sequence
    full = [encode_chat(tokenizer, e) for e in exs]
    limit = (full[0].spans[0][1] + full[1].spans[0][0]) // 2  # cuts between the first and the second target
    per_turn = [e.truncated(limit) for e in full]
    kept = [e for e in per_turn if e.spans]
    out = encode_examples(tokenizer, exs, limit)
    (seq,) = out.items
    assert len(seq.tokens) == limit and len(seq.spans) == len(kept) == 1 and out.dropped == 1
    assert per_span_losses(model, seq) == pytest.approx([per_span_losses(model, e)[0] for e in kept], abs=1e-4)


QWEN3_LIKE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{%- set content = m['content'] or '' -%}"
    "{%- if not loop.last and '</think>' in content -%}{%- set content = content.split('</think>')[-1].lstrip() -%}{%- endif -%}"
    "{{ '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def test_a_template_that_rewrites_earlier_turns_is_not_merged(model, tokenizer, tiny_model_dir: Path):
    qwen = AutoTokenizer.from_pretrained(tiny_model_dir)
    qwen.chat_template = QWEN3_LIKE
    messages = [
        {"role": "user", "content": "What's my name?"},
        {"role": "assistant", "content": "<think>He said Dmitry.</think>Your name is Dmitry."},
        {"role": "user", "content": "And my cat?"},
        {"role": "assistant", "content": "<think>Murka.</think>Your cat is Murka."},
    ]
    exs = examples(messages, {})
    out = encode_examples(qwen, exs, 4096)
    # The second example renders the first reply without its <think>: not a prefix, so kept apart.
    assert (len(out.items), out.merged, out.fallback) == (2, 0, 1)
    assert [per_span_losses(model, e) for e in out.items] == [per_span_losses(model, encode_chat(qwen, e)) for e in exs]
    # With nightlora's own template the same conversation merges.
    assert len(encode_examples(tokenizer, exs, 4096).items) == 1


def test_mlx_merges_the_same_way(tiny_model_dir: Path):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import load

    from nightlora.train.mlx.data import encode_split, iterate_batches, target_loss

    model, tok = load(str(tiny_model_dir))
    exs = examples(*conversation())
    merged = encode_split(tok, exs, 4096, "train")
    apart = encode_split(tok, exs, 4096, "train", merge=False)
    assert len(merged.examples) == 2 and len(apart.examples) == 4
    loss_m, n_m = target_loss(model, *next(iterate_batches(merged.examples, 2, 4096)))
    total, count = 0.0, 0
    for e in apart.examples:
        loss, n = target_loss(model, *next(iterate_batches([e], 1, 4096)))
        total += loss.item() * n.item()
        count += n.item()
    assert n_m.item() == count and loss_m.item() == pytest.approx(total / count, abs=1e-4)
    del nn, mx
