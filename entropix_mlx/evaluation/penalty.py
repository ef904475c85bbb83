"""The repetition-penalty baseline: mlx-lm's logits processor on one row's own recent tokens."""

import functools
from typing import Sequence

import mlx.core as mx
from mlx_lm.sample_utils import make_repetition_penalty

PENALTY_CONTEXT = 20  # mlx-lm's default repetition_context_size


def with_repetition_penalty(step, penalty: float, prompt: Sequence[int]):
    """A sampler step for ONE row that first applies mlx-lm's repetition penalty (CTRL's: logits of
    the last PENALTY_CONTEXT tokens, prompt included, divided by `penalty`, or multiplied where
    negative). It keeps that row's tokens, so each row needs its own step."""
    processor = make_repetition_penalty(penalty, PENALTY_CONTEXT)
    recent = mx.array(list(prompt[-PENALTY_CONTEXT:-1]), dtype=mx.int32)

    @functools.wraps(step)  # keeps what the step says of itself (e.g. whether it reads scores)
    def penalized(logits, scores, prev_token, key):
        nonlocal recent
        if logits.shape[0] != 1:
            raise ValueError("a repetition-penalty step serves exactly one row")
        recent = mx.concatenate([recent, prev_token.astype(mx.int32)])[-PENALTY_CONTEXT:]
        return step(processor(recent, mx.array(logits)), scores, prev_token, key)

    return penalized
