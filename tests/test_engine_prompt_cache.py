"""engine.prompt_cache: a prompt continued from a kept prefix equals a full forward pass."""

import mlx.core as mx

from entropix_mlx.engine.decode import prefill
from entropix_mlx.engine.prompt_cache import PromptCache


def test_a_prompt_continues_from_the_longest_kept_prefix(tiny):
    model, tokenizer, _ = tiny
    full = list(tokenizer.encode("tat tat tot\n9 + 9 ="))
    reference = model(mx.array([full]))[0, -1]
    # A clean split, one where the kept tokens part from the prompt's, and the whole prompt.
    for prefix in (full[:5], full[:7] + [3, 4], full):
        kept = PromptCache(model, max_bytes=2**30)
        kept.store(prefix, prefill(model, mx.array([prefix]), model.make_cache()))
        cache, rest = kept.fetch(full)
        assert len(rest) >= 1 and cache[0].offset + len(rest) == len(full)
        agree = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), len(prefix))
        assert cache[0].offset == min(agree, len(full) - 1)
        prefill(model, mx.array([rest[:-1]]), cache)
        cached = model(mx.array([rest[-1:]]), cache)[0, -1]
        assert mx.allclose(cached, reference, atol=1e-4).item()


def test_nothing_kept_gives_a_new_cache_and_the_whole_prompt(tiny):
    model, tokenizer, _ = tiny
    ids = list(tokenizer.encode("hello"))
    cache, rest = PromptCache(model, max_bytes=2**30).fetch(ids)
    assert cache[0].offset == 0 and rest == ids


def test_the_kept_state_is_copied_not_shared(tiny):
    model, tokenizer, _ = tiny
    ids = list(tokenizer.encode("hello there"))
    kept = PromptCache(model, max_bytes=2**30)
    kept.store(ids, prefill(model, mx.array([ids]), model.make_cache()))
    first, _ = kept.fetch(ids + [5])
    prefill(model, mx.array([[5, 6, 7]]), first)
    second, rest = kept.fetch(ids + [5])
    assert second[0].offset == len(ids) and rest == [5]
