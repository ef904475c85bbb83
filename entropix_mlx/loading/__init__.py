"""`load(name_or_path_or_repo)`: the only door to weights on disk or on the Hub."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .. import distributed
from ..errors import ModelLoadError
from ..sampling.config import SamplerConfig
from .catalog import CATALOG, DEFAULT_MODEL, check_intact, fetch
from .checks import check_finite
from .cpu_weights import CPU_DTYPES, apply_cpu_weight_policy, check_cpu_dtype
from .gguf import load_gguf
from .hf import load_folder, snapshot_path

__all__ = [
    "load",
    "resolve",
    "ModelInfo",
    "ModelLoadError",
    "DEFAULT_MODEL",
    "CATALOG",
    "CPU_DTYPES",
]


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded: from where, in what format, and the model's defaults."""

    name: str  # as the user gave it
    path: Path  # the file or folder read
    format: str  # "gguf" or "folder"
    args: object  # the architecture's ModelArgs (model.llama or model.gemma3)
    quantization: str
    sampler_preset: Dict[str, object] = field(default_factory=dict)
    weight_dtype: str = "as stored"  # what the layers run in: "quantized", "float32", ...

    @property
    def context_length(self) -> Optional[int]:
        return self.args.max_position_embeddings

    def sampler_config(self, **overrides) -> SamplerConfig:
        """The model's preset sampler settings, with `overrides` on top."""
        return SamplerConfig.merged(self.sampler_preset, overrides=overrides)


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def resolve(name: str, log: Callable[[str], None] = lambda msg: None) -> Tuple[Path, str]:
    """(local path, format) of a catalog name, a .gguf file, a folder or a Hub repo id."""
    if name in CATALOG:
        return fetch(name, log), "gguf"
    path = Path(name).expanduser()
    if path.is_dir():
        return path, "folder"
    if path.is_file():
        return path, "gguf"
    if _looks_like_repo_id(name):
        return snapshot_path(name), "folder"
    raise ModelLoadError(
        f"no such model file or folder: {name}; pass a .gguf file, a model folder, a Hub repo id "
        f"(org/name) or a catalog name ({', '.join(CATALOG)})"
    )


def load(
    name: str = DEFAULT_MODEL,
    quantize: Optional[int] = None,
    log: Callable[[str], None] = lambda msg: None,
    cpu_dtype: str = "auto",
) -> Tuple[nn.Module, object, ModelInfo]:
    """Load a model -> (model, tokenizer, info).

    `name`: a catalog name (default: the embedded SmolLM2-135M-Instruct), a `.gguf` file, an
    MLX / Hugging Face folder or a Hub repo id. `quantize` (4 or 8) quantizes float weights
    of a folder on load (and keeps them quantized). `cpu_dtype` on the CPU backend: "auto"
    dequantizes quantized layers to float32 when the system OpenBLAS is active and they fit
    the memory budget (see `loading/cpu_weights.py`), "float32" always, "quantized" never.
    Under `mlx.launch` with several ranks, each rank keeps only its shard (`distributed.shard`),
    taken before the weights are read where the format allows.
    """
    check_cpu_dtype(cpu_dtype)
    path, fmt = resolve(name, log)
    try:
        if fmt == "gguf":
            model, tokenizer, args, quantization = load_gguf(path)
        else:
            model, tokenizer, args, quantization = load_folder(path, quantize)
    except ModelLoadError:
        if name in CATALOG:  # damaged in place, its stamp still matching: say how to repair it
            check_intact(name)
        raise
    group = distributed.world()
    if group.size() > 1:
        try:
            distributed.shard(model, group)
        except distributed.ShardingError as e:
            raise ModelLoadError(f"{path.name}: {e}") from None
    for layer in model.layers:  # layer by layer: a lazy checkpoint is read one layer at a time
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    if fmt == "folder":  # the GGUF reader checked each tensor as it converted it
        check_finite(tree_flatten(model.parameters()), path.name, "re-download it")
    preset = dict(CATALOG[name].sampler_preset) if name in CATALOG else {}
    policy = "quantized" if quantize and cpu_dtype == "auto" else cpu_dtype
    weight_dtype = apply_cpu_weight_policy(model, policy, log)
    info = ModelInfo(str(name), path, fmt, args, quantization, preset, weight_dtype)
    return model, tokenizer, info
