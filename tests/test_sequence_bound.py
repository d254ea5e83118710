"""The memory estimate's sequence length: an upper bound on the longest training sequence's tokens,
checked against real tokenizers and chat templates (SmolLM2's and the tiny test model's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from nightlora.train.splits import longest_tokens_bound
from persona_data import other_language_chats, qa_pairs, chat, tool_chats

SYSTEM = "You are Hanni, a warm personal assistant."


def examples() -> list[dict]:
    out = [chat(q, a) for q, a in qa_pairs()[:10]] + tool_chats() + other_language_chats()
    long = [{"role": "system", "content": SYSTEM}]
    for i in range(12):
        long += [{"role": "user", "content": f"Вопрос {i}: сколько будет {i} × {i}? Ответь кратко, 🙂 пожалуйста."},
                 {"role": "assistant", "content": f"{i * i}. Ещё вопросы?"}]
    return out + [{"messages": long}]


def n_tokens(tok, e: dict) -> int:
    text = tok.apply_chat_template(e["messages"], tools=e.get("tools"), tokenize=False)
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
def test_the_bound_is_never_below_the_real_token_count(which: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue("smollm2_dir" if which == "smollm2" else "tiny_model_dir")
    tok = AutoTokenizer.from_pretrained(model_dir)
    exs = examples()
    for e in exs:
        real = n_tokens(tok, e)
        bound = longest_tokens_bound([e], 100_000)
        assert real <= bound, (real, bound, e["messages"][-1])
        assert bound < 4 * real + 64  # a bound, not a guess of max_seq_length: it stays near the real length
    longest = max(n_tokens(tok, e) for e in exs)
    assert longest <= longest_tokens_bound(exs, 100_000) <= 4 * longest + 64
    assert longest_tokens_bound(exs, 64) == 64  # never beyond max_seq_length
