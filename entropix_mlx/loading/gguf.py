"""GGUF (llama architecture) -> ModelArgs, weights under this project's names, tokenizer.

The file is read through one memory map (`gguf_file`), one tensor at a time, and its
metadata is checked against the tensors present before any layer is built. `gguf_quants` turns
each tensor into MLX arrays without loss: quantized layers, with bits and group size read back
off the shapes (16-value groups become `model.sub_block_quant` layers).

RoPE layout: llama.cpp stores the rows of the Q and K projections permuted for its
interleaved ("traditional") RoPE. We undo that permutation on load (rows of weight, scales
and biases alike), so the model uses the same half-split RoPE as Hugging Face and mlx-lm,
and a converted folder is the same weights for both.
"""

import math
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from ..errors import ModelLoadError
from ..model.llama import Model, ModelArgs
from ..model.sub_block_quant import SUB_BLOCK, sub_block_layer
from .checks import held_layers
from .gguf_file import GGUFFile, TensorInfo
from .gguf_quants import FLOAT_TYPES, SUB_BLOCK_TYPES, SUPPORTED_TYPES, tensor_arrays
from .gguf_tokenizer import tokenizer_from_gguf_metadata

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


_REQUIRED_KEYS = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")
_OPTIONAL_TENSORS = {"output.weight", "rope_freqs.weight"}


def check_tensor_types(name: str, tensors: Iterable[TensorInfo]):
    for t in tensors:
        if t.qtype not in SUPPORTED_TYPES:
            raise ModelLoadError(
                f"{name}: tensor {t.name} has GGUF type {t.qtype.name}, which entropix-mlx cannot "
                f"load (it loads {', '.join(sorted(q.name for q in SUPPORTED_TYPES))}); re-quantize with "
                "llama.cpp (e.g. to Q4_K_M) or use the model's MLX / Hugging Face folder"
            )


def _positive_int(name: str, metadata: dict, key: str, default=None) -> int:
    value = metadata.get(f"llama.{key}", default)
    if value is None:
        raise ModelLoadError(f"{name}: the GGUF metadata lacks llama.{key}; the file is incomplete")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelLoadError(
            f"{name}: llama.{key} is {value!r}, not a positive integer; the file is damaged"
        )
    return value


def _positive_float(name: str, metadata: dict, key: str, default=None) -> float:
    value = metadata.get(f"llama.{key}", default)
    if value is None:
        raise ModelLoadError(f"{name}: the GGUF metadata lacks llama.{key}; the file is incomplete")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ModelLoadError(
            f"{name}: llama.{key} is {value!r}, not a positive finite number; the file is damaged"
        )
    return float(value)


