"""The GGUF architectures this project runs: metadata keys -> model args, tensor names and shapes.

What differs between them, as llama.cpp's converter writes them:
- `{arch}.*` metadata keys, plus a few of each architecture's own (Granite's scales, Phi-3's
  rotary dimensions, Gemma 3's sliding window);
- Q/K rows are permuted for llama.cpp's interleaved RoPE only in Llama-style files (llama,
  which Mistral's files also are, smollm3, granite), not in qwen2, qwen3, phi3 or gemma3;
- Gemma stores its norms as 1 + w (the scale itself);
- Phi-3 keeps q/k/v in one `attn_qkv` tensor and gate/up in one `ffn_up` (split on load);
- `ffn_norm` is the norm before the MLP: Llama's `post_attention_layernorm`, but Gemma's
  `pre_feedforward_layernorm` (Gemma's `post_attention_norm` follows the attention).
Settings llama.cpp does not store are fixed as it fixes them (SmolLM3: no RoPE every 4th layer;
Gemma 3: 5 sliding layers to 1 global, local RoPE base 10000, the 27B's attention scale).
"""

from dataclasses import dataclass
from math import inf
from typing import Dict

import numpy as np

from ..errors import ModelLoadError
from ..model import classes
from ..model.gemma3 import GLOBAL, SLIDING
from .checks import held_layers


@dataclass(frozen=True)
class Arch:
    model_type: str
    permuted: bool  # Q/K rows in llama.cpp's interleaved RoPE order
    norm_shift: float = 0.0  # stored norm weight = model's weight + shift


