"""Tensor parallelism over `mx.distributed`: the model's heads and MLP columns split across ranks.

Launched with `mlx.launch`, every rank loads the model lazily, keeps its shard of each layer
(`mlx.nn.layers.distributed.shard_linear`, quantized layers stay quantized) and runs the same
token loop. Per layer the attention output and the MLP output are summed across ranks; the
embedding, the final norm and the LM head stay whole on every rank. The final layer's attention
scores are gathered into all heads, in head order, for the Entropix metrics. Rank 0's sampler
picks each token and broadcasts it, so ranks stay in step even where their hardware rounds the
logits differently (a 4-byte collective per token).
"""

import pickle
from math import gcd
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.nn.layers.distributed import shard_linear

from .errors import ShardingError
from .model.sub_block_quant import without_sub_block_layers


def world() -> mx.distributed.Group:
    """The group `mlx.launch` started (size 1 in a plain process)."""
    return mx.distributed.init()


def quantized_group_size(model: nn.Module) -> Optional[int]:
    """The largest group size among the layers' quantized projections, if any."""
    modules = [m for layer in model.layers for _, m in layer.named_modules()]
    sizes = [m.group_size for m in modules if hasattr(m, "group_size")]
    return max(sizes, default=None)


def shard_problems(args, n: int, group_size: Optional[int] = None) -> list:
    """Why `args` cannot be split across `n` ranks (empty if it can)."""
    widths = {
        "attention heads": args.num_attention_heads,
        "KV heads": args.num_key_value_heads,
        "MLP columns (intermediate_size)": args.intermediate_size,
    }
    problems = [f"{value} {name}" for name, value in widths.items() if value % n]
    if group_size and not problems:
        # A sharded-to-all layer cuts its quantized input rows: whole groups per rank only.
        attn_width = args.num_attention_heads * args.head_dim
        for name, width in (("attention width", attn_width), ("MLP width", args.intermediate_size)):
            if (width // n) % group_size:
                problems.append(f"{name} {width} / {n} ranks (not whole groups of {group_size})")
    return problems


def ranks_that_fit(args, group_size: Optional[int]) -> list:
    limit = gcd(args.num_attention_heads, args.num_key_value_heads)
    return [n for n in range(1, limit + 1) if not shard_problems(args, n, group_size)]


def check_shardable(model: nn.Module, n: int):
    group_size = quantized_group_size(model)
    problems = shard_problems(model.args, n, group_size)
    if problems:
        fits = ", ".join(map(str, ranks_that_fit(model.args, group_size)))
        raise ShardingError(
            f"this model does not divide across {n} ranks ({'; '.join(problems)}); "
            f"launch a number of ranks it divides by ({fits}) or pick another model"
        )


def gather_heads(scores: mx.array, group: mx.distributed.Group) -> mx.array:
    """Per-rank scores `[B, H/N, L]` -> all heads `[B, H, L]` in head order (rank 0's first)."""
    B, local_heads, L = scores.shape
    gathered = mx.distributed.all_gather(scores, group=group)  # [N * B, H/N, L]
    return gathered.reshape(-1, B, local_heads, L).swapaxes(0, 1).reshape(B, -1, L)


class GatheredScores(nn.Module):
    """The final layer's attention with its scores gathered from all ranks."""

    def __init__(self, attention: nn.Module, group: mx.distributed.Group):
        super().__init__()
        self.attention = attention
        self.group = group

    def __call__(self, *args, **kwargs):
        out, scores = self.attention(*args, **kwargs)
        return out, None if scores is None else gather_heads(scores, self.group)


def shard(model: nn.Module, group: mx.distributed.Group):
    """Split `model` in place across `group`: heads and MLP columns, rank by rank in order."""
    n = group.size()
    for layer in model.layers:  # mlx's sharded layers know MLX's own quantization only
        without_sub_block_layers(layer)
    check_shardable(model, n)
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, shard_linear(getattr(attn, name), "all-to-sharded", group=group))
        attn.o_proj = shard_linear(attn.o_proj, "sharded-to-all", group=group)
        attn.n_heads //= n
        attn.n_kv_heads //= n
        mlp.gate_proj = shard_linear(mlp.gate_proj, "all-to-sharded", group=group)
        mlp.up_proj = shard_linear(mlp.up_proj, "all-to-sharded", group=group)
        mlp.down_proj = shard_linear(mlp.down_proj, "sharded-to-all", group=group)
    last = model.layers[-1]
    last.self_attn = GatheredScores(last.self_attn, group)


def rank0_decides(sampler, group: Optional[mx.distributed.Group] = None):
    """Wrap a sampler step so every rank takes rank 0's token (unchanged with one rank)."""
    group = group or world()
    if group.size() == 1:
        return sampler

    is_rank0 = mx.array(group.rank() == 0)

    def step(logits, scores, prev, key):
        token, *rest = sampler(logits, scores, prev, key)
        # Built from `token` on every rank: identical graphs run their collectives in one order.
        mine = mx.where(is_rank0, token, mx.zeros_like(token))
        return (mx.distributed.all_sum(mine, group=group), *rest)

    return step


def share(obj: Any, group: Optional[mx.distributed.Group] = None) -> Any:
    """Rank 0's `obj` on every rank (the others pass None); every rank must call it in step.

    Pickled: the ranks of one `mlx.launch` job trust each other.
    """
    group = group or world()
    if group.size() == 1:
        return obj
    data = pickle.dumps(obj) if group.rank() == 0 else b""
    size = mx.distributed.all_sum(len(data), group=group).item()
    mine = mx.array(np.frombuffer(data, np.uint8)) if data else mx.zeros(size, mx.uint8)
    received = np.array(mx.distributed.all_sum(mine, group=group))  # rank 0 must run it too
    return obj if group.rank() == 0 else pickle.loads(received.tobytes())
