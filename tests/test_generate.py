"""Generation: greedy parity with mlx-lm and the reference, seeds, stops, traces."""

import json

import mlx.core as mx
import pytest

from entropix_mlx.engine.decode import generate_step
from entropix_mlx.generate import stream_generate
from entropix_mlx.sampling import STRATEGIES, SamplerConfig
from entropix_mlx.trace import FIELDS, TraceWriter, read_trace

TINY_CONFIG = SamplerConfig(pause_token=".")  # the tiny byte-level vocabulary has no "..." token


def tokens_of(model, tokenizer, prompt, **kwargs):
    kwargs.setdefault("config", TINY_CONFIG)
    return [r.token for r in stream_generate(model, tokenizer, prompt, **kwargs)]


def test_greedy_matches_a_plain_argmax_loop(tiny):
    model, tokenizer, _ = tiny
    prompt = tokenizer.encode("the tiny test")
    cache = model.make_cache()
    logits = model(mx.array([prompt]), cache)
    expected = []
    for _ in range(20):
        token = mx.argmax(logits[0, -1]).item()
        expected.append(token)
        logits = model(mx.array([[token]]), cache)
    steps = list(generate_step(mx.array(prompt), model, max_tokens=20, prefill_step_size=3))
    assert [s.token for s in steps] == expected
    assert all(s.strategy is None and s.logprob <= 0 for s in steps)


def test_entropix_seeds_reproduce_and_differ(tiny):
    model, tokenizer, _ = tiny
    run = lambda seed: tokens_of(model, tokenizer, "hello", max_tokens=24, seed=seed)  # noqa: E731
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_trace_has_one_valid_record_per_token(tiny, tmp_path):
    model, tokenizer, _ = tiny
    responses = list(
        stream_generate(model, tokenizer, "hello", config=TINY_CONFIG, max_tokens=16, seed=3)
    )
    with TraceWriter(tmp_path / "t.jsonl") as writer:
        for response in responses:
            writer.write(response)
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(records) == len(responses) == responses[-1].generation_tokens
    assert [r["index"] for r in records] == list(range(len(records)))
    assert all(set(r) == set(FIELDS) and r["strategy"] in STRATEGIES for r in records)
    assert all(r["logits_entropy"] >= 0 and 0 < r["top_p"] <= 1 for r in records)
    histogram = {s: sum(r["strategy"] == s for r in records) for s in STRATEGIES}
    assert sum(histogram.values()) == len(records)
    assert records[-1]["finish_reason"] in ("stop", "length")
    assert "".join(r["text"] for r in records) == "".join(r.text for r in responses)


def test_read_trace_rejects_other_files(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"index": 0}\n')
    with pytest.raises(ValueError, match="is not a trace record"):
        read_trace(path)


def test_stops_at_eos_and_reports_the_reason(tiny):
    model, tokenizer, _ = tiny
    eos = next(iter(tokenizer.eos_token_ids))

    def always_eos(logits, scores, prev, key):
        token = mx.full((logits.shape[0],), eos, dtype=mx.int32)
        return token, mx.full(token.shape, -1, dtype=mx.int32), {}

    responses = list(stream_generate(model, tokenizer, "hello", sampler=always_eos, max_tokens=10))
    assert len(responses) == 1 and responses[0].finish_reason == "stop"
    responses = list(stream_generate(model, tokenizer, "hello", sampler="greedy", max_tokens=5))
    assert responses[-1].finish_reason in ("length", "stop") and len(responses) <= 5


def test_greedy_matches_mlx_lm_generate_step(default_model, smollm2_reference, tmp_path_factory):
    """Token for token, 64 tokens, 3 prompts, on the very same (converted) weights."""
    from mlx_lm import load as mlx_lm_load
    from mlx_lm.generate import generate_step as mlx_lm_generate_step

    from entropix_mlx.loading import DEFAULT_MODEL
    from entropix_mlx.loading.convert import convert
    from entropix_mlx.loading.cpu_weights import dequantize_model

    model, tokenizer, info = default_model
    folder = convert(DEFAULT_MODEL, tmp_path_factory.mktemp("converted") / "mlx")
    theirs, _ = mlx_lm_load(str(folder))
    if info.weight_dtype == "float32":  # the CPU policy dequantized ours: the same for mlx-lm
        dequantize_model(theirs)
    for i in (1, 3, 4):
        prompt = mx.array(smollm2_reference[f"ids_{i}"])
        ours = [s.token for s in generate_step(prompt, model, max_tokens=64)]
        expected = [int(t) for t, _ in mlx_lm_generate_step(prompt, theirs, max_tokens=64)]
        assert ours == expected, f"prompt {i}"


@pytest.mark.real_model
def test_greedy_reproduces_the_reference_tokens(default_model, smollm2_reference):
    model, tokenizer, _ = default_model
    for i in range(int(smollm2_reference["n"])):
        expected = smollm2_reference[f"greedy_{i}"].tolist()
        ids = smollm2_reference[f"ids_{i}"].tolist()
        got = tokens_of(model, tokenizer, ids, sampler="greedy", max_tokens=len(expected))
        assert got == expected, f"prompt {i}"


def test_a_stop_string_ends_a_single_stream_before_it(tiny):
    model, tokenizer, _ = tiny
    full = "".join(
        r.text for r in stream_generate(model, tokenizer, "hello", sampler="greedy", max_tokens=12)
    )
    stop = next(c for c in full if c != full[0])  # the first new character ends the answer
    cut = full.index(stop)
    responses = list(
        stream_generate(model, tokenizer, "hello", sampler="greedy", max_tokens=12, stop=[stop])
    )
    assert "".join(r.text for r in responses) == full[:cut]
    assert responses[-1].finish_reason == "stop" and len(responses) < 12
