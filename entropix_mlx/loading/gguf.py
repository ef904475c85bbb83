"""GGUF -> model args, weights under this project's names, tokenizer.

The file is read through one memory map (`gguf_file`), one tensor at a time, and its
metadata is checked against the tensors present before any layer is built (`gguf_arch`: what
each architecture stores where). `gguf_quants` turns each tensor into MLX arrays without loss:
quantized layers, with bits and group size read back off the shapes (16-value groups become
`model.sub_block_quant` layers).

RoPE layout: in Llama-style files llama.cpp stores the rows of the Q and K projections
permuted for its interleaved ("traditional") RoPE. We undo that permutation on load (rows of
weight, scales and biases alike), so the model uses the same half-split RoPE as Hugging Face
and mlx-lm, and a converted folder is the same weights for both. Gemma's norms, stored as
1 + w, are stored back as w.
"""

import ctypes
import ctypes.util
import gc
from functools import partial
from pathlib import Path
from typing import Dict, Iterable, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from ..errors import ModelLoadError
from ..model import classes
from ..model.sub_block_quant import SUB_BLOCK, sub_block_layer
from .gguf_arch import ROPE_TENSORS, Arch, arch_of, args_from_metadata, project_name
from .gguf_file import GGUFFile, TensorInfo
from .gguf_quants import FLOAT_TYPES, SUB_BLOCK_TYPES, SUPPORTED_TYPES, tensor_arrays
from .gguf_tokenizer import tokenizer_from_gguf_metadata


def check_tensor_types(name: str, tensors: Iterable[TensorInfo]):
    for t in tensors:
        if t.qtype not in SUPPORTED_TYPES:
            raise ModelLoadError(
                f"{name}: tensor {t.name} has GGUF type {t.qtype.name}, which entropix-mlx cannot "
                f"load (it loads {', '.join(sorted(q.name for q in SUPPORTED_TYPES))}); re-quantize with "
                "llama.cpp (e.g. to Q4_K_M) or use the model's MLX / Hugging Face folder"
            )


def unpermute_rows(x: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's per-head row interleave of a Q or K projection tensor."""
    rows = x.shape[0]
    x = x.reshape(n_heads, rows // n_heads // 2, 2, *x.shape[1:])
    return x.swapaxes(1, 2).reshape(rows, *x.shape[3:])


def quantize_like(model: nn.Module, weights: Dict[str, mx.array]):
    """Make quantized layers where the weights are quantized, with bits and group size read off
    the shapes (a group of 16 values is a `sub_block_quant` layer, twice as wide when packed)."""
    layers = []
    for path, module in model.named_modules():
        scales = weights.get(f"{path}.scales")
        if scales is None or not hasattr(module, "to_quantized"):
            continue
        columns = module.weight.shape[-1]
        group_size = columns // scales.shape[-1]
        padded = group_size == SUB_BLOCK
        bits = weights[f"{path}.weight"].shape[-1] * 32 // (columns * (2 if padded else 1))
        if padded:
            layers.append((path, sub_block_layer(module, bits)))
        else:
            layers.append((path, module.to_quantized(group_size=group_size, bits=bits)))
    model.update_modules(tree_unflatten(layers))


def read_weights(gguf: GGUFFile, arch: Arch, args) -> Dict[str, mx.array]:
    """Every weight tensor as MLX arrays under this project's names, one at a time."""
    weights = {}
    for t in gguf.tensors.values():
        if t.name in ROPE_TENSORS:
            continue
        shape = t.shape[::-1]
        label = f"{gguf.path.name}: tensor {t.name}"
        done = partial(gguf.release, t)
        arrays = tensor_arrays(gguf.tensor_bytes(t), t.qtype, shape, label, done)
        base, suffix = t.name.rsplit(".", 1)  # suffix: "weight" or "bias"
        for leaf, w in arrays.items():
            if arch.permuted and ".attn_q." in t.name:
                w = unpermute_rows(w, args.num_attention_heads)
            elif arch.permuted and ".attn_k." in t.name:
                w = unpermute_rows(w, args.num_key_value_heads)
            elif arch.norm_shift and t.name.endswith("norm.weight"):
                w = w - arch.norm_shift
            leaf = suffix if leaf == "weight" else leaf  # a quantized tensor's scales, biases
            weights[project_name(f"{base}.{leaf}", arch)] = mx.eval(w) or w
        gguf.release(t)
    return weights


def read_rope_tensors(gguf: GGUFFile) -> Dict[str, np.ndarray]:
    out = {}
    for name in ROPE_TENSORS:
        t = gguf.tensors.get(name)
        if t is not None:
            label = f"{gguf.path.name}: tensor {t.name}"
            out[name] = np.array(
                tensor_arrays(gguf.tensor_bytes(t), t.qtype, t.shape[::-1], label)["weight"]
            )
    return out


def describe(tensors: Iterable[TensorInfo]) -> str:
    """`Q4_K/Q6_K; Q6_K in 16-value groups`: the quantized types, and which need padded groups."""
    types = {t.qtype for t in tensors if t.qtype not in FLOAT_TYPES}
    kinds = "/".join(sorted(t.name for t in types)) or "float"
    padded = "/".join(sorted(t.name for t in types & SUB_BLOCK_TYPES))
    return f"{kinds}; {padded} in 16-value groups" if padded else kinds


def check_gguf(gguf: GGUFFile):
    """The model's args, after checking the tensor types and the metadata against the tensors."""
    check_tensor_types(gguf.path.name, gguf.tensors.values())
    shapes = {name: t.shape for name, t in gguf.tensors.items()}
    return args_from_metadata(gguf.path.name, gguf.metadata, shapes, read_rope_tensors(gguf))


def build_model(gguf: GGUFFile, args) -> nn.Module:
    arch = arch_of(gguf.path.name, gguf.metadata)
    weights = read_weights(gguf, arch, args)
    model = classes(args.model_type)[0](args)
    weights = model.sanitize(weights)
    quantize_like(model, weights)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model


def release_freed_heap():
    """Hand memory Python freed back to the system (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # no glibc (macOS): nothing to do
        pass


def load_gguf(path: Path) -> Tuple[nn.Module, object, object, str]:
    """Load a GGUF file -> (model, tokenizer, args, quantization description)."""
    gguf = GGUFFile(path)
    args = check_gguf(gguf)
    # The tokenizer first, so its temporary memory and the vocabulary's lists in the metadata
    # (7 MB on SmolLM2) are free again before the weights arrive.
    tokenizer = tokenizer_from_gguf_metadata(gguf.metadata)
    gguf.metadata = {k: v for k, v in gguf.metadata.items() if not k.startswith("tokenizer.ggml.")}
    release_freed_heap()  # Gemma's 262k-token vocabulary leaves ~100 MB of it behind
    return build_model(gguf, args), tokenizer, args, describe(gguf.tensors.values())
