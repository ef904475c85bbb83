"""This project's MLX Llama family: logits plus the final layer's attention scores of the newest query.

One forward pass with a few switches runs every architecture of the family:

| switch (config.json key) | what it changes | set by |
| --- | --- | --- |
| `qkv_bias`, `o_proj_bias` | a bias on q/k/v, on o | `attention_bias` (Llama, Granite); Qwen2: q/k/v only |
| `qk_norm` | a per-head RMSNorm on q and k before RoPE | Qwen3 |
| `no_rope_layers` | 0 marks a layer without RoPE | SmolLM3 (every 4th layer) |
| `partial_rotary_factor` | RoPE on the first part of each head only | Phi-3 / Phi-4-mini |
| `*_multiplier`, `logits_scaling` | embedding, attention-scale, residual, logit factors | Granite |

Mistral is the plain pass. Phi-3's fused `qkv_proj` and `gate_up_proj` are split on load.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs, create_attention_mask
from mlx_lm.models.cache import KVCache, RotatingKVCache
from mlx_lm.models.rope_utils import initialize_rope

# What a model type implies where its config.json (or GGUF) says nothing: Hugging Face's defaults.
FAMILY_DEFAULTS = {
    "qwen2": {"qkv_bias": True, "o_proj_bias": False},
    "qwen3": {"qk_norm": True},
    "granite": {"attention_multiplier": 1.0},
}
FAMILY = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "granite", "phi3")


@dataclass
class ModelArgs(BaseModelArgs):
    """Hyper-parameters under Hugging Face `config.json` names (unknown keys are ignored)."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    max_position_embeddings: Optional[int] = None
    rope_theta: float = 10000.0
    rope_scaling: Optional[Dict[str, Union[float, str, list]]] = None
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    model_type: str = "llama"
    qkv_bias: Optional[bool] = None
    o_proj_bias: Optional[bool] = None
    qk_norm: Optional[bool] = None
    no_rope_layers: Optional[List[int]] = None
    no_rope_layer_interval: Optional[int] = None
    partial_rotary_factor: float = 1.0
    embedding_multiplier: float = 1.0
    attention_multiplier: Optional[float] = None
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0

    def __post_init__(self):
        for key, value in FAMILY_DEFAULTS.get(self.model_type, {}).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.qk_norm = bool(self.qk_norm)
        if self.qkv_bias is None:
            self.qkv_bias = self.attention_bias
        if self.o_proj_bias is None:
            self.o_proj_bias = self.attention_bias
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.attention_multiplier is None:
            self.attention_multiplier = self.head_dim**-0.5
        if self.no_rope_layers is None and self.no_rope_layer_interval:
            every = self.no_rope_layer_interval
            self.no_rope_layers = [int((i + 1) % every != 0) for i in range(self.num_hidden_layers)]
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.no_rope_layers is not None and len(self.no_rope_layers) != self.num_hidden_layers:
            raise ValueError(
                f"no_rope_layers has {len(self.no_rope_layers)} entries for "
                f"{self.num_hidden_layers} layers"
            )

    def uses_rope(self, layer: int) -> bool:
        return self.no_rope_layers is None or bool(self.no_rope_layers[layer])


def last_query_scores(queries: mx.array, keys: mx.array, scale: float, mask=None) -> mx.array:
    """Scaled pre-softmax scores `[B, n_heads, L]` of the newest query over all cached keys.

    Query head `h` attends with key head `h // (n_heads // n_kv_heads)`, as grouped-query
    attention pairs them. Where a boolean `mask` hides a position from the newest query (a
    batch row's left padding, a position outside a sliding window), its score is -inf, so the
    metrics see only what the layer attends to.
    """
    B, n_heads, _, head_dim = queries.shape
    n_kv_heads = keys.shape[1]
    q = queries[:, :, -1, :].reshape(B, n_kv_heads, n_heads // n_kv_heads, head_dim)
    scores = ((q * scale) @ keys.swapaxes(-1, -2)).reshape(B, n_heads, -1).astype(mx.float32)
    if isinstance(mask, mx.array) and mask.dtype == mx.bool_:
        scores = mx.where(mask[..., -1, :], scores, -mx.inf)
    return scores


def attend(attention: nn.Module, q, k, v, mask, cache, return_scores: bool):
    """RoPE at the cache's offset, the cache update, fused attention -> (output [B, L, n*d],
    the newest query's scores or None)."""
    offset = cache.offset if cache is not None else 0
    q = attention.rope(q, offset=offset)
    k = attention.rope(k, offset=offset)
    if cache is not None:
        k, v = cache.update_and_fetch(k, v)
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=attention.scale, mask=mask)
    B, _, L, _ = out.shape
    scores = last_query_scores(q, k, attention.scale, mask) if return_scores else None
    return out.transpose(0, 2, 1, 3).reshape(B, L, -1), scores