ARCHS = {
    "llama": Arch("llama", permuted=True),
    "smollm3": Arch("smollm3", permuted=True),
    "granite": Arch("granite", permuted=True),
    "qwen2": Arch("qwen2", permuted=False),
    "qwen3": Arch("qwen3", permuted=False),
    "phi3": Arch("phi3", permuted=False),
    "gemma3": Arch("gemma3_text", permuted=False, norm_shift=1.0),
}
GEMMA3_PATTERN = 6  # llama.cpp: every 6th layer global
GEMMA3_LOCAL_BASE = 10000.0
GEMMA3_27B_LAYERS = 62  # llama.cpp scales its attention by hidden/heads, not head_dim

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GEMMA3_NAMES = {
    **_LAYER_NAMES,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_PHI3_NAMES = {**_LAYER_NAMES, "ffn_up": "mlp.gate_up_proj"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Tensors that are not weights: RoPE frequency factors, read into the args.
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
_REQUIRED_KEYS = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")


def arch_of(name: str, metadata: dict) -> Arch:
    arch = metadata.get("general.architecture")
    if arch not in ARCHS:
        raise ModelLoadError(
            f"{name}: GGUF architecture {arch!r} is not supported; entropix-mlx runs these "
            f"GGUF architectures: {', '.join(ARCHS)} (Mistral's files are llama)"
        )
    return ARCHS[arch]


def project_name(gguf_name: str, arch: Arch) -> str:
    """`blk.3.attn_q.scales` -> `model.layers.3.self_attn.q_proj.scales`."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        names = {"gemma3_text": _GEMMA3_NAMES, "phi3": _PHI3_NAMES}.get(
            arch.model_type, _LAYER_NAMES
        )
        return f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
    return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"


class _Keys:
    """Typed access to one architecture's `{arch}.*` metadata keys."""

    def __init__(self, name: str, metadata: dict):
        self.name, self.metadata = name, metadata
        self.prefix = metadata["general.architecture"]

    def get(self, key: str, default=None):
        return self.metadata.get(f"{self.prefix}.{key}", default)

    def positive_int(self, key: str, default=None) -> int:
        value = self.get(key, default)
        if value is None:
            raise ModelLoadError(
                f"{self.name}: the GGUF metadata lacks {self.prefix}.{key}; the file is incomplete"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelLoadError(
                f"{self.name}: {self.prefix}.{key} is {value!r}, not a positive integer; "
                "the file is damaged"
            )
        return value

    def positive_float(self, key: str, default=None) -> float:
        value = self.get(key, default)
        if value is None:
            raise ModelLoadError(
                f"{self.name}: the GGUF metadata lacks {self.prefix}.{key}; the file is incomplete"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < inf:
            raise ModelLoadError(
                f"{self.name}: {self.prefix}.{key} is {value!r}, not a positive finite number; "
                "the file is damaged"
            )
        return float(value)

    def optional_positive_int(self, key: str):
        return None if self.get(key) is None else self.positive_int(key)


def args_from_metadata(name: str, metadata: dict, shapes: Dict[str, tuple], rope_tensors=None):
    """The model's args from the metadata, checked against the tensor shapes (GGUF order).

    Everything is checked before a layer is built, so a bad key can neither crash deep in MLX
    nor make a million layers. `rope_tensors`: the ROPE_TENSORS present, as numpy arrays.
    """
    arch = arch_of(name, metadata)
    keys = _Keys(name, metadata)
    hidden, n_layers, ffn, n_heads = (keys.positive_int(k) for k in _REQUIRED_KEYS)
    n_kv_heads = keys.positive_int("attention.head_count_kv", n_heads)
    if n_heads % n_kv_heads:
        raise ModelLoadError(
            f"{name}: {keys.prefix}.attention.head_count_kv {n_kv_heads} does not divide "
            f"{keys.prefix}.attention.head_count {n_heads}; the file is damaged"
        )
    head_dim = keys.positive_int("attention.key_length", max(hidden // n_heads, 1))
    _check_block_count(name, keys.prefix, n_layers, shapes)
    if "token_embd.weight" not in shapes:
        raise ModelLoadError(f"{name}: the file has no token_embd.weight tensor; it is incomplete")
    config = dict(
        model_type=arch.model_type,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        intermediate_size=ffn,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        vocab_size=keys.get("vocab_size") or shapes["token_embd.weight"][-1],
        rms_norm_eps=keys.positive_float("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=keys.positive_float("rope.freq_base", 10000.0),
        max_position_embeddings=keys.optional_positive_int("context_length"),
        tie_word_embeddings="output.weight" not in shapes,
        qkv_bias="blk.0.attn_q.bias" in shapes or "blk.0.attn_qkv.bias" in shapes,
        o_proj_bias="blk.0.attn_output.bias" in shapes,
        qk_norm="blk.0.attn_q_norm.weight" in shapes,
    )
    config.update(_ARCH_SETTINGS.get(arch.model_type, _llama)(keys, config, rope_tensors or {}))
    args = classes(arch.model_type)[1].from_dict(config)
    _check_shapes(name, arch, args, shapes, keys.prefix)
    return args


def _check_block_count(name: str, prefix: str, n_layers: int, shapes: Dict[str, tuple]):
    blocks = held_layers(shapes, "blk")
    if blocks != n_layers:
        raise ModelLoadError(
            f"{name}: {prefix}.block_count is {n_layers} but the file holds tensors for "
            f"{blocks} blocks; the file is damaged"
        )


def _llama(keys: _Keys, config: dict, rope_tensors: dict) -> dict:
    """Llama 3.1+ `rope_freqs` (divisors of each rotary frequency) as mlx-lm's RoPE scaling.

    mlx-lm's "longrope" multiplies each wavelength base^(2i/d) by its factor, the same as
    dividing the frequency; with the original context equal to the context it scales nothing
    else, so our model and mlx-lm (on a converted folder) run the file as llama.cpp does.
    """
    context = config["max_position_embeddings"]
    factors = rope_tensors.get("rope_freqs.weight")
    if factors is not None:
        if not context:
            raise ModelLoadError(
                f"{keys.name}: has rope_freqs.weight but no {keys.prefix}.context_length; "
                "the file is incomplete"
            )
        factors = _positive_factors(keys.name, "rope_freqs.weight", factors)
        return {"rope_scaling": _longrope(factors, factors, context)}
    if keys.get("rope.scaling.type") == "linear":
        return {"rope_scaling": _linear_scaling(keys)}
    return {}


def _linear_scaling(keys: _Keys) -> dict:
    return {"type": "linear", "factor": keys.positive_float("rope.scaling.factor")}


def _positive_factors(name: str, tensor: str, factors: np.ndarray) -> list:
    if not (np.isfinite(factors).all() and (factors > 0).all()):
        raise ModelLoadError(
            f"{name}: {tensor} must hold positive finite factors; the file is damaged"
        )
    return factors.astype(float).tolist()


def _longrope(long: list, short: list, original_context: int) -> dict:
    return {
        "type": "longrope",
        "long_factor": long,
        "short_factor": short,
        "original_max_position_embeddings": original_context,
    }


def _smollm3(keys: _Keys, config: dict, rope_tensors: dict) -> dict:
    return {**_llama(keys, config, rope_tensors), "no_rope_layer_interval": 4}


def _granite(keys: _Keys, config: dict, rope_tensors: dict) -> dict:
    scales = {
        "attention_multiplier": "attention.scale",
        "embedding_multiplier": "embedding_scale",
        "residual_multiplier": "residual_scale",
        "logits_scaling": "logit_scale",
    }
    out = {k: keys.get(key) for k, key in scales.items() if keys.get(key) is not None}
    return {**_llama(keys, config, rope_tensors), **out}


def _phi3(keys: _Keys, config: dict, rope_tensors: dict) -> dict:
    """Partial rotary dimensions; LongRoPE factors as mlx-lm's (which always takes the long
    ones; llama.cpp picks by the context size, transformers by the sequence length)."""
    head_dim = config["head_dim"]
    rotary = keys.positive_int("rope.dimension_count", head_dim)
    out = {"partial_rotary_factor": min(rotary, head_dim) / head_dim}
    long = rope_tensors.get("rope_factors_long.weight")
    if long is not None:
        short = rope_tensors.get("rope_factors_short.weight", long)
        original = keys.positive_int("rope.scaling.original_context_length")
        out["rope_scaling"] = _longrope(
            _positive_factors(keys.name, "rope_factors_long.weight", long),
            _positive_factors(keys.name, "rope_factors_short.weight", short),
            original,
        )
    return out


def _gemma3(keys: _Keys, config: dict, rope_tensors: dict) -> dict:
    n_layers, window = config["num_hidden_layers"], keys.get("attention.sliding_window") or 0
    layer_types = [
        SLIDING if window and (i + 1) % GEMMA3_PATTERN else GLOBAL for i in range(n_layers)
    ]
    scalar = config["head_dim"]
    if n_layers == GEMMA3_27B_LAYERS:
        scalar = config["hidden_size"] // config["num_attention_heads"]
    out = {
        "rms_norm_eps": keys.positive_float("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": keys.positive_float("rope.freq_base", 1_000_000.0),
        "rope_local_base_freq": keys.positive_float("rope.freq_base_swa", GEMMA3_LOCAL_BASE),
        "layer_types": layer_types,
        "query_pre_attn_scalar": scalar,
    }
    if window:
        out["sliding_window"] = window
    if keys.get("rope.scaling.type") == "linear":
        out["rope_scaling"] = _linear_scaling(keys)
    return out


_ARCH_SETTINGS = {"smollm3": _smollm3, "granite": _granite, "phi3": _phi3, "gemma3_text": _gemma3}


def expected_shapes(arch: Arch, args) -> Dict[str, tuple]:
    """Every tensor a GGUF of these args may hold -> its shape (GGUF order, row length first)."""
    h, f, vocab, d = args.hidden_size, args.intermediate_size, args.vocab_size, args.head_dim
    q, kv = args.num_attention_heads * d, args.num_key_value_heads * d
    layer = {
        "attn_norm.weight": (h,),
        "ffn_norm.weight": (h,),
        "attn_q.weight": (h, q),
        "attn_k.weight": (h, kv),
        "attn_v.weight": (h, kv),
        "attn_output.weight": (q, h),
        "ffn_gate.weight": (h, f),
        "ffn_up.weight": (h, f),
        "ffn_down.weight": (f, h),
    }
    if getattr(args, "qkv_bias", False):
        layer.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
    if getattr(args, "o_proj_bias", False):
        layer["attn_output.bias"] = (h,)
    if arch.model_type == "gemma3_text" or args.qk_norm:
        layer.update({"attn_q_norm.weight": (d,), "attn_k_norm.weight": (d,)})
    if arch.model_type == "gemma3_text":
        layer.update({"post_attention_norm.weight": (h,), "post_ffw_norm.weight": (h,)})
    if arch.model_type == "phi3":
        del layer["ffn_gate.weight"]
        layer["ffn_up.weight"] = (h, 2 * f)
        layer["attn_qkv.weight"] = (h, q + 2 * kv)  # or q, k and v apart
    shapes = {
        "token_embd.weight": (h, vocab),
        "output_norm.weight": (h,),
        "output.weight": (h, vocab),
        "rope_freqs.weight": (d // 2,),
        "rope_factors_long.weight": (int(d * getattr(args, "partial_rotary_factor", 1)) // 2,),
        "rope_factors_short.weight": (int(d * getattr(args, "partial_rotary_factor", 1)) // 2,),
    }
    for i in range(args.num_hidden_layers):
        shapes.update({f"blk.{i}.{k}": s for k, s in layer.items()})
    return shapes


def _optional(tensor: str, shapes: Dict[str, tuple]) -> bool:
    """Tensors a file may leave out: a tied head, RoPE factors, fused-or-apart projections."""
    if tensor in ("output.weight", *ROPE_TENSORS):
        return True
    fused = tensor.rsplit(".", 2)[0] + ".attn_qkv.weight"
    if ".attn_qkv." in tensor:
        return tensor.replace("attn_qkv", "attn_q") in shapes
    return any(p in tensor for p in (".attn_q.", ".attn_k.", ".attn_v.")) and fused in shapes


def _check_shapes(name: str, arch: Arch, args, shapes: Dict[str, tuple], arch_key: str):
    expected = expected_shapes(arch, args)
    for tensor, shape in shapes.items():
        if tensor not in expected:
            raise ModelLoadError(
                f"{name}: unexpected tensor {tensor}, which a {arch.model_type} model does not have"
            )
        if shape != expected[tensor]:
            raise ModelLoadError(
                f"{name}: tensor {tensor} has shape {list(shape)}, but the {arch_key}.* metadata implies "
                f"{list(expected[tensor])}; the file is inconsistent"
            )
    missing = [t for t in expected if t not in shapes and not _optional(t, shapes)]
    if missing:
        raise ModelLoadError(f"{name}: the file has no {missing[0]} tensor; it is incomplete")
