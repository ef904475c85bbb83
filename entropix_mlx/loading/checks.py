"""Checks that both loaders (GGUF files, MLX / Hugging Face folders) make: a layer count the
weights bear out, before any layer is built; weights without NaN or infinite values."""

import itertools
import re
from typing import Iterable, Tuple

import mlx.core as mx

from ..errors import ModelLoadError


def held_layers(names: Iterable[str], marker: str) -> int:
    """How many layers the tensor names hold, numbered from 0 without a gap: `marker` is "blk"
    for GGUF names (`blk.3.attn_q.weight`), "model.layers" for Hugging Face ones. A layer count
    read from metadata must equal it, so a damaged count never builds a million layers."""
    pattern = re.compile(rf"(?:^|\.){re.escape(marker)}\.(\d+)\.")
    numbers = {int(m.group(1)) for m in map(pattern.search, names) if m}
    return next(i for i in itertools.count() if i not in numbers)


def non_finite(label: str, advice: str) -> ModelLoadError:
    return ModelLoadError(f"{label} holds NaN or infinite values; the file is damaged, {advice}")


def check_finite(arrays: Iterable[Tuple[str, mx.array]], where: str, advice: str):
    """Raise ModelLoadError naming the first floating-point array that holds NaN or inf."""
    for name, array in arrays:
        if mx.issubdtype(array.dtype, mx.floating) and not mx.isfinite(array).all().item():
            raise non_finite(f"{where}: tensor {name}", advice)
