"""KV states of earlier prompts, kept by token prefix, so that a prompt starting with one (a
conversation's next turn, a few-shot prefix) prefills only its new tokens: mlx-lm's
`LRUPromptCache` (least recently used first out), bounded in bytes. Chat, the server and the
evaluation all continue prompts through `PromptCache.fetch` and keep states with `store`."""

from typing import Any, List, Sequence, Tuple

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

MAX_ENTRIES = 256  # sequences kept at most; the byte bound usually binds first


class PromptCache:
    def __init__(self, model, max_bytes: int):
        self.model = model
        self.lru = LRUPromptCache(max_size=MAX_ENTRIES, max_bytes=max_bytes)

    def fetch(self, prompt_ids: Sequence[int]) -> Tuple[List[Any], List[int]]:
        """(a copy of the KV cache of the longest kept prefix of `prompt_ids`, or a new empty one;
        the ids still to run). At least the last id is left to run: its logits give the first
        new token. A kept sequence that parts from `prompt_ids` (BPE merges across a join) is cut
        back to where they agree, where its cache can be cut back."""
        cache, rest = self.lru.fetch_nearest_cache("model", list(prompt_ids))
        # A sliding-window layer's full rotating cache cannot give back its last token.
        if cache is None or (not rest and not can_trim_prompt_cache(cache)):
            return self.model.make_cache(), list(prompt_ids)
        if not rest:
            trim_prompt_cache(cache, 1)
            rest = list(prompt_ids[-1:])
        return cache, list(rest)

    def store(self, token_ids: Sequence[int], cache: List[Any]):
        """Keep `cache` as the state after `token_ids` (cut to the positions it holds)."""
        held = cache[0].offset
        if held:
            self.lru.insert_cache("model", list(token_ids[:held]), cache)

    @property
    def nbytes(self) -> int:
        return self.lru.nbytes