class NoRoPE(nn.Module):
    def __call__(self, x, offset=0):
        return x


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int = 0):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.scale = args.attention_multiplier
        bias = args.qkv_bias
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=args.o_proj_bias)
        if args.qk_norm:
            self.q_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        if args.uses_rope(layer):
            self.rope = initialize_rope(
                int(head_dim * args.partial_rotary_factor),
                args.rope_theta,
                False,
                args.rope_scaling,
                args.max_position_embeddings,
            )
        else:
            self.rope = NoRoPE()

    def __call__(self, x, mask=None, cache=None, return_scores=False):
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if "q_norm" in self:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)
        out, scores = attend(self, q, k, v, mask, cache, return_scores)
        return self.o_proj(out), scores


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, hidden, bias = args.hidden_size, args.intermediate_size, args.mlp_bias
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def __call__(self, x):
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int = 0):
        super().__init__()
        self.self_attn = Attention(args, layer)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.residual_multiplier = args.residual_multiplier

    def __call__(self, x, mask=None, cache=None, return_scores=False):
        r, scores = self.self_attn(self.input_layernorm(x), mask, cache, return_scores)
        h = x + self.scaled(r)
        return h + self.scaled(self.mlp(self.post_attention_layernorm(h))), scores

    def scaled(self, r):
        return r if self.residual_multiplier == 1.0 else r * self.residual_multiplier


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, i) for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.embedding_multiplier = args.embedding_multiplier

    def __call__(self, inputs, cache=None, return_scores=False):
        h = self.embed_tokens(inputs)
        if self.embedding_multiplier != 1.0:
            h = h * self.embedding_multiplier
        cache = cache or [None] * len(self.layers)
        mask = create_attention_mask(h, cache[0])
        last = len(self.layers) - 1
        scores = None
        for i, (layer, layer_cache) in enumerate(zip(self.layers, cache)):
            h, scores = layer(h, mask, layer_cache, return_scores and i == last)
        return self.norm(h), scores


class Model(nn.Module):
    """A Llama-family causal LM.

    `model(inputs [B, L], cache=None, return_scores=False, last_only=False)` returns logits
    `[B, L, V]` (`[B, 1, V]` with `last_only`) and, with `return_scores`, also the final
    layer's scaled pre-softmax attention scores of the newest query, `[B, n_heads, L_total]`,
    over the valid (cached plus new) positions only.
    """

    body = LlamaModel  # the blocks between the embedding and the head (Gemma 3 has its own)

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = type(self).body(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(
        self,
        inputs: mx.array,
        cache: Optional[List[Any]] = None,
        return_scores: bool = False,
        last_only: bool = False,
    ):
        h, scores = self.model(inputs, cache, return_scores)
        if last_only:
            h = h[:, -1:]
        if self.args.tie_word_embeddings:
            logits = self.model.embed_tokens.as_linear(h)
        else:
            logits = self.lm_head(h)
        scaling = getattr(self.args, "logits_scaling", 1.0)
        if scaling != 1.0:
            logits = logits / scaling
        return (logits, scores) if return_scores else logits

    @property
    def layers(self):
        return self.model.layers

    def make_cache(self, max_kv_size: Optional[int] = None) -> List[Any]:
        """One KV cache per layer; a rotating one of `max_kv_size` slots if given."""
        if max_kv_size is None:
            return [KVCache() for _ in self.layers]
        return [RotatingKVCache(max_size=max_kv_size, keep=4) for _ in self.layers]

    def sanitize(self, weights: Dict[str, mx.array]) -> Dict[str, mx.array]:
        """Checkpoint entries under this model's names: the text model of a multimodal
        checkpoint, Phi-3's fused projections split, no rotary buffers."""
        weights = {k: v for k, v in text_weights(weights).items() if "rotary_emb.inv_freq" not in k}
        match_head(self, weights)
        return split_fused(weights, self.args)


def text_weights(weights: Dict[str, mx.array]) -> Dict[str, mx.array]:
    """A multimodal checkpoint's language model under a text model's names, its vision tower
    and projector left out (`language_model.model.*` as mlx-community writes it, and
    `model.language_model.*` as transformers 5 does)."""
    out = {}
    for key, value in weights.items():
        if key.startswith(("vision_tower.", "multi_modal_projector.", "model.vision_tower.")):
            continue
        if key.startswith("model.multi_modal_projector."):
            continue
        if key.startswith("model.language_model."):
            key = "model." + key.removeprefix("model.language_model.")
        elif key.startswith("language_model."):
            key = key.removeprefix("language_model.")
        out[key] = value
    return out


def match_head(model: nn.Module, weights: Dict[str, mx.array]):
    """Tie the output layer to the embeddings exactly when the checkpoint holds no
    `lm_head.weight`: transformers leaves `tie_word_embeddings` out of config.json when it is
    the class default, which differs between classes (and between a wrapper and its
    `text_config`), so the weights decide, as in mlx-lm's Gemma 3."""
    args = model.args
    headed = "lm_head.weight" in weights
    if args.tie_word_embeddings and headed:
        model.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
    elif not args.tie_word_embeddings and not headed and "lm_head" in model:
        model.pop("lm_head")
    args.tie_word_embeddings = not headed


def split_fused(weights: Dict[str, mx.array], args: ModelArgs) -> Dict[str, mx.array]:
    """Phi-3's `qkv_proj` -> q/k/v and `gate_up_proj` -> gate/up, by output rows (the rows of
    a quantized layer's scales and biases split alike)."""
    q_rows = args.num_attention_heads * args.head_dim
    kv_rows = args.num_key_value_heads * args.head_dim
    out = {}
    for key, value in weights.items():
        if ".qkv_proj." in key:
            parts = mx.split(value, [q_rows, q_rows + kv_rows], axis=0)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                out[key.replace("qkv_proj", name)] = part
        elif ".gate_up_proj." in key:
            gate, up = mx.split(value, 2, axis=0)
            out[key.replace("gate_up_proj", "gate_proj")] = gate
            out[key.replace("gate_up_proj", "up_proj")] = up
        else:
            out[key] = value
    return out
