"""Shared prompt prefixes: prefill once, then fork a copy of the KV cache per continuation."""

import copy
from typing import List, Sequence, Tuple

import mlx.core as mx
from mlx_lm.models.cache import can_trim_prompt_cache

from ..generate import prefill as prefill_tokens


def prefill(model, ids: Sequence[int], cache: List) -> List:
    """Run `ids` through the model into `cache` (in place; returned for chaining)."""
    return prefill_tokens(model, mx.array(ids)[None], cache) if ids else cache


def fork(cache: List, keep: int) -> List:
    """A copy of `cache` holding only its first `keep` positions."""
    forked = copy.deepcopy(cache)
    for layer in forked:
        if layer.offset > keep:
            layer.trim(layer.offset - keep)
    return forked


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class SharedPrefix:
    """The KV cache of a prefix that many prompts start with (e.g. the few-shot examples)."""

    def __init__(self, model, prefix_ids: Sequence[int]):
        self.model = model
        self.ids = list(prefix_ids)
        self.cache = prefill(model, self.ids, model.make_cache())

    def extend(self, ids: Sequence[int]) -> Tuple[List, List[int]]:
        """(a cache holding all of `ids` but the last token, [that last token]).

        `ids` is the whole prompt, encoded in one piece: where its tokens part from the
        prefix's (BPE merges across the join), the copy is cut back and the rest prefilled.
        """
        if not ids:
            raise ValueError("the prompt is empty")
        keep = min(common_prefix_length(self.ids, ids), len(ids) - 1)
        if keep < len(self.ids) and not can_trim_prompt_cache(self.cache):
            keep = 0  # a full sliding-window cache cannot be cut back: start afresh
        start = fork(self.cache, keep) if keep else self.model.make_cache()
        cache = prefill(self.model, ids[keep:-1], start)
        return cache, list(ids[-1:])
