"""Write a loaded model as an MLX folder that mlx-lm's own `load` opens too."""

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import load
from .errors import ModelLoadError


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

    Layers that are still float are quantized to `bits` (4 or 8; None keeps them float);
    layers that already are quantized (a GGUF's Q4/Q8 tensors) are kept exactly.
    """
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ModelLoadError(f"{dst} already exists and is not empty; choose a new folder")
    if bits not in (None, 4, 8):
        raise ModelLoadError(f"bits must be 4 or 8, not {bits}")
    model, tokenizer, info = load(src, log=log, cpu_dtype="quantized")  # the weights as stored
    if bits:
        nn.quantize(model, group_size=group_size, bits=bits)
    log(f"Writing {dst}")
    dst.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = {k: v for k, v in asdict(info.args).items() if v is not None}
    config["eos_token_id"] = sorted(tokenizer.eos_token_ids)
    quantization = quantization_config(model)
    if quantization:
        config["quantization"] = quantization
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer._tokenizer.save_pretrained(str(dst))
    return dst
