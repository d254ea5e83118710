"""LoRA adapters between PEFT (the torch backend) and mlx_lm (the mlx backend, mlx_lm server).

Both compute ``y = W x + scale * B A x`` on the same Linear modules; only the files differ:

============  ==============================================  =====================================
              PEFT                                            mlx_lm
============  ==============================================  =====================================
weights       adapter_model.safetensors                       adapters.safetensors
A             base_model.model.M.lora_A.weight  (r, in)       M.lora_a  (in, r)
B             base_model.model.M.lora_B.weight  (out, r)      M.lora_b  (r, out)
scale         lora_alpha / r  (lora_alpha / sqrt(r) rslora)   lora_parameters.scale
modules       target_modules x layers_to_transform            lora_parameters.keys x last num_layers
============  ==============================================  =====================================

M is the module path, the same in both for the architectures mlx_lm ports from
transformers (``model.layers.3.self_attn.q_proj``). mlx_lm adapts a suffix of the
blocks (the last ``num_layers``) with one rank and one scale everywhere, so a PEFT
adapter on other blocks gets explicit no-op LoRA weights (B = 0) on the blocks in
between, and per-module ranks or alphas are refused. DoRA, embedding LoRA, biases
and ``modules_to_save`` have no mlx_lm LoRA equivalent and are refused as well.

The safetensors files are read and written here byte for byte rather than through
torch or mlx: conversion only transposes, so it needs neither framework, and bf16
weights stay bf16 (numpy has no bf16; their bits move as uint16).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from nightlora.errors import ModelError, StoreError
from nightlora.platform.fsutil import atomic_dir, atomic_write_json, private_dir
from nightlora.models import num_layers as model_layers
from nightlora.paths import AdapterFiles
from nightlora.train.base import ADAPTER_META

PEFT_WEIGHTS = AdapterFiles.PEFT_WEIGHTS
PEFT_CONFIG = AdapterFiles.PEFT_CONFIG
MLX_WEIGHTS = AdapterFiles.MLX_WEIGHTS
MLX_CONFIG = AdapterFiles.MLX_CONFIG
PEFT_PREFIX = "base_model.model."
# A module inside a numbered transformer block: "model.layers.3.self_attn.q_proj".
# Lazy, so that the first numbered segment is the block (not an expert index further in).
BLOCK_MODULE = re.compile(r"^(?P<blocks>.+?\.(?P<pattern>[^.]+))\.(?P<layer>\d+)\.(?P<key>.+)$")
# Raw storage per safetensors dtype; bf16 is carried as its 16-bit pattern.
_STORAGE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}

Tensor = tuple[str, np.ndarray]  # (safetensors dtype, array in its storage dtype)


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)), 8 + n


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        header, start = _read_header(path)
        data = path.read_bytes()
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _STORAGE:
            raise ModelError(f"{path}: tensor {name} has dtype {info['dtype']}; only F32, F16 and BF16 adapters convert")
        storage = _STORAGE[info["dtype"]]
        lo, hi = info["data_offsets"]
        array = np.frombuffer(data, dtype=storage, count=(hi - lo) // storage.itemsize, offset=start + lo)
        out[name] = (info["dtype"], array.reshape(info["shape"]))
    return out


def _write_tensors(path: Path, tensors: dict[str, Tensor], fmt: str) -> None:
    header: dict = {"__metadata__": {"format": fmt}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        dtype, array = tensors[name]
        blob = np.ascontiguousarray(array, dtype=_STORAGE[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
    try:
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for blob in blobs:
                f.write(blob)
    except OSError as e:  # a full disk: the caller's atomic_dir drops the half-written folder
        raise StoreError(f"cannot write the converted adapter {path}: {e.strerror or e}") from e


def _from_f32(values: np.ndarray, dtype: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if dtype == "BF16":  # bf16 is the top half of an f32
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(_STORAGE[dtype])


def _linear_shapes(base_model: Path) -> dict[str, tuple[int, int]]:
    """(out, in) of every 2-D ``M.weight`` in the base model, from the safetensors headers only."""
    base_model = Path(base_model)
    cfg_path = base_model / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{base_model} is not a model folder (no config.json)")
    quant = json.loads(cfg_path.read_text()).get("quantization") or {}
    files = sorted(base_model.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{base_model} has no .safetensors weights")
    shapes = {}
    for f in files:
        header, _ = _read_header(f)
        for name, info in header.items():
            if name.endswith(".weight") and len(info.get("shape", ())) == 2:
                out_dim, in_dim = info["shape"]
                if quant and info["dtype"] == "U32":  # mlx quantized: `bits`-bit values packed into uint32
                    in_dim = in_dim * 32 // quant["bits"]
                shapes[name[: -len(".weight")]] = (out_dim, in_dim)
    return shapes


def _check_module(module: str, a_in_r: tuple[int, int], b_r_out: tuple[int, int], shapes: dict, src: Path) -> int:
    """The rank of ``module``'s LoRA, after checking it fits a Linear of the base model inside a block."""
    if BLOCK_MODULE.match(module) is None:
        raise ModelError(f"{src}: LoRA on {module} (outside the transformer blocks) has no mlx_lm equivalent")
    if module not in shapes:
        raise ModelError(f"{src}: {module} is not a Linear of the base model")
    out_dim, in_dim = shapes[module]
    (a_in, r), (b_r, b_out) = a_in_r, b_r_out
    if (a_in, b_out, b_r) != (in_dim, out_dim, r):
        raise ModelError(f"{src}: LoRA shapes A {a_in_r} / B {b_r_out} on {module} do not fit its ({out_dim}, {in_dim}) weight")
    return r


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path.parent} is not an adapter folder (no {path.name})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None


