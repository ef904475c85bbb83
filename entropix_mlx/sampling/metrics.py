"""Entropy, varentropy and attention metrics of one decoding step: pure mx.array functions."""

from __future__ import annotations

import math

import mlx.core as mx

METRICS = (  # what calculate_metrics returns, in this order
    "logits_entropy",
    "logits_varentropy",
    "attn_entropy",
    "attn_varentropy",
    "agreement",
    "interaction_strength",
)
LN_2 = math.log(2.0)
LOG2_E = 1 / LN_2
_CHUNK = 256
_LOGP_FLOOR = -200.0


def precise_sum(x: mx.array) -> mx.array:
    """Sum over the last axis in two levels (chunks of 256, then their sums).

    MLX's CPU reduction accumulates float32 almost serially: over a 128k vocabulary
    that is off by ~1e-3 relative; summing chunk sums brings it to ~1e-6.
    """
    pad = -x.shape[-1] % _CHUNK
    if pad:
        x = mx.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape(*x.shape[:-1], -1, _CHUNK).sum(axis=-1).sum(axis=-1)


def exp(x: mx.array) -> mx.array:
    """e**x for the vocabulary-wide passes. MLX's CPU backend runs `exp` one element at a time
    (~25 ns each on x86 here); 2**(x log2 e) takes a third of that at the same float32
    precision (relative error ~2e-6 both), so the CPU gets that."""
    if mx.default_device() == mx.cpu:
        return mx.power(2.0, x * LOG2_E)
    return mx.exp(x)


def logsumexp(x: mx.array) -> mx.array:
    """log(sum(exp(x))) over the last axis, keepdims, with `precise_sum`."""
    top = mx.max(x, axis=-1, keepdims=True)
    return top + mx.log(precise_sum(exp(x - top)))[..., None]


def logits_entropy_varentropy(logits: mx.array) -> tuple[mx.array, mx.array]:
    """Entropy (bits) and varentropy (bits^2) of softmax(logits); [B, V] -> two [B]."""
    # One exp pass serves both log p and p: exp is the costly op on the CPU backend.
    shifted = logits - mx.max(logits, axis=-1, keepdims=True)
    unnormalised = exp(shifted)
    total = precise_sum(unnormalised)[:, None]
    p = unnormalised / total
    # Below -200 nats p is exactly 0 in float32; the floor keeps -inf logits from
    # making 0 * inf = NaN (cheaper than mx.where on the CPU backend).
    logp = mx.maximum(shifted - mx.log(total), _LOGP_FLOOR)
    entropy = -precise_sum(p * logp) / LN_2
    surprisal_dev = logp / LN_2 + entropy[:, None]
    varentropy = precise_sum(p * mx.square(surprisal_dev))
    return entropy, varentropy


def attention_metrics(scores: mx.array) -> dict[str, mx.array]:
    """Attention metrics of pre-softmax scores [B, H, L] over valid positions only.

    A position scored -inf is not valid for that row (a batch row's left padding): it takes
    no probability and does not count in the means. Returns [B] float32 arrays: attn_entropy
    (mean over heads of each head's entropy, bits), attn_varentropy (population variance of
    those entropies across heads), agreement and interaction_strength.
    """
    if scores.ndim != 3:
        raise ValueError(f"scores must be [B, n_heads, L], got shape {tuple(scores.shape)}")
    scores = scores.astype(mx.float32)
    valid = scores > -mx.inf
    count = valid.sum(axis=(1, 2))
    attn_p = mx.softmax(scores, axis=-1)
    head_entropy = -mx.sum(attn_p * mx.log2(mx.clip(attn_p, 1e-10, 1.0)), axis=-1)
    mean_p = mx.mean(attn_p, axis=1, keepdims=True)
    return {
        "attn_entropy": mx.mean(head_entropy, axis=-1),
        "attn_varentropy": mx.var(head_entropy, axis=-1),
        "agreement": mx.abs(attn_p - mean_p).sum(axis=(1, 2)) / count,
        "interaction_strength": mx.where(valid, mx.abs(scores), 0.0).sum(axis=(1, 2)) / count,
    }


def far_attention(scores: mx.array, window: int) -> mx.array:
    """The heads' mean attention on positions more than `window` tokens before the newest, the
    row's first position (an attention sink) left out; [B, H, L] pre-softmax scores -> [B].

    Copying shows here: writing text it has seen, a model's final layer reads the earlier copy
    (on SmolLM2-135M's dev writing answers, this separates tokens that extend a repeated 4-gram
    from the rest of the argmax corner with AUC 0.77; docs/sampler.md, "Loop guard")."""
    scores = scores.astype(mx.float32)
    length = scores.shape[-1]
    attn_p = mx.softmax(scores, axis=-1)
    valid = scores[:, 0, :] > -mx.inf  # [B, L]; left padding is -inf
    first = mx.argmax(valid, axis=-1)  # the row's first real position
    position = mx.arange(length)
    far = (position[None, :] > first[:, None]) & (position[None, :] < length - 1 - window)
    return (attn_p * far[:, None, :]).sum(axis=-1).mean(axis=-1)


def calculate_metrics(logits: mx.array, scores: mx.array) -> dict[str, mx.array]:
    """All six Entropix metrics of one step, each a [B] float32 array."""
    entropy, varentropy = logits_entropy_varentropy(logits.astype(mx.float32))
    return {
        "logits_entropy": entropy,
        "logits_varentropy": varentropy,
        **attention_metrics(scores),
    }


def probability_margin(chosen: mx.array, top_two: mx.array, log_total: mx.array) -> mx.array:
    """p(token) minus the largest probability of any other token, per row, from the token's
    logit [B], the two largest logits [B, 2] (descending) and logsumexp(logits) [B].

    For the most probable token this is CoT-decoding's margin p(top1) - p(top2) (Wang & Zhou,
    2024); for any other token it is negative."""
    best_other = mx.where(chosen >= top_two[:, 0], top_two[:, 1], top_two[:, 0])
    return mx.exp(chosen - log_total) - mx.exp(best_other - log_total)


def take_token(logits: mx.array, token: mx.array) -> mx.array:
    """Each row's logit of its token ([B, V], [B] -> [B])."""
    return mx.take_along_axis(logits, token[:, None].astype(mx.int32), axis=-1)[:, 0]
