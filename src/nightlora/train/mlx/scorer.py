"""Scoring with the mlx backend: the base model, and each mlx_lm adapter on it, in one process.

mlx_lm applies an adapter when it loads a model (``load(model, adapter_path=...)``), so each
model the evaluation asks is loaded in turn -- one at a time, the previous one released.
Losses use the training mask (mlx_lm's ChatDataset with the prompt masked); generation is
mlx_lm's own greedy decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.tuner.datasets import ChatDataset
from mlx_lm.utils import load

from nightlora.errors import ModelError
from nightlora.train.scoring import Generated


class MlxScorer:
    framework = "mlx"
    adapter_format = "mlx"

    def __init__(self, base_model: Path):
        self.base_model = Path(base_model)
        self._loaded: tuple[str | None, nn.Module, object] | None = None
        self._wanted: str | None = None
        self._model()  # fail now, not at the first question, when the model cannot load

    def use(self, adapter: Path | None) -> None:
        self._wanted = None if adapter is None else str(Path(adapter).resolve())

    def _model(self) -> tuple[nn.Module, object]:
        if self._loaded is None or self._loaded[0] != self._wanted:
            self._loaded = None  # release the previous model before loading the next
            try:
                model, tokenizer = load(str(self.base_model), adapter_path=self._wanted)
            except (OSError, ValueError, FileNotFoundError) as e:
                raise ModelError(f"mlx_lm cannot load {self.base_model}"
                                 + (f" with {self._wanted}" if self._wanted else "") + f": {e}") from None
            model.eval()
            self._loaded = (self._wanted, model, tokenizer)
        return self._loaded[1], self._loaded[2]

    def losses(self, examples: Sequence[dict], max_seq_length: int) -> list[tuple[float, int]]:
        model, tokenizer = self._model()
        dataset = ChatDataset([], tokenizer, mask_prompt=True)
        out = []
        for e in examples:
            tokens, offset = dataset.process({"messages": e["messages"], "tools": e.get("tools")})
            tokens = list(tokens)[:max_seq_length]
            if offset >= len(tokens):
                out.append((0.0, 0))
                continue
            ids = mx.array([tokens])
            logits = model(ids[:, :-1])
            ce = nn.losses.cross_entropy(logits[0, offset - 1:], ids[0, offset:], reduction="sum")
            out.append((float(ce.astype(mx.float32).item()), len(tokens) - offset))
        return out

    def generate(self, chats: Sequence[dict], max_new_tokens: int) -> list[Generated]:
        model, tokenizer = self._model()
        sampler = make_sampler(temp=0.0)
        out = []
        for chat in chats:
            prompt = tokenizer.apply_chat_template(chat["messages"], tools=chat.get("tools"),
                                                   add_generation_prompt=True, tokenize=True)
            text, tokens, finish = "", 0, None
            for response in stream_generate(model, tokenizer, prompt, max_tokens=max_new_tokens, sampler=sampler):
                text += response.text
                tokens = response.generation_tokens
                finish = response.finish_reason
            out.append(Generated(text, tokens, finish == "stop"))
        return out

    def close(self) -> None:
        self._loaded = None
