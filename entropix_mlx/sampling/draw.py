"""One exact sampling draw over a sorted candidate set, and the plain samplers."""

from __future__ import annotations

import numbers
from typing import Union

import mlx.core as mx

from ..errors import ConfigError
from .config import MAX_CANDIDATES, SamplerConfig
from .metrics import logsumexp

Number = Union[float, int, mx.array]


def top_candidates(logits: mx.array, k: int = MAX_CANDIDATES) -> tuple[mx.array, mx.array]:
    """The k largest logits of each row in descending order, and their token ids ([B, k])."""
    k = min(k, logits.shape[-1])
    ids = mx.argpartition(-logits, kth=k - 1, axis=-1)[:, :k]
    values = mx.take_along_axis(logits, ids, axis=-1)
    order = mx.argsort(-values, axis=-1)
    return mx.take_along_axis(values, order, axis=-1), mx.take_along_axis(ids, order, axis=-1)


def candidate_log_probs(logits: mx.array, candidate_logits: mx.array, temperature: mx.array):
    """log q of each candidate, q = softmax(logits / temperature) over the FULL vocabulary."""
    t = temperature[:, None]
    # Shifted so that the largest is 0: a tiny temperature sends the others to -inf, not to inf.
    top = candidate_logits[:, :1]
    return (candidate_logits - top) / t - logsumexp((logits - top) / t)


def keep_mask(log_q: mx.array, top_p: mx.array, top_k: mx.array, min_p: mx.array) -> mx.array:
    """Which sorted candidates survive min_p, then top_k, then top_p (nucleus)."""
    q = mx.exp(log_q)
    above_min_p = q >= min_p[:, None] * q[:, :1]
    in_top_k = mx.arange(q.shape[-1]) < top_k[:, None]
    # All three filters drop a tail of the descending order, so the mass before a
    # kept token is the same whether or not earlier filters ran.
    mass_before = mx.cumsum(q, axis=-1, inclusive=False)
    in_nucleus = mass_before < top_p[:, None]
    return above_min_p & in_top_k & in_nucleus


def categorical(logits: mx.array, key: mx.array, num_samples=None) -> mx.array:
    """Draws from softmax(logits [B, n]) over the last axis: [B] or [B, num_samples].

    `key` is one key for all rows, or [B, 2] keys, one per row: then row i's draws depend
    only on its own logits and key, exactly as in a single-row run with that key.
    """
    if key.ndim == 1:
        return mx.random.categorical(logits, axis=-1, num_samples=num_samples, key=key)
    rows = [
        mx.random.categorical(logits[i : i + 1], axis=-1, num_samples=num_samples, key=key[i])
        for i in range(logits.shape[0])
    ]
    return mx.concatenate(rows, axis=0)


def draw_ranks(log_q: mx.array, keep: mx.array, key: mx.array, num_samples: int = 1) -> mx.array:
    """Exact draws (Gumbel-max) from the kept, renormalised candidates: ranks [B, num_samples]."""
    return categorical(mx.where(keep, log_q, -mx.inf), key, num_samples)


def as_row_array(value: Number, batch: int) -> mx.array:
    """A per-row float32 parameter [B] from a Python number or an array."""
    return mx.broadcast_to(mx.array(value, dtype=mx.float32), (batch,))


def sample(
    logits: mx.array,
    temperature: Number,
    top_p: Number,
    top_k: Number,
    min_p: Number,
    key: mx.array,
) -> mx.array:
    """One exact draw per row: softmax(logits / temperature), then min_p, top_k, top_p.

    Parameters are numbers or [B] arrays; temperature 0 means argmax; top_k is capped
    at MAX_CANDIDATES. Returns token ids [B] int32.
    """
    logits = logits.astype(mx.float32)
    batch = logits.shape[0]
    temperature, top_p, top_k, min_p = (
        as_row_array(v, batch) for v in (temperature, top_p, top_k, min_p)
    )
    candidate_logits, candidate_ids = top_candidates(logits)
    rank = sample_rank(logits, candidate_logits, temperature, top_p, top_k, min_p, key)
    return take_rank(candidate_ids, rank)


def sample_rank(
    logits, candidate_logits, temperature, top_p, top_k, min_p, key, num_draws=None, max_draws=1
):
    """Rank of the drawn candidate [B]; with num_draws [B], the best (lowest rank,
    i.e. highest log-probability) of that many draws per row. Temperature 0: rank 0."""
    sampling = temperature > 0
    log_q = candidate_log_probs(logits, candidate_logits, mx.where(sampling, temperature, 1.0))
    ranks = draw_ranks(log_q, keep_mask(log_q, top_p, top_k, min_p), key, max_draws)
    if num_draws is not None:
        unused = mx.arange(max_draws) >= num_draws[:, None]
        ranks = mx.where(unused, candidate_logits.shape[-1], ranks)
    return mx.where(sampling, ranks.min(axis=-1), 0)


def take_rank(candidate_ids: mx.array, rank: mx.array) -> mx.array:
    return mx.take_along_axis(candidate_ids, rank[:, None], axis=-1)[:, 0].astype(mx.int32)


def make_standard_sampler(
    temperature: float = 0.7, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0
):
    """A plain sampler with the Entropix step signature (strategy -1, empty info).

    temperature 0 gives greedy; top_k 0 means no top_k (then top_p/min_p sort the
    whole vocabulary).
    """
    _check_standard(temperature, top_p, top_k, min_p)
    top_k = int(top_k)
    if temperature == 0:
        return make_greedy_sampler()

    def step(logits, scores, prev_token, key):
        logits = logits.astype(mx.float32)
        batch, vocab = logits.shape
        if top_k == 0 and top_p == 1.0 and min_p == 0.0:
            shifted = logits - mx.max(logits, axis=-1, keepdims=True)  # as in candidate_log_probs
            token = categorical(shifted * (1 / temperature), key).astype(mx.int32)
        else:
            candidate_logits, candidate_ids = top_candidates(logits, top_k or vocab)
            k = candidate_logits.shape[-1]
            t, p, k, m = (as_row_array(v, batch) for v in (temperature, top_p, k, min_p))
            token = take_rank(candidate_ids, sample_rank(logits, candidate_logits, t, p, k, m, key))
        return token, mx.full(token.shape, -1, dtype=mx.int32), {}

    step.reads_scores = False
    return step


def make_greedy_sampler():
    """Argmax with the Entropix step signature (strategy -1, empty info)."""

    def step(logits, scores, prev_token, key):
        token = mx.argmax(logits, axis=-1).astype(mx.int32)
        return token, mx.full(token.shape, -1, dtype=mx.int32), {}

    step.reads_scores = False
    return step


def _check_standard(temperature, top_p, top_k, min_p):
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    # Reuse SamplerConfig's checks so errors read the same everywhere.
    SamplerConfig(temp=temperature, top_p=top_p, min_p=min_p)