def _copy_meta(src: Path, dst: Path, fmt: str) -> None:
    """Carry nightlora.json over, saying what the folder now holds and where it came from."""
    path = src / ADAPTER_META
    if not path.is_file():
        return
    meta = json.loads(path.read_text())
    if isinstance(meta.get("metrics"), dict):
        meta["metrics"]["adapter_format"] = fmt
    meta["converted_from"] = {"format": "peft" if fmt == "mlx" else "mlx", "path": str(src)}
    atomic_write_json(dst / ADAPTER_META, meta)


def _start(src: Path, dst: Path, weights: str) -> tuple[Path, Path]:
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise ModelError(f"{dst} already exists: adapters are never overwritten")
    if not (src / weights).is_file():
        raise ModelError(f"{src} has no {weights}")
    return src, dst


def _peft_scale(cfg: dict, src: Path) -> float:
    refused = [what for what, bad in (
        ("DoRA (use_dora)", cfg.get("use_dora")),
        ("per-module ranks (rank_pattern)", cfg.get("rank_pattern")),
        ("per-module alphas (alpha_pattern)", cfg.get("alpha_pattern")),
        ("modules_to_save", cfg.get("modules_to_save")),
        (f"bias={cfg.get('bias')!r}", cfg.get("bias", "none") != "none"),
        ("fan_in_fan_out", cfg.get("fan_in_fan_out")),
    ) if bad]
    if cfg.get("peft_type") != "LORA":
        refused.insert(0, f"peft_type {cfg.get('peft_type')!r}")
    if refused:
        raise ModelError(f"{src}: {', '.join(refused)} cannot be converted to an mlx_lm LoRA adapter")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not r or alpha is None:
        raise ModelError(f"{src}: adapter_config.json lacks r or lora_alpha")
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def peft_to_mlx(src: Path, dst: Path, base_model: Path) -> Path:
    """Write the PEFT LoRA adapter ``src`` as an mlx_lm adapter folder ``dst`` for ``base_model``."""
    src, dst = _start(src, dst, PEFT_WEIGHTS)
    cfg = _read_config(src / PEFT_CONFIG)
    scale = _peft_scale(cfg, src)
    tensors = _read_tensors(src / PEFT_WEIGHTS)
    shapes = _linear_shapes(base_model)

    pairs: dict[str, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        m = re.fullmatch(re.escape(PEFT_PREFIX) + r"(?P<module>.+)\.lora_(?P<ab>[AB])\.weight", name)
        if m is None:
            raise ModelError(f"{src}: tensor {name} is not a LoRA A or B weight; it cannot be converted")
        pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    if not pairs:
        raise ModelError(f"{src}: the adapter holds no LoRA weights")

    out: dict[str, Tensor] = {}
    ranks, layers, keys, blocks = set(), set(), set(), set()
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ModelError(f"{src}: {module} has lora_{'A' if 'A' in ab else 'B'} without its pair")
        (a_dtype, a), (b_dtype, b) = ab["A"], ab["B"]
        ranks.add(_check_module(module, a.T.shape, b.T.shape, shapes, src))
        m = BLOCK_MODULE.match(module)
        layers.add(int(m["layer"]))
        keys.add(m["key"])
        blocks.add(m["blocks"])
        out[f"{module}.lora_a"] = (a_dtype, a.T)
        out[f"{module}.lora_b"] = (b_dtype, b.T)
    if len(ranks) != 1 or len(blocks) != 1:
        raise ModelError(f"{src}: mixed ranks {sorted(ranks)} or block lists {sorted(blocks)}; mlx_lm has one of each")
    (rank,), (block_path,) = ranks, blocks

    total = model_layers(Path(base_model))
    first = min(layers)
    # mlx_lm adapts the last `num_layers` blocks: give the blocks PEFT skipped a LoRA that adds nothing
    # (B = 0) but can still learn when training continues (A drawn as mlx_lm draws it).
    rng = np.random.default_rng(0)
    dtype = next(iter(out.values()))[0]
    for layer in range(first, total):
        for key in keys:
            module = f"{block_path}.{layer}.{key}"
            if f"{module}.lora_a" in out:
                continue
            if module not in shapes:
                raise ModelError(f"{src}: block {layer} has no {key}; mlx_lm would need one there")
            out_dim, in_dim = shapes[module]
            bound = 1 / math.sqrt(in_dim)
            out[f"{module}.lora_a"] = (dtype, _from_f32(rng.uniform(-bound, bound, (in_dim, rank)), dtype))
            out[f"{module}.lora_b"] = (dtype, _from_f32(np.zeros((rank, out_dim)), dtype))

    mlx_cfg = {
        "model": str(base_model),
        "fine_tune_type": "lora",
        "num_layers": total - first,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": float(cfg.get("lora_dropout", 0.0)), "keys": sorted(keys)},
    }
    with atomic_dir(dst) as tmp:
        _write_tensors(tmp / MLX_WEIGHTS, out, "mlx")
        atomic_write_json(tmp / MLX_CONFIG, mlx_cfg)
        _copy_meta(src, tmp, "mlx")
    return dst


def mlx_to_peft(src: Path, dst: Path, base_model: Path) -> Path:
    """Write the mlx_lm LoRA adapter ``src`` as a PEFT adapter folder ``dst`` for ``base_model``."""
    src, dst = _start(src, dst, MLX_WEIGHTS)
    cfg = _read_config(src / MLX_CONFIG)
    kind = cfg.get("fine_tune_type", "lora")  # mlx_lm's own default
    if kind != "lora":
        raise ModelError(f"{src}: a {kind!r} mlx_lm adapter cannot be converted to PEFT LoRA")
    params = cfg.get("lora_parameters") or {}
    if not params.get("rank") or params.get("scale") is None:
        raise ModelError(f"{src}: adapter_config.json lacks lora_parameters rank and scale")
    rank = int(params["rank"])
    tensors = _read_tensors(src / MLX_WEIGHTS)
    shapes = _linear_shapes(base_model)

    pairs: dict[str, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise ModelError(f"{src}: tensor {name} is not a LoRA weight (DoRA magnitude?); it cannot be converted")
        pairs.setdefault(module, {})[leaf] = tensor

    out: dict[str, Tensor] = {}
    layers, keys, patterns = set(), set(), set()
    for module, ab in pairs.items():
        if set(ab) != {"lora_a", "lora_b"}:
            raise ModelError(f"{src}: {module} lacks one of lora_a / lora_b")
        (a_dtype, a), (b_dtype, b) = ab["lora_a"], ab["lora_b"]
        if _check_module(module, a.shape, b.shape, shapes, src) != rank:
            raise ModelError(f"{src}: {module} has rank {a.shape[1]}, the config says {rank}")
        m = BLOCK_MODULE.match(module)
        layers.add(int(m["layer"]))
        keys.add(m["key"])
        patterns.add(m["pattern"])
        out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = (a_dtype, a.T)
        out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = (b_dtype, b.T)
    if not out or len(patterns) != 1:
        raise ModelError(f"{src}: no LoRA weights, or weights in several block lists")

    peft_cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model),
        "r": rank,
        "lora_alpha": float(params["scale"]) * rank,  # PEFT scales by lora_alpha / r
        "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": sorted(keys),
        "layers_to_transform": sorted(layers),
        "layers_pattern": patterns.pop(),
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    with atomic_dir(dst) as tmp:
        _write_tensors(tmp / PEFT_WEIGHTS, out, "pt")
        atomic_write_json(tmp / PEFT_CONFIG, peft_cfg)
        _copy_meta(src, tmp, "peft")
    return dst


def version_folder(adapter: Path, native: str, formats: Iterable[str], base_model: Path, work: Path) -> Path:
    """The trained ``adapter`` (in its ``native`` format) as a folder laid out as a store version,
    holding it in every format of ``formats`` as well: mlx_lm's files at the top, PEFT's in
    ``peft/``.  ``adapter`` is moved inside; ``work`` is where a new folder may be made."""
    import shutil

    adapter, wanted = Path(adapter), set(formats) | {native}
    if native == "mlx":
        if "peft" in wanted:
            mlx_to_peft(adapter, adapter / AdapterFiles.PEFT_SUBDIR, base_model)
        return adapter
    root = peft_to_mlx(adapter, Path(work), base_model) if "mlx" in wanted else private_dir(Path(work))
    shutil.move(str(adapter), str(root / AdapterFiles.PEFT_SUBDIR))
    meta_path = root / ADAPTER_META
    peft_meta = root / AdapterFiles.PEFT_SUBDIR / ADAPTER_META
    meta = json.loads((meta_path if meta_path.is_file() else peft_meta).read_text())
    if "mlx" in wanted:
        meta["converted_from"]["path"] = AdapterFiles.PEFT_SUBDIR  # where the PEFT original now lives
    atomic_write_json(meta_path, meta)
    return root


def convert_adapter(src: Path, src_format: str, dst_format: str, base_model: Path, dst: Path) -> Path:
    """An adapter folder in another format (``dst`` must not exist yet; the same format: ``src`` itself)."""
    if src_format == dst_format:
        return Path(src)
    if (src_format, dst_format) == ("peft", "mlx"):
        return peft_to_mlx(src, dst, base_model)
    if (src_format, dst_format) == ("mlx", "peft"):
        return mlx_to_peft(src, dst, base_model)
    raise ModelError(f"cannot convert a {src_format} adapter to {dst_format}")
