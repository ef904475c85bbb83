"""Look-ahead: forced distributions pick the winner; budget, reproducibility, trace."""

import json
import math

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import KVCache

from entropix_mlx.engine.batch import BatchGenerator
from entropix_mlx.engine.lookahead import (
    LookAheadGenerator,
    LookAheadRules,
    forced_margins,
    with_candidates,
)
from entropix_mlx.generate import stream_generate
from entropix_mlx.sampling import SamplerConfig, make_sampler

from .tiny import tiny_model, write_float_gguf

V = 8
A, B, C, D, E, F, NL, EOS = range(V)
BRANCH = 2


def bigram_table() -> np.ndarray:
    """Next-token probabilities given the last token. After A: B 0.40 > C 0.35 > D 0.25; after
    B a near coin flip (small margins); after C a sure path C -> E -> F -> newline."""
    p = np.full((V, V), 1e-6)
    p[A, [B, C, D]] = [0.40, 0.35, 0.25]
    p[B, [E, F]] = [0.52, 0.48]
    p[C, E] = p[E, F] = p[F, NL] = p[D, F] = 1.0
    p[NL, A] = 1.0
    return p / p.sum(axis=1, keepdims=True)


class BigramModel:
    """A stand-in model whose next-token distribution depends only on the last input token."""

    class args:
        max_position_embeddings = 64

    def __init__(self):
        self.logits = mx.array(np.log(bigram_table()), dtype=mx.float32)

    def make_cache(self, max_kv_size=None):
        return [KVCache()]

    def __call__(self, inputs, cache=None, return_scores=False, last_only=False):
        b, length = inputs.shape
        if cache is not None:
            kv = inputs[:, None, :, None].astype(mx.float32)
            cache[0].update_and_fetch(kv, kv)
        logits = self.logits[inputs[:, -1:] if last_only else inputs]
        return (logits, mx.zeros((b, 2, 4))) if return_scores else logits


class Tokens:
    """Token i is the letter 'abcdef', a newline, or EOS (empty)."""

    eos_token_ids = [EOS]

    def decode(self, ids):
        return "".join("abcdef\n"[i] if i < EOS else "" for i in ids)


def always_branch(logits, scores, prev, key):
    """Greedy tokens, but every step reports the branch strategy."""
    token = mx.argmax(logits, axis=-1).astype(mx.int32)
    return token, mx.full(token.shape, BRANCH, dtype=mx.int32), {}


def run_lane(rules, max_tokens=8, prompt=(A,)):
    gen = LookAheadGenerator(BigramModel(), Tokens())
    uid = gen.insert(
        list(prompt), always_branch, seed=0, max_tokens=max_tokens, eos_ids=[EOS], look_ahead=rules
    )
    steps = []
    while len(gen):
        steps += [s for s in gen.next() if s.uid == uid]
    return gen, steps


def expected_scores(paths, rule):
    """Each path's score computed from the table: the forced first token after A, then greedy."""
    p = bigram_table()
    scores = []
    for path in paths:
        prev, values = A, []
        for token in path:
            row = p[prev]
            other = max(row[j] for j in range(V) if j != token)
            values.append(row[token] - other if rule == "margin" else math.log(row[token]))
            prev = token
        scores.append(sum(values) / len(values))
    return scores


@pytest.mark.parametrize("rule", ["margin", "logprob"])
def test_the_highest_scoring_rollout_wins(rule):
    rules = LookAheadRules(k=3, horizon=6, max_points=1, score=rule)
    gen, steps = run_lane(rules)
    paths = [[B, E, F, NL], [C, E, F, NL], [D, F, NL]]  # each ends at its newline
    want = expected_scores(paths, rule)
    (fork,) = gen.forks
    got = [c["score"] for c in fork["candidates"]]
    assert got == pytest.approx(want, abs=1e-4)
    assert [c["token"] for c in fork["candidates"]] == [B, C, D]
    assert [c["scored_tokens"] for c in fork["candidates"]] == [4, 4, 3]
    winner = int(np.argmax(want))
    assert fork["winner"] == winner and winner != 0  # not simply the most probable first token
    tokens = [s.step.token for s in steps]
    assert tokens[: len(paths[winner])] == paths[winner]  # the rollout's tokens, committed
    assert steps[0].fork is fork and all(s.fork is None for s in steps[1:])


def test_horizon_cuts_the_scored_tokens():
    gen, _ = run_lane(LookAheadRules(k=2, horizon=2, max_points=1))
    assert [c["scored_tokens"] for c in gen.forks[0]["candidates"]] == [2, 2]


@pytest.mark.parametrize("budget", [0, 1, 2, 3])
def test_the_budget_bounds_the_forks(budget):
    gen, steps = run_lane(LookAheadRules(k=2, horizon=2, max_points=budget), max_tokens=12)
    assert len(gen.forks) == budget
    assert sum(s.fork is not None for s in steps) == budget
    assert len(steps) == 12  # every committed token is returned once, in order


def test_first_token_trigger_forks_once_at_the_start():
    gen, steps = run_lane(LookAheadRules(k=3, horizon=8, max_points=5, trigger="first"))
    assert len(gen.forks) == 1 and gen.forks[0]["at"] == 0


