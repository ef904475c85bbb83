"""GGUF (llama architecture) -> ModelArgs, weights under this project's names, tokenizer.

Q4_0, Q4_1 and Q8_0 tensors stay quantized (MLX affine, group 32; bits per tensor read from
the shapes); F32, F16 and BF16 load as they are; any other tensor type is refused.

RoPE layout: llama.cpp stores the rows of the Q and K projections permuted for its
interleaved ("traditional") RoPE. We undo that permutation on load (rows of weight, scales
and biases alike), so the model uses the same half-split RoPE as Hugging Face and mlx-lm,
and a converted folder is the same weights for both.
"""

import struct
from pathlib import Path
from typing import Dict, Tuple

import mlx.core as mx
import mlx.nn as nn
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..model.llama import Model, ModelArgs
from .errors import ModelLoadError
from .gguf_tokenizer import tokenizer_from_gguf_metadata

GGUF_MAGIC = b"GGUF"
GROUP_SIZE = 32
SUPPORTED_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q8_0,
}
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}  # fmt: skip
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


class _HeaderReader:
    """Walks a GGUF header just far enough to list tensor names, types and extents."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> bytes:
        n = self.take("<Q")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def skip_value(self, vtype: int):
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.STRING:
            self.string()
        elif vtype == GGUFValueType.ARRAY:
            item_type, count = self.take("<I"), self.take("<Q")
            if item_type in (GGUFValueType.STRING, GGUFValueType.ARRAY):
                for _ in range(count):
                    self.skip_value(item_type)
            else:
                self.pos += count * struct.calcsize(_SCALAR_FORMATS[GGUFValueType(item_type)])
        else:
            self.pos += struct.calcsize(_SCALAR_FORMATS[vtype])


def read_tensor_types(path: Path) -> Dict[str, GGMLQuantizationType]:
    """Tensor name -> GGML type, after checking the file is a complete GGUF."""
    with open(path, "rb") as f:
        head = f.read(4)
        if head != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (no GGUF header); check the file")
        data = head + f.read()
    reader = _HeaderReader(data)
    reader.pos = 4
    try:
        version, n_tensors, n_kv = reader.take("<I"), reader.take("<Q"), reader.take("<Q")
        alignment = GROUP_SIZE
        for _ in range(n_kv):
            key, vtype = reader.string(), reader.take("<I")
            if key == b"general.alignment":
                alignment = reader.take("<I")
            else:
                reader.skip_value(vtype)
        infos = []
        for _ in range(n_tensors):
            name = reader.string().decode()
            shape = [reader.take("<Q") for _ in range(reader.take("<I"))]
            infos.append((name, shape, reader.take("<I"), reader.take("<Q")))
    except (struct.error, ValueError, KeyError):
        raise ModelLoadError(f"{path} is truncated or corrupt (unreadable GGUF header); fetch it again") from None
    data_start = -(-reader.pos // alignment) * alignment
    types = {}
    for name, shape, type_id, offset in infos:
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError:
            raise ModelLoadError(f"{path}: tensor {name} has unknown GGML type id {type_id}") from None
        block, block_bytes = GGML_QUANT_SIZES[ggml_type]
        n_elements = 1
        for d in shape:
            n_elements *= d
        if data_start + offset + n_elements // block * block_bytes > len(data):
            raise ModelLoadError(f"{path} is truncated (tensor {name} runs past the end); fetch it again")
        types[name] = ggml_type
    return types


def check_tensor_types(path: Path, types: Dict[str, GGMLQuantizationType]):
    unsupported = sorted({t.name for t in types.values() if t not in SUPPORTED_TYPES})
    if unsupported:
        raise ModelLoadError(
            f"{path.name}: unsupported GGUF tensor type {', '.join(unsupported)}; supported are "
            "Q4_0, Q4_1, Q8_0, F16, BF16 and F32 (re-quantize with llama.cpp, e.g. to Q4_0 or Q8_0, "
            "or use the model's MLX / Hugging Face folder)"
        )


def _scalar(metadata, key, default=None):
    value = metadata.get(key, default)
    return value.item() if isinstance(value, mx.array) else value


def args_from_metadata(metadata: dict, weights: Dict[str, mx.array]) -> ModelArgs:
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(
            f"GGUF architecture {arch!r} is not supported; entropix-mlx runs llama-architecture models"
        )

    def get(key, default=None):
        return _scalar(metadata, f"llama.{key}", default)

    n_heads = get("attention.head_count")
    vocab_size = get("vocab_size") or weights["token_embd.weight"].shape[0]
    rope_scaling = None
    if get("rope.scaling.type") == "linear":
        rope_scaling = {"type": "linear", "factor": get("rope.scaling.factor")}
    return ModelArgs(
        hidden_size=get("embedding_length"),
        num_hidden_layers=get("block_count"),
        intermediate_size=get("feed_forward_length"),
        num_attention_heads=n_heads,
        num_key_value_heads=get("attention.head_count_kv", n_heads),
        head_dim=get("attention.key_length"),
        vocab_size=vocab_size,
        rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=get("rope.freq_base", 10000.0),
        rope_scaling=rope_scaling,
        max_position_embeddings=get("context_length"),
        tie_word_embeddings="output.weight" not in weights,
    )


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


def convert_weights(weights: Dict[str, mx.array], args: ModelArgs) -> Dict[str, mx.array]:
    out = {}
    for name, w in weights.items():
        if name == "rope_freqs.weight":
            continue
        if ".attn_q." in name:
            w = unpermute_rows(w, args.num_attention_heads)
        elif ".attn_k." in name:
            w = unpermute_rows(w, args.num_key_value_heads)
        out[project_name(name)] = w
    return out


def quantize_like(model: nn.Module, weights: Dict[str, mx.array], default_group_size: int):
    """Make quantized layers where the weights are quantized, with bits read off the shapes."""

    def predicate(path, module):
        scales = weights.get(f"{path}.scales")
        if scales is None or not hasattr(module, "to_quantized"):
            return False
        packed = weights[f"{path}.weight"].shape[-1]
        in_features = module.weight.shape[-1]
        return {"group_size": in_features // scales.shape[-1], "bits": packed * 32 // in_features}

    nn.quantize(model, group_size=default_group_size, class_predicate=predicate)


def load_gguf(path: Path) -> Tuple[Model, object, ModelArgs, str]:
    """Load a llama GGUF file -> (model, tokenizer, args, quantization description); the model's
    conversions are left lazy (`load` evaluates them)."""
    types = read_tensor_types(path)
    check_tensor_types(path, types)
    weights, metadata = mx.load(str(path), return_metadata=True)
    args = args_from_metadata(metadata, weights)
    if "rope_freqs.weight" in weights:
        raise ModelLoadError(
            f"{path.name} uses per-frequency RoPE factors (Llama 3.1+ GGUF), which are not "
            "supported yet; use the model's MLX / Hugging Face folder instead"
        )
    weights = convert_weights(weights, args)
    model = Model(args)
    quantize_like(model, weights, GROUP_SIZE)
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    tokenizer = tokenizer_from_gguf_metadata(metadata)
    kinds = sorted({t.name for t in types.values() if t.name.startswith("Q")})
    return model, tokenizer, args, "/".join(kinds) or "float"
