"""The four generation drivers (single stream, batch stream, server, evaluation) give the text,
tokens, finish reasons and Entropix metrics recorded before generation was split into layers.

`tests/data/pinned_outputs.json` was written by this module (`PIN_RECORD=1 pytest
tests/test_pinned_outputs.py`) on the code before the move; the tests compare against it.
Tokens, text and finish reasons must be equal; metrics within 1e-4 (float32 arithmetic on
the same machine, the same kernels).
"""

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest

from entropix_mlx import stream_batch_generate, stream_generate
from entropix_mlx.evaluation import Arm, Task, arith_items, run_eval
from entropix_mlx.sampling import SamplerConfig

PINNED = Path(__file__).parent / "data" / "pinned_outputs.json"
RECORD = os.environ.get("PIN_RECORD") == "1"
TINY_CONFIG = SamplerConfig(pause_token=".")  # the tiny byte-level vocabulary has no "..."
METRIC_TOLERANCE = 1e-4


def response_record(r) -> dict:
    return {
        "text": r.text,
        "token": r.token,
        "strategy": r.strategy,
        "finish_reason": r.finish_reason,
        "metrics": {k: round(v, 6) for k, v in r.metrics.items()},
        "index": getattr(r, "index", 0),
    }


def check(name: str, got):
    """Compare `got` with the pinned value of `name` (or record it under PIN_RECORD=1)."""
    pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    if RECORD:
        pinned[name] = got
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        return
    assert name in pinned, f"{name} was never pinned"
    assert_same(pinned[name], json.loads(json.dumps(got)), name)


def assert_same(expected, got, where: str):
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            assert_same(expected[key], got[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (e, g) in enumerate(zip(expected, got)):
            assert_same(e, g, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(got, bool):
        assert math.isclose(got, expected, rel_tol=METRIC_TOLERANCE, abs_tol=METRIC_TOLERANCE), (
            f"{where}: {got} != {expected}"
        )
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def test_single_stream(tiny):
    model, tokenizer, _ = tiny
    for name, kwargs in {
        "entropix": dict(config=TINY_CONFIG, seed=3),
        "greedy": dict(sampler="greedy"),
        "standard": dict(sampler="standard", config=TINY_CONFIG.replace(temp=0.9), seed=4),
        "look_ahead": dict(config=TINY_CONFIG.replace(branch_k=2), seed=5),
    }.items():
        responses = stream_generate(model, tokenizer, "the tiny test", max_tokens=20, **kwargs)
        check(f"single/{name}", [response_record(r) for r in responses])


def test_batch_stream(tiny):
    model, tokenizer, _ = tiny
    prompts = ["hello", "the tiny test", "hello", [{"role": "user", "content": "hi"}]]
    for name, kwargs in {
        "entropix": dict(config=TINY_CONFIG, seed=7, stop=["u"]),
        "greedy": dict(sampler="greedy", max_tokens=9, stop=["\x7f\n"]),
        "look_ahead": dict(config=TINY_CONFIG.replace(branch_k=2), seed=8),
    }.items():
        kwargs.setdefault("max_tokens", 16)
        responses = stream_batch_generate(model, tokenizer, prompts, **kwargs)
        check(f"batch/{name}", [response_record(r) for r in responses])


def test_server(tiny):
    pytest.importorskip("starlette", reason="the server extra is not installed")
    from starlette.testclient import TestClient

    from entropix_mlx.server import create_app

    model, tokenizer, info = tiny
    info = dataclasses.replace(info, sampler_preset={"pause_token_id": 16})
    bodies = {
        "completion": (
            "/v1/completions",
            dict(prompt="the tiny", max_tokens=12, seed=2, n=2, trace=True, logprobs=2),
        ),
        "chat_stop": (
            "/v1/chat/completions",
            dict(
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=12,
                seed=3,
                stop=["\x06\x06"],
            ),
        ),
    }
    with TestClient(create_app(model, tokenizer, info, max_tokens_limit=16)) as client:
        for name, (route, body) in bodies.items():
            answer = client.post(route, json=body).json()
            for key in ("id", "created", "model"):
                answer.pop(key)
            for choice in answer["choices"]:
                for record in choice.get("entropix_trace") or []:
                    record.pop("seconds", None)
            check(f"server/{name}", answer)


def test_evaluation(tiny):
    model, tokenizer, _ = tiny
    task = Task("t", "generate", "Q: 1+1=2\n", tuple(arith_items(3)), stop=("\n",), max_tokens=6)
    arms = [
        Arm("greedy", "greedy", TINY_CONFIG),
        Arm("entropix", "entropix", TINY_CONFIG),
        Arm("look", "entropix", TINY_CONFIG.replace(branch_k=2)),
    ]
    run = run_eval(model, tokenizer, task, arms, seeds=(0, 1), batch_size=4, progress=False)
    keep = ("arm", "item", "seed", "completion", "finish", "tokens", "strategies", "row_tokens")
    check("evaluation", [{k: r[k] for k in keep} for r in run.records])


@pytest.mark.real_model
def test_default_model(default_model):
    model, tokenizer, _ = default_model
    responses = stream_generate(
        model, tokenizer, [{"role": "user", "content": "Name a colour."}], max_tokens=16, seed=1
    )
    check("default/single", [response_record(r) for r in responses])
    batch = stream_batch_generate(
        model, tokenizer, ["1, 2, 3,", "The sky is"], max_tokens=8, seed=2
    )
    check("default/batch", [response_record(r) for r in batch])
