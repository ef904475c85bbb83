"""KV states of earlier prompts, kept by token prefix, so a conversation's next turn prefills
only its new tokens: mlx-lm's `LRUPromptCache` (least recently used first out), bounded in bytes."""

from typing import Any, List, Optional, Sequence, Tuple

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

MAX_ENTRIES = 256  # sequences kept at most; the byte bound usually binds first


class PromptCache:
    def __init__(self, max_bytes: int):
        self.lru = LRUPromptCache(max_size=MAX_ENTRIES, max_bytes=max_bytes)

    def fetch(self, prompt_ids: Sequence[int]) -> Tuple[Optional[List[Any]], List[int]]:
        """(a copy of the cache of the longest kept prefix of `prompt_ids`, or None; the ids still
        to run). At least the last id is left to run: its logits give the first new token."""
        cache, rest = self.lru.fetch_nearest_cache("model", list(prompt_ids))
        if cache is not None and not rest:
            # A sliding-window layer's full rotating cache cannot give back its last token.
            if not can_trim_prompt_cache(cache):
                return None, list(prompt_ids)
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