def args_from_metadata(
    name: str, metadata: dict, shapes: Dict[str, tuple], rope_freqs=None
) -> ModelArgs:
    """ModelArgs from the `llama.*` keys, checked against the tensor shapes (GGUF order) present.

    Everything is checked before a layer is built, so a bad key can neither crash deep in MLX
    nor make a million layers.
    """
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(
            f"GGUF architecture {arch!r} is not supported; entropix-mlx runs llama-architecture models"
        )
    hidden, n_layers, ffn, n_heads = (_positive_int(name, metadata, k) for k in _REQUIRED_KEYS)
    n_kv_heads = _positive_int(name, metadata, "attention.head_count_kv", n_heads)
    if n_heads % n_kv_heads:
        raise ModelLoadError(
            f"{name}: llama.attention.head_count_kv {n_kv_heads} does not divide "
            f"llama.attention.head_count {n_heads}; the file is damaged"
        )
    head_dim = _positive_int(name, metadata, "attention.key_length", max(hidden // n_heads, 1))
    _check_block_count(name, n_layers, shapes)
    if "token_embd.weight" not in shapes:
        raise ModelLoadError(f"{name}: the file has no token_embd.weight tensor; it is incomplete")
    context = metadata.get("llama.context_length")
    if context is not None:
        context = _positive_int(name, metadata, "context_length")
    args = ModelArgs(
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        intermediate_size=ffn,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        vocab_size=metadata.get("llama.vocab_size") or shapes["token_embd.weight"][-1],
        rms_norm_eps=_positive_float(name, metadata, "attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=_positive_float(name, metadata, "rope.freq_base", 10000.0),
        rope_scaling=_rope_scaling(name, metadata, rope_freqs, context),
        max_position_embeddings=context,
        tie_word_embeddings="output.weight" not in shapes,
    )
    _check_shapes(name, args, shapes)
    return args


def _check_block_count(name: str, n_layers: int, shapes: Dict[str, tuple]):
    blocks = held_layers(shapes, "blk")
    if blocks != n_layers:
        raise ModelLoadError(
            f"{name}: llama.block_count is {n_layers} but the file holds tensors for {blocks} "
            "blocks; the file is damaged"
        )


def _rope_scaling(name: str, metadata: dict, rope_freqs, context: Optional[int]) -> Optional[dict]:
    """Llama 3.1+ `rope_freqs` (divisors of each rotary frequency) as mlx-lm's RoPE scaling.

    mlx-lm's "longrope" multiplies each wavelength base^(2i/d) by its factor, the same as
    dividing the frequency; with the original context equal to the context it scales nothing
    else, so our model and mlx-lm (on a converted folder) run the file as llama.cpp does.
    """
    if rope_freqs is not None:
        if not context:
            raise ModelLoadError(
                f"{name}: has rope_freqs.weight but no llama.context_length; the file is incomplete"
            )
        if not (np.isfinite(rope_freqs).all() and (rope_freqs > 0).all()):
            raise ModelLoadError(
                f"{name}: rope_freqs.weight must hold positive finite factors; the file is damaged"
            )
        factors = rope_freqs.astype(float).tolist()
        return {
            "type": "longrope",
            "long_factor": factors,
            "short_factor": factors,
            "original_max_position_embeddings": context,
        }
    if metadata.get("llama.rope.scaling.type") == "linear":
        return {"type": "linear", "factor": _positive_float(name, metadata, "rope.scaling.factor")}
    return None


def expected_shapes(args: ModelArgs) -> Dict[str, tuple]:
    """Every tensor a llama GGUF of these args may hold -> its shape (GGUF order, row length first)."""
    h, f, vocab = args.hidden_size, args.intermediate_size, args.vocab_size
    q, kv = args.num_attention_heads * args.head_dim, args.num_key_value_heads * args.head_dim
    layer = {
        "attn_norm": (h,),
        "ffn_norm": (h,),
        "attn_q": (h, q),
        "attn_k": (h, kv),
        "attn_v": (h, kv),
        "attn_output": (q, h),
        "ffn_gate": (h, f),
        "ffn_up": (h, f),
        "ffn_down": (f, h),
    }
    shapes = {
        "token_embd.weight": (h, vocab),
        "output_norm.weight": (h,),
        "output.weight": (h, vocab),
        "rope_freqs.weight": (args.head_dim // 2,),
    }
    for i in range(args.num_hidden_layers):
        shapes.update({f"blk.{i}.{k}.weight": s for k, s in layer.items()})
    return shapes


def _check_shapes(name: str, args: ModelArgs, shapes: Dict[str, tuple]):
    expected = expected_shapes(args)
    for tensor, shape in shapes.items():
        if tensor not in expected:
            raise ModelLoadError(
                f"{name}: unexpected tensor {tensor}, which a llama model does not have"
            )
        if shape != expected[tensor]:
            raise ModelLoadError(
                f"{name}: tensor {tensor} has shape {list(shape)}, but the llama.* metadata implies "
                f"{list(expected[tensor])}; the file is inconsistent"
            )
    missing = [t for t in expected if t not in shapes and t not in _OPTIONAL_TENSORS]
    if missing:
        raise ModelLoadError(f"{name}: the file has no {missing[0]} tensor; it is incomplete")


def project_name(gguf_name: str) -> str:
    """`blk.3.attn_q.scales` -> `model.layers.3.self_attn.q_proj.scales`."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"


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


def read_weights(gguf: GGUFFile, args: ModelArgs) -> Dict[str, mx.array]:
    """Every tensor but rope_freqs as MLX arrays under this project's names, one at a time."""
    weights = {}
    for t in gguf.tensors.values():
        if t.name == "rope_freqs.weight":
            continue
        shape = t.shape[::-1]
        arrays = tensor_arrays(
            gguf.tensor_bytes(t), t.qtype, shape, f"{gguf.path.name}: tensor {t.name}"
        )
        for leaf, w in arrays.items():
            if ".attn_q." in t.name:
                w = unpermute_rows(w, args.num_attention_heads)
            elif ".attn_k." in t.name:
                w = unpermute_rows(w, args.num_key_value_heads)
            weights[project_name(f"{t.name.rsplit('.', 1)[0]}.{leaf}")] = mx.eval(w) or w
        gguf.release(t)
    return weights


def read_rope_freqs(gguf: GGUFFile) -> Optional[np.ndarray]:
    t = gguf.tensors.get("rope_freqs.weight")
    if t is None:
        return None
    label = f"{gguf.path.name}: tensor {t.name}"
    return np.array(tensor_arrays(gguf.tensor_bytes(t), t.qtype, t.shape[::-1], label)["weight"])


def describe(tensors: Iterable[TensorInfo]) -> str:
    """`Q4_K/Q6_K; Q6_K in 16-value groups`: the quantized types, and which need padded groups."""
    types = {t.qtype for t in tensors if t.qtype not in FLOAT_TYPES}
    kinds = "/".join(sorted(t.name for t in types)) or "float"
    padded = "/".join(sorted(t.name for t in types & SUB_BLOCK_TYPES))
    return f"{kinds}; {padded} in 16-value groups" if padded else kinds


def check_gguf(gguf: GGUFFile) -> ModelArgs:
    """The model's args, after checking the tensor types and the metadata against the tensors."""
    check_tensor_types(gguf.path.name, gguf.tensors.values())
    shapes = {name: t.shape for name, t in gguf.tensors.items()}
    return args_from_metadata(gguf.path.name, gguf.metadata, shapes, read_rope_freqs(gguf))


def build_model(gguf: GGUFFile, args: ModelArgs) -> Model:
    weights = read_weights(gguf, args)
    model = Model(args)
    quantize_like(model, weights)
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    mx.eval(model.parameters())
    return model


def load_gguf(path: Path) -> Tuple[Model, object, ModelArgs, str]:
    """Load a llama GGUF file -> (model, tokenizer, args, quantization description)."""
    gguf = GGUFFile(path)
    args = check_gguf(gguf)
    # The tokenizer first, so its temporary memory and the vocabulary's lists in the metadata
    # (7 MB on SmolLM2) are free again before the weights arrive.
    tokenizer = tokenizer_from_gguf_metadata(gguf.metadata)
    gguf.metadata = {k: v for k, v in gguf.metadata.items() if not k.startswith("tokenizer.ggml.")}
    return build_model(gguf, args), tokenizer, args, describe(gguf.tensors.values())
