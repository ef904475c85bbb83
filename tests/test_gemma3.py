"""Gemma 3's sliding-window layers through the engine: their rotating caches, alone and batched,
and configs in the form mlx-community folders still carry (the tiny reference of
tests/references/gemma3: window 4, seven layers ending on a sliding one)."""

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import BatchRotatingKVCache, KVCache, RotatingKVCache

from entropix_mlx.engine.batch import BatchGenerator
from entropix_mlx.engine.decode import generate_step
from entropix_mlx.loading import load
from entropix_mlx.loading.convert import convert
from entropix_mlx.sampling import SamplerConfig, make_sampler

GEMMA3 = Path(__file__).resolve().parent / "references" / "gemma3"
CONFIG = SamplerConfig(pause_token=".")
PROMPTS = ["some other words and more words here and there", "the fox", "hello, the 12345 test"]


@pytest.fixture(scope="module")
def tiny():
    return load(str(GEMMA3 / "gemma3.gguf"))


def test_caches_follow_the_layer_types(tiny):
    model, _, info = tiny
    caches = model.make_cache()
    for kind, cache in zip(info.args.layer_types, caches):
        if kind == "sliding_attention":
            assert isinstance(cache, RotatingKVCache) and cache.max_size == info.args.sliding_window
        else:
            assert type(cache) is KVCache


def single(model, sampler, ids, seed, n):
    return list(generate_step(mx.array(ids), model, sampler, max_tokens=n, seed=seed))


def test_batched_rows_equal_their_single_runs_past_the_window(tiny):
    """Rows whose prompts outgrow the window, prefilled alone (`fork`: a rotated cache merged
    into the batch) or together (`insert`), decode as they do alone: tokens, log-probabilities
    and all six metrics."""
    model, tokenizer, _ = tiny
    entropix = make_sampler("entropix", CONFIG, tokenizer)
    # The random model's Entropix rows repeat one token; hot sampling varies the cache too.
    hot = make_sampler("standard", SamplerConfig(temp=3.0, top_k=100, top_p=1.0, min_p=0.0))
    ids = [tokenizer.encode(p) for p in PROMPTS]
    assert len(ids[0]) > 4 * 4
    batch = BatchGenerator(model)
    uids = batch.insert_choices(ids[0], seeds=[1, 2], sampler=entropix, max_tokens=10)
    uids.append(batch.insert(ids[1], entropix, seed=3, max_tokens=10))
    uids.append(batch.insert(ids[2], hot, seed=4, max_tokens=10))
    samplers = [entropix, entropix, entropix, hot]
    rows = {}
    while steps := batch.next():
        if batch.cache:
            assert isinstance(batch.cache[0], BatchRotatingKVCache)
        for step in steps:
            rows.setdefault(step.uid, []).append(step.step)
    expected = [(ids[0], 1), (ids[0], 2), (ids[1], 3), (ids[2], 4)]
    for uid, sampler, (prompt, seed) in zip(uids, samplers, expected):
        alone = single(model, sampler, prompt, seed, 10)
        assert [s.token for s in rows[uid]] == [s.token for s in alone]
        if sampler is hot:
            assert len({s.token for s in alone}) >= 3
        for b, s in zip(rows[uid], alone):
            assert b.logprob == pytest.approx(s.logprob, abs=1e-4)
            for name, value in s.metrics.items():
                assert b.metrics[name] == pytest.approx(value, abs=1e-4), name


def test_converted_folder_config_reads_back_the_same_model(tiny, tmp_path):
    """`convert` writes Gemma's settings in the form mlx-lm reads (rope_theta,
    rope_local_base_freq, sliding_window_pattern, query_pre_attn_scalar): they read back as
    the same layer types and RoPE bases, and the same logits."""
    model, _, info = tiny
    folder = convert(str(GEMMA3 / "gemma3.gguf"), tmp_path / "mlx", bits=None)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["sliding_window_pattern"] == 6
    for key in ("layer_types", "rope_parameters"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    reread, _, reread_info = load(str(folder))
    assert reread_info.args.layer_types == info.args.layer_types
    assert (reread_info.args.rope_theta, reread_info.args.rope_local_base_freq) == (1e6, 1e4)
    ids = mx.array([[5, 60, 7, 200, 31, 9, 12, 44]])
    assert mx.allclose(reread(ids), model(ids), atol=1e-5).item()


def test_a_kept_prompt_past_the_window_is_not_fed_twice(tiny):
    """A full sliding-window cache cannot drop its last token to recompute its logits: the
    prompt cache runs such a prompt afresh rather than feed that token a second time."""
    from entropix_mlx.engine.prompt_cache import PromptCache

    model, tokenizer, _ = tiny
    ids = tokenizer.encode(PROMPTS[0])
    cache = model.make_cache()
    model(mx.array(ids)[None], cache=cache)
    kept = PromptCache(model, 1 << 30)
    kept.store(ids, cache)
    fetched, rest = kept.fetch(ids)
    assert fetched[0].offset == 0 and rest == ids
    short = ids[:3]  # within the window of 4: trimmed by one token, as before
    cache = model.make_cache()
    model(mx.array(short)[None], cache=cache)
    kept.store(short, cache)
    fetched, rest = kept.fetch(short)
    assert fetched[0].offset == len(short) - 1 and rest == short[-1:]


def test_a_shared_prefix_past_the_window_is_not_cut_back(tiny):
    """Evaluation's shared few-shot prefix: where a prompt parts from it inside a full
    sliding-window cache, the prompt is prefilled afresh; either way its logits are those of
    the prompt run whole."""
    from entropix_mlx.engine.decode import prefill
    from entropix_mlx.engine.prompt_cache import PromptCache

    model, tokenizer, _ = tiny
    ids = tokenizer.encode(PROMPTS[0])
    prefix = ids[:-2] + [7]  # parts from the prompt 3 tokens from the end
    kept = PromptCache(model, 1 << 30)
    kept.store(prefix, prefill(model, mx.array([prefix]), model.make_cache()))
    for prompt in (ids, ids[:3] + [9, 9]):
        cache, rest = kept.fetch(prompt)
        prefill(model, mx.array([rest[:-1]]), cache)
        logits = model(mx.array([rest[-1:]]), cache=cache)[0, -1]
        whole = model(mx.array([prompt]))[0, -1]
        assert mx.allclose(logits, whole, atol=1e-4).item()
