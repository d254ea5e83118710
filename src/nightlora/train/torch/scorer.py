"""Scoring with the torch backend: the base model, and each adapter on top of it, in one process.

The evaluation (evaluate/) asks three models the same questions -- the base model, the
live adapter and the candidate -- without any server: losses of assistant targets (the same
tokenization and mask as training), and greedy generations.  The base model is loaded once;
adapters are PEFT adapters loaded beside each other under their own names, and the base
model is the same weights with every adapter disabled.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import AutoTokenizer

from nightlora.paths import AdapterFiles
from nightlora.errors import ModelError
from nightlora.train.scoring import Generated
from nightlora.train.torch.backend import target_loss_per_row
from nightlora.train.torch.data import collate, encode_chat, eval_batches
from nightlora.train.torch.lora import MODEL_LOAD_ERRORS, load_base_model

EVAL_BATCH = 8
GENERATE_BATCH = 16


class TorchScorer:
    framework = "torch"
    adapter_format = "peft"

    def __init__(self, base_model: Path, *, dtype: torch.dtype = torch.float32):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        except MODEL_LOAD_ERRORS as e:
            raise ModelError(f"cannot load the base model {base_model}: {type(e).__name__}: {e}") from e
        self.base = load_base_model(base_model, dtype).eval()
        self.model: torch.nn.Module = self.base
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._names: dict[str, str] = {}   # adapter folder -> its name inside the PeftModel
        self._active: str | None = None    # None: the base model

    # -- which model answers -----------------------------------------------------------------

    def use(self, adapter: Path | None) -> None:
        """Answer with ``adapter`` (a PEFT folder) on the base model; None: the base model alone."""
        if adapter is None:
            self._active = None
            return
        key = str(Path(adapter).resolve())
        if key not in self._names:
            from peft import PeftModel

            if not (Path(adapter) / AdapterFiles.PEFT_WEIGHTS).is_file():  # PEFT would fall back to a pickle (.bin)
                raise ModelError(f"cannot load the adapter {adapter}: no {AdapterFiles.PEFT_WEIGHTS} "
                                 "(adapters load only from safetensors files)")

            name = f"a{len(self._names)}"
            try:
                if self.model is self.base:
                    self.model = PeftModel.from_pretrained(self.base, key, adapter_name=name).eval()
                else:
                    self.model.load_adapter(key, adapter_name=name)  # type: ignore[operator]
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise ModelError(f"cannot load the adapter {adapter}: {e}") from None
            self._names[key] = name
        self._active = self._names[key]

    @contextlib.contextmanager
    def _active_model(self) -> Iterator[torch.nn.Module]:
        if self.model is self.base:
            yield self.base
            return
        if self._active is None:
            with self.model.disable_adapter():  # type: ignore[operator]
                yield self.model
        else:
            self.model.set_adapter(self._active)  # type: ignore[operator]
            yield self.model

    # -- scores --------------------------------------------------------------------------------

    def losses(self, examples: Sequence[dict], max_seq_length: int) -> list[tuple[float, int]]:
        """Per example: the summed cross-entropy of its target tokens and their count (0, 0 when
        truncation leaves no target)."""
        encoded = [encode_chat(self.tokenizer, e).truncated(max_seq_length) for e in examples]
        out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
        index = {id(e): i for i, e in enumerate(encoded)}
        with torch.no_grad(), self._active_model() as model:
            for chunk in eval_batches([e for e in encoded if e.spans], EVAL_BATCH):
                sums, counts = target_loss_per_row(model, collate(chunk, self.pad_id))
                for e, s, n in zip(chunk, sums.tolist(), counts.tolist()):
                    out[index[id(e)]] = (s, int(n))
        return out

    def generate(self, chats: Sequence[dict], max_new_tokens: int) -> list[Generated]:
        """Greedy replies to each chat's messages (``{"messages": [...], "tools"?: [...]}``).

        Batched with left padding (a CPU decodes a batch of short prompts about as fast as one)."""
        eos = sorted({self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None})
        prompts = [list(self.tokenizer.apply_chat_template(c["messages"], tools=c.get("tools"),
                                                           add_generation_prompt=True, return_dict=False))
                   for c in chats]
        out: list[Generated] = [Generated("", 0, False)] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad little
        with torch.no_grad(), self._active_model() as model:
            for start in range(0, len(order), GENERATE_BATCH):
                rows = order[start:start + GENERATE_BATCH]
                width = max(len(prompts[i]) for i in rows)
                ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
                    mask[r, width - len(prompts[i]):] = 1
                gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, eos_token_id=eos, pad_token_id=self.pad_id)
                for r, i in enumerate(rows):
                    new = gen[r, width:].tolist()
                    end = next((k for k, tok in enumerate(new) if tok in eos), None)
                    kept = new if end is None else new[:end]
                    text = self.tokenizer.decode(kept, skip_special_tokens=True)
                    out[i] = Generated(text, len(kept) + (end is not None), end is not None)
        return out

    def close(self) -> None:
        self.model = self.base = None  # type: ignore[assignment]
        self._names.clear()
