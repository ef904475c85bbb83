"""Write a loaded model as an MLX folder that mlx-lm's own `load` opens too."""

import copy
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import save_config, save_model

from .. import files
from ..errors import ModelLoadError
from ..model.sub_block_quant import without_sub_block_layers
from . import load
from .gguf_file import GGUFFile
from .gguf_tokenizer import tokenizer_from_gguf_metadata


def quantization_config(model: nn.Module) -> Optional[dict]:
    """mlx-lm's `quantization` entry: the most common setting, per-layer overrides for the rest."""
    layers = {
        path: {"group_size": m.group_size, "bits": m.bits}
        for path, m in model.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    }
    if not layers:
        return None
    common = Counter(tuple(q.items()) for q in layers.values()).most_common(1)[0][0]
    config = dict(common)
    config.update({path: q for path, q in layers.items() if tuple(q.items()) != common})
    return config


def convert(
    src: str,
    dst: Path,
    bits: Optional[int] = 4,
    group_size: int = 64,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Convert `src` (anything `load` takes) into the new MLX folder `dst`.

    A float model's layers are quantized to `bits` (4 or 8; None keeps them float); a model
    that is quantized already (a quantized GGUF) is written exactly as loaded.
    """
    dst = Path(dst)
    try:
        check_destination(dst)
    except OSError as e:  # a name too long, a place that cannot be written
        raise ModelLoadError(
            f"cannot write {dst} ({e.strerror or e}); choose another place"
        ) from None
    if bits not in (None, 4, 8):
        raise ModelLoadError(f"bits must be 4 or 8, not {bits}")
    model, tokenizer, info = load(src, log=log, cpu_dtype="quantized")  # the weights as stored
    if not tokenizer.is_fast:  # a GGUF's compact SentencePiece vocabulary: write its twin
        tokenizer = tokenizer_from_gguf_metadata(GGUFFile(info.path).metadata, fast=True)
    if bits and info.quantization == "float":
        nn.quantize(model, group_size=group_size, bits=bits)
    if without_sub_block_layers(model):
        log(
            "16-value groups (Q6_K, Q2_K) are written as float32, exactly: mlx-lm has no such layers"
        )
    log(f"Writing {dst}")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelLoadError(
            f"cannot create {dst.parent} ({e.strerror or e}); choose another place"
        ) from None
    # Written under a temporary name and renamed at the end: an interrupted run leaves no folder.
    try:
        with files.replacing(dst, folder=True) as tmp:
            write_folder(tmp, model, tokenizer, info)
    except OSError as e:
        raise ModelLoadError(
            f"cannot write {dst} ({e.strerror or e}); choose another place"
        ) from None
    return dst


def check_destination(dst: Path):
    """`dst` must be new (or an empty folder) and its nearest existing parent a folder where a
    folder can be made (OSError if not)."""
    if dst.exists() and not dst.is_dir():
        raise ModelLoadError(f"{dst} is an existing file; choose a new folder")
    if dst.is_dir() and any(dst.iterdir()):
        raise ModelLoadError(f"{dst} already exists and is not empty; choose a new folder")
    parent = next(p for p in dst.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ModelLoadError(
            f"cannot write {dst}: {parent} is a file, not a folder; choose another place"
        )
    tempfile.TemporaryDirectory(dir=parent).cleanup()  # before the long load: can one be made?


def fused(layers) -> nn.Module:
    """One layer whose output rows are the given layers' in order (same kind and settings)."""
    layer = copy.copy(layers[0])
    for key, value in layers[0].items():
        if isinstance(value, mx.array):
            layer[key] = mx.concatenate([part[key] for part in layers])
    return layer


def fuse_phi3(model: nn.Module):
    """mlx-lm's Phi-3 reads q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj` (in a
    Phi-3 GGUF or folder they are stored fused, so the parts share one quantization)."""
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = fused([attn.pop(name) for name in ("q_proj", "k_proj", "v_proj")])
        mlp.gate_up_proj = fused([mlp.pop(name) for name in ("gate_proj", "up_proj")])


def write_folder(folder: Path, model: nn.Module, tokenizer, info):
    if info.args.model_type == "phi3":
        fuse_phi3(model)
    save_model(folder, model)
    config = {k: v for k, v in asdict(info.args).items() if v is not None}
    config["eos_token_id"] = sorted(tokenizer.eos_token_ids)
    quantization = quantization_config(model)
    if quantization:
        config["quantization"] = quantization
    save_config(config, folder / "config.json")
    tokenizer.save_pretrained(str(folder))