def test_cost_counts_every_rollout_token():
    gen = LookAheadGenerator(BigramModel(), Tokens())
    uid = gen.insert(
        [A],
        always_branch,
        seed=0,
        max_tokens=4,
        eos_ids=[EOS],
        look_ahead=LookAheadRules(k=3, horizon=6, max_points=1),
    )
    while len(gen):
        gen.next()
    # three rollouts of 4 tokens each (max_tokens ends them): 12 row tokens
    assert gen.spent[uid] == 12


def test_margin_and_forced_margins_match_by_hand():
    logits = mx.log(mx.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))

    def always_first(logits, scores, prev, key):
        return mx.array([0, 0]), mx.array([-1, -1]), {}

    _, _, info = with_candidates(always_first)(logits, None, None, None)
    assert info["margin"].tolist() == pytest.approx([0.2, -0.7], abs=1e-6)
    assert forced_margins([math.log(0.5), math.log(0.3)]) == pytest.approx([0.2, -0.2])


# --- the real tiny model -------------------------------------------------------------------

# Thresholds that send most tokens of the random tiny model to the branch quadrant.
BRANCHY = SamplerConfig(
    pause_token=".", low_ent=0.0, low_vent=0.0, med_ent=50.0, high_ent=60.0, high_vent=0.001
)


def test_branch_k_zero_gives_the_original_tokens(tiny):
    model, tokenizer, _ = tiny
    assert SamplerConfig().branch_k == 0
    plain = [
        r.token
        for r in stream_generate(model, tokenizer, "hello", config=BRANCHY, seed=3, max_tokens=12)
    ]
    batch = BatchGenerator(model)
    sampler = make_sampler("entropix", BRANCHY, tokenizer)
    ids = tokenizer.encode("hello")
    batch.insert(ids, sampler, seed=3, max_tokens=12)
    looked = LookAheadGenerator(model, tokenizer)
    looked.insert(ids, sampler, seed=3, max_tokens=12, look_ahead=None)
    for gen in (batch, looked):
        tokens = []
        while len(gen):
            tokens += [s.step.token for s in gen.next()]
        assert tokens == plain
    assert not looked.forks


def test_forked_rows_continue_like_single_runs(tiny):
    model, tokenizer, _ = tiny
    ids = tokenizer.encode("the tiny test")
    gen = BatchGenerator(model)
    uid = gen.insert(ids, seed=0, max_tokens=6)
    gen.admit()
    forced = [40, 41, 42]
    uids = gen.split_row(uid, forced, [0.0, 0.0, 0.0])
    rows = {u: [] for u in uids}
    while len(gen):
        for s in gen.next():
            rows[s.uid].append(s.step.token)
    for u, token in zip(uids, forced):
        single = [
            r.token
            for r in stream_generate(
                model, tokenizer, ids + [token], sampler="greedy", max_tokens=5
            )
        ]
        assert rows[u] == [token] + single


def test_equal_seeds_give_equal_text_and_forks(tiny, tmp_path):
    model, tokenizer, _ = tiny
    config = BRANCHY.replace(branch_k=3, branch_horizon=3, max_branch_points=3)
    runs = [
        list(stream_generate(model, tokenizer, "hello", config=config, seed=7, max_tokens=16))
        for _ in range(2)
    ]
    texts = ["".join(r.text for r in run) for run in runs]
    forks = [[r.fork for r in run if r.fork] for run in runs]
    assert texts[0] == texts[1] and forks[0] == forks[1]
    assert 1 <= len(forks[0]) <= 3
    other = "".join(
        r.text
        for r in stream_generate(model, tokenizer, "hello", config=config, seed=8, max_tokens=16)
    )
    assert other != texts[0]


def test_forks_appear_in_the_trace(tiny, tmp_path):
    from click.testing import CliRunner

    from entropix_mlx.cli import main

    model_path = tmp_path / "tiny.gguf"
    write_float_gguf(model_path, tiny_model(seed=11))
    config = tmp_path / "branchy.toml"
    config.write_text(BRANCHY.replace(branch_k=2, branch_horizon=2, max_branch_points=2).to_toml())
    trace = tmp_path / "t.jsonl"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "-m",
            str(model_path),
            "-p",
            "hello",
            "--seed",
            "1",
            "--max-tokens",
            "10",
            "--config",
            str(config),
            "--trace",
            str(trace),
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    forks = [r["fork"] for r in records if r["fork"]]
    assert len(forks) == 2
    for fork in forks:
        assert len(fork["candidates"]) == 2 and fork["winner"] in (0, 1)
        scores = [c["score"] for c in fork["candidates"]]
        assert scores[fork["winner"]] == max(scores)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"branch_k": 1}, "branch_k must be 0"),
        ({"branch_k": 99}, "branch_k must be 0"),
        ({"branch_k": 2.5}, "branch_k must be an integer"),
        ({"branch_horizon": 0}, "branch_horizon must be >= 1"),
        ({"max_branch_points": -1}, "max_branch_points must be >= 0"),
        ({"branch_score": "vibes"}, "branch_score must be one of margin, logprob"),
    ],
)
def test_branch_settings_are_validated(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**settings)
