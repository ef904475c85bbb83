"""The Llama port on tiny random models: cache paths, explicit scores, parity with mlx-lm."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import KVCache
from mlx_lm.utils import load_model

from entropix_mlx.model.llama import Attention, last_query_scores

from .tiny import tiny_args, tiny_model, write_folder

TOKENS = mx.array([[5, 17, 42, 99, 3, 250, 7, 8, 61, 12, 33]])


def as_np(x):
    return np.array(x.astype(mx.float32))


def decode_one_by_one(model, tokens, cache, prefill: int):
    """Logits of every position, computed as a prefill then one token at a time."""
    outs = [model(tokens[:, :prefill], cache)]
    for i in range(prefill, tokens.shape[1]):
        outs.append(model(tokens[:, i : i + 1], cache))
    return mx.concatenate(outs, axis=1)


@pytest.mark.parametrize("max_kv_size", [None, 64])
def test_cache_and_no_cache_agree(max_kv_size):
    model = tiny_model()
    full = model(TOKENS)
    stepped = decode_one_by_one(model, TOKENS, model.make_cache(max_kv_size), prefill=4)
    np.testing.assert_allclose(as_np(stepped), as_np(full), atol=1e-4)


def test_last_only_and_scores_match_the_full_pass():
    model = tiny_model()
    full = model(TOKENS)
    cache = model.make_cache()
    model(TOKENS[:, :-1], cache)
    last, scores = model(TOKENS[:, -1:], cache, return_scores=True, last_only=True)
    np.testing.assert_allclose(as_np(last[:, -1]), as_np(full[:, -1]), atol=1e-4)
    _, full_scores = model(TOKENS, return_scores=True)
    assert scores.shape == (1, model.args.num_attention_heads, TOKENS.shape[1])
    np.testing.assert_allclose(as_np(scores), as_np(full_scores), atol=1e-4)


def test_last_query_scores_pair_query_heads_with_their_kv_head():
    B, H, KV, L, D = 2, 6, 2, 5, 8
    q = mx.random.normal((B, H, 3, D), key=mx.random.key(1))
    k = mx.random.normal((B, KV, L, D), key=mx.random.key(2))
    scores = last_query_scores(q, k, scale=0.5)
    group = H // KV
    q_np, k_np = as_np(q), as_np(k)
    manual = np.einsum("bhd,bhld->bhl", q_np[:, :, -1], np.repeat(k_np, group, axis=1)) * 0.5
    np.testing.assert_allclose(as_np(scores), manual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,atol", [(mx.float32, 1e-5), (mx.float16, 2e-3)])
@pytest.mark.parametrize("batch", [1, 2])
def test_explicit_scores_reproduce_the_fused_attention(dtype, atol, batch):
    """softmax(scores) @ V through o_proj equals the fused SDPA output for the newest query."""
    args = tiny_args()
    mx.random.seed(3)
    attn = Attention(args)
    attn.set_dtype(dtype)
    x = mx.random.normal((batch, 7, args.hidden_size)).astype(dtype)
    cache = KVCache()
    attn(x[:, :5], "causal", cache)
    out, scores = attn(x[:, 5:], "causal", cache, return_scores=True)
    values = cache.values[..., : cache.offset, :]  # [B, KV, L, D]
    group = args.num_attention_heads // args.num_key_value_heads
    probs = mx.softmax(scores, axis=-1).astype(dtype)  # [B, H, L]
    values = mx.repeat(values, group, axis=1)
    heads = (probs[:, :, None, :] @ values)[:, :, 0, :]  # [B, H, D]
    explicit = attn.o_proj(heads.reshape(batch, 1, -1))
    np.testing.assert_allclose(as_np(explicit[:, 0]), as_np(out[:, -1]), atol=atol)


@pytest.mark.parametrize(
    "rope_scaling",
    [
        None,
        {"type": "linear", "factor": 2.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ],
)
@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_mlx_lm_llama(tmp_path, rope_scaling, tied):
    model = tiny_model(rope_scaling=rope_scaling, tie_word_embeddings=tied)
    theirs, _ = load_model(write_folder(tmp_path / "tiny", model))
    ours_logits = model(TOKENS)
    np.testing.assert_allclose(as_np(ours_logits), as_np(theirs(TOKENS)), atol=1e-4)
    # And step by step through both caches.
    cache = model.make_cache()
    their_cache = [KVCache() for _ in theirs.layers]
    np.testing.assert_allclose(
        as_np(decode_one_by_one(model, TOKENS, cache, 6)),
        as_np(decode_one_by_one(theirs, TOKENS, their_cache, 6)),
        atol=1e-4,
    )


def test_config_ignores_unknown_keys_and_checks_heads():
    from entropix_mlx.model.llama import ModelArgs

    args = ModelArgs.from_dict({**vars(tiny_args()), "torch_dtype": "bfloat16", "unknown": 1})
    assert args.head_dim == 16
    with pytest.raises(ValueError, match="num_key_value_heads"):
        tiny_args(num_key_value_heads=3)
