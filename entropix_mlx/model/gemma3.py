"""Gemma 3 (text): logits plus the final layer's attention scores, like the Llama family.

Gemma's block differs from Llama's: RMSNorm scales by (1 + w); four norms a block (before and
after the attention and the MLP); a GELU-tanh gated MLP; embeddings times sqrt(hidden); per-head
q/k norms; the attention scale query_pre_attn_scalar**-0.5. Layers are sliding-window or global
(`layer_types`, 5 to 1): a sliding layer sees the newest `sliding_window` positions, with its own
RoPE base (`rope_local_base_freq`), and keeps them in a rotating cache of that many slots.

The Entropix metrics read the final layer's attention of the newest token over the positions
that layer attends to. When the final layer is a sliding-window layer (Gemma 3 1B, 4B, 27B),
that is the newest `sliding_window` positions only: older ones are left out of its cache, or
score -inf while a prefill still holds them, and count nowhere in the metrics.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs, create_attention_mask
from mlx_lm.models.cache import KVCache, RotatingKVCache
from mlx_lm.models.rope_utils import initialize_rope

from . import llama
from .llama import attend, match_head, text_weights

SLIDING, GLOBAL = "sliding_attention", "full_attention"


@dataclass
class ModelArgs(BaseModelArgs):
    """Gemma 3 hyper-parameters under Hugging Face `config.json` names (defaults: Gemma 3's)."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    head_dim: int = 256
    num_key_value_heads: int = 1
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rope_scaling: Optional[Dict[str, Any]] = None
    query_pre_attn_scalar: float = 256
    sliding_window: int = 512
    sliding_window_pattern: int = 6
    layer_types: Optional[List[str]] = None
    max_position_embeddings: Optional[int] = 32768
    tie_word_embeddings: bool = True
    model_type: str = "gemma3_text"

    def __post_init__(self):
        if self.layer_types is None:
            every = self.sliding_window_pattern
            self.layer_types = [
                SLIDING if (i + 1) % every else GLOBAL for i in range(self.num_hidden_layers)
            ]
        if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= {
            SLIDING,
            GLOBAL,
        }:
            raise ValueError(
                f"layer_types must name {self.num_hidden_layers} layers, each "
                f"{SLIDING!r} or {GLOBAL!r}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: the weight is stored as the scale minus 1."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x):
        return mx.fast.rms_norm(x, 1.0 + self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.scale = args.query_pre_attn_scalar**-0.5
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, args.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, args.rms_norm_eps)
        if args.layer_types[layer] == SLIDING:
            self.rope = initialize_rope(head_dim, args.rope_local_base_freq, False)
        else:
            self.rope = initialize_rope(
                head_dim, args.rope_theta, False, args.rope_scaling, args.max_position_embeddings
            )

    def __call__(self, x, mask=None, cache=None, return_scores=False):
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        out, scores = attend(self, q, k, v, mask, cache, return_scores)
        return self.o_proj(out), scores


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, hidden = args.hidden_size, args.intermediate_size
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x):
        return self.down_proj(nn.gelu_approx(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.self_attn = Attention(args, layer)
        self.mlp = MLP(args)
        dim, eps = args.hidden_size, args.rms_norm_eps
        self.input_layernorm = RMSNorm(dim, eps)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.pre_feedforward_layernorm = RMSNorm(dim, eps)
        self.post_feedforward_layernorm = RMSNorm(dim, eps)

    def __call__(self, x, mask=None, cache=None, return_scores=False):
        r, scores = self.self_attn(self.input_layernorm(x), mask, cache, return_scores)
        h = x + self.post_attention_layernorm(r)
        r = self.mlp(self.pre_feedforward_layernorm(h))
        return h + self.post_feedforward_layernorm(r), scores


class Gemma3Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, i) for i in range(args.num_hidden_layers)]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def __call__(self, inputs, cache=None, return_scores=False):
        h = self.embed_tokens(inputs)
        # Gemma's residual stream outgrows float16's range: it runs in float32 then.
        h = h.astype(mx.float32) if h.dtype == mx.float16 else h
        h = h * mx.array(self.args.hidden_size**0.5, h.dtype)
        cache = cache or [None] * len(self.layers)
        types = self.args.layer_types
        masks = {
            kind: create_attention_mask(
                h,
                cache[types.index(kind)],
                window_size=self.args.sliding_window if kind == SLIDING else None,
            )
            for kind in set(types)
        }
        last = len(self.layers) - 1
        scores = None
        for i, (layer, layer_cache) in enumerate(zip(self.layers, cache)):
            h, scores = layer(h, masks[types[i]], layer_cache, return_scores and i == last)
        return self.norm(h), scores


class Model(llama.Model):
    """Gemma 3's text model: `llama.Model`'s embedding and head around Gemma 3's blocks."""

    body = Gemma3Model

    def make_cache(self, max_kv_size: Optional[int] = None) -> List[Any]:
        """A rotating cache of `sliding_window` slots per sliding layer; per global layer a
        plain one, or a rotating one of `max_kv_size` slots if given."""

        def global_cache():
            if max_kv_size is None:
                return KVCache()
            return RotatingKVCache(max_size=max_kv_size, keep=4)

        return [
            RotatingKVCache(max_size=self.args.sliding_window)
            if kind == SLIDING
            else global_cache()
            for kind in self.args.layer_types
        ]

    def sanitize(self, weights: Dict[str, mx.array]) -> Dict[str, mx.array]:
        weights = text_weights(weights)
        match_head(self, weights)
        return weights
