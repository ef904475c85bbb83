"""This project's MLX Llama: logits plus the final layer's attention scores of the newest query."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs, create_attention_mask
from mlx_lm.models.cache import KVCache, RotatingKVCache
from mlx_lm.models.rope_utils import initialize_rope


@dataclass
class ModelArgs(BaseModelArgs):
    """Llama hyper-parameters under Hugging Face `config.json` names (unknown keys are ignored)."""

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
    rope_scaling: Optional[Dict[str, Union[float, str]]] = None
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    model_type: str = "llama"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )


def last_query_scores(queries: mx.array, keys: mx.array, scale: float, mask=None) -> mx.array:
    """Scaled pre-softmax scores `[B, n_heads, L]` of the newest query over all cached keys.

    Query head `h` attends with key head `h // (n_heads // n_kv_heads)`, as grouped-query
    attention pairs them. Where a boolean `mask` hides a position from the newest query (a
    batch row's left padding), its score is -inf, so the metrics see only the row's own tokens.
    """
    B, n_heads, _, head_dim = queries.shape
    n_kv_heads = keys.shape[1]
    q = queries[:, :, -1, :].reshape(B, n_kv_heads, n_heads // n_kv_heads, head_dim)
    scores = ((q * scale) @ keys.swapaxes(-1, -2)).reshape(B, n_heads, -1).astype(mx.float32)
    if isinstance(mask, mx.array) and mask.dtype == mx.bool_:
        scores = mx.where(mask[..., -1, :], scores, -mx.inf)
    return scores


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.scale = head_dim**-0.5
        bias = args.attention_bias
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=bias)
        self.rope = initialize_rope(
            head_dim,
            args.rope_theta,
            False,
            args.rope_scaling,
            args.max_position_embeddings,
        )

    def __call__(self, x, mask=None, cache=None, return_scores=False):
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)

        offset = cache.offset if cache is not None else 0
        q = self.rope(q, offset=offset)
        k = self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)

        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        out = self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))
        scores = last_query_scores(q, k, self.scale, mask) if return_scores else None
        return out, scores


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
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x, mask=None, cache=None, return_scores=False):
        r, scores = self.self_attn(self.input_layernorm(x), mask, cache, return_scores)
        h = x + r
        return h + self.mlp(self.post_attention_layernorm(h)), scores


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs, cache=None, return_scores=False):
        h = self.embed_tokens(inputs)
        cache = cache or [None] * len(self.layers)
        mask = create_attention_mask(h, cache[0])
        last = len(self.layers) - 1
        scores = None
        for i, (layer, layer_cache) in enumerate(zip(self.layers, cache)):
            h, scores = layer(h, mask, layer_cache, return_scores and i == last)
        return self.norm(h), scores


class Model(nn.Module):
    """Llama causal LM.

    `model(inputs [B, L], cache=None, return_scores=False, last_only=False)` returns logits
    `[B, L, V]` (`[B, 1, V]` with `last_only`) and, with `return_scores`, also the final
    layer's scaled pre-softmax attention scores of the newest query, `[B, n_heads, L_total]`,
    over the valid (cached plus new) positions only.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = LlamaModel(args)
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
        """Drop checkpoint entries this model does not hold (rotary buffers, a tied head)."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights = {k: v for k, v in weights.items() if not k.startswith("lm_head.")}
        return weights
