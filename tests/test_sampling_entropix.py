import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from scipy.stats import chisquare

from entropix_mlx.sampling import (
    STRATEGIES,
    SamplerConfig,
    make_entropix_sampler,
    strategy_parameters,
)
from entropix_mlx.sampling.metrics import far_attention

REFERENCE = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata" / "entropix_reference.npz"
)
PAUSE_ID = 1131
CFG = SamplerConfig()
PARAMETERS = ("temperature", "top_p", "top_k", "min_p")


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def step():
    return make_entropix_sampler(CFG, pause_token_id=PAUSE_ID)


def case_inputs(reference, i):
    """logits [1, V] and scores [1, H, L] (the file stores scores as [1, H, 1, L])."""
    return mx.array(reference[f"logits_{i}"])[None], mx.array(reference[f"scores_{i}"][:, :, 0, :])


def table_strategy(ent, vent):
    """The spec's strategy table, in plain Python."""
    if ent < 0.1 and vent < 0.1:
        return "argmax"
    if ent > 3.0 and vent < 0.1:
        return "pause"
    if ent < 5.0 and vent > 5.0:
        return "branch"
    if ent > 5.0 and vent > 5.0:
        return "resample"
    return "adaptive"


@pytest.mark.parametrize("i", range(24))
def test_strategy_follows_the_table(reference, step, i):
    token, strategy, info = step(*case_inputs(reference, i), mx.array([0]), mx.random.key(i))
    expected = table_strategy(reference["logits_entropy"][i], reference["logits_varentropy"][i])
    assert STRATEGIES[strategy.item()] == expected
    name = str(reference["name"][i])
    if name in ("argmax", "pause", "branch", "resample"):
        assert expected == name
    assert token.dtype == mx.int32 and strategy.dtype == mx.int32
    assert all(v.shape == (1,) and v.dtype == mx.float32 for v in info.values())


def test_info_reports_the_parameters_used(reference, step):
    for i in (2, 3, 4):  # branch, resample, adaptive
        token, strategy, info = step(*case_inputs(reference, i), mx.array([0]), mx.random.key(0))
        per_strategy = strategy_parameters(info, CFG)
        for name in PARAMETERS:
            assert info[name].item() == per_strategy[name][strategy.item()].item()


def test_argmax_case_takes_the_argmax(reference, step):
    logits, scores = case_inputs(reference, 0)
    token, strategy, info = step(logits, scores, None, mx.random.key(0))  # no previous token
    assert STRATEGIES[strategy.item()] == "argmax"
    assert token.item() == int(np.argmax(reference["logits_0"]))
    assert info["temperature"].item() == 0.0


def test_pause_is_emitted_unless_previous_token_was_pause(reference, step):
    logits, scores = case_inputs(reference, 1)
    logits, scores = mx.concatenate([logits, logits]), mx.concatenate([scores, scores])
    token, strategy, info = step(logits, scores, mx.array([7, PAUSE_ID]), mx.random.key(0))
    assert [STRATEGIES[s] for s in strategy.tolist()] == ["pause", "pause"]
    assert token[0].item() == PAUSE_ID and token[1].item() != PAUSE_ID
    attn_ent = info["attn_entropy"][1].item()
    assert info["temperature"].tolist() == pytest.approx(
        [0.0, min(1.5, 0.666 * (1.3 + 0.2 * attn_ent))]
    )


def metric_rows(**columns):
    return {name: mx.array(values, dtype=mx.float32) for name, values in columns.items()}


def parameters_of(strategy, metrics, cfg=CFG):
    column = STRATEGIES.index(strategy)
    return {
        name: values[column].tolist() for name, values in strategy_parameters(metrics, cfg).items()
    }


METRICS = metric_rows(
    logits_entropy=[0.7, 6.0],
    logits_varentropy=[0.3, 7.5],
    attn_entropy=[0.9, 5.5],
    attn_varentropy=[1.2, 2.5],
    agreement=[0.02, 0.4],
    interaction_strength=[1.6, 4.1],
)


def assert_parameters(got, temperature, top_p, top_k, min_p):
    expected = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
    for name in PARAMETERS:
        assert got[name] == pytest.approx(expected[name], rel=1e-6), name


def test_argmax_parameters():
    assert_parameters(parameters_of("argmax", METRICS), [0, 0], [0.9] * 2, [27] * 2, [0.03] * 2)


def test_pause_parameters():
    temperature = [min(1.5, 0.666 * (1.3 + 0.2 * a)) for a in (0.9, 5.5)]
    assert temperature[1] == 1.5  # capped
    assert_parameters(parameters_of("pause", METRICS), temperature, [0.9] * 2, [27] * 2, [0.03] * 2)


def test_branch_parameters():
    temperature = [min(1.5, 0.666 * (1.2 + 0.3 * s)) for s in (1.6, 4.1)]
    top_k = [max(5, math.floor(27 * (1 + 0.5 * (1 - g)))) for g in (0.02, 0.4)]
    assert_parameters(parameters_of("branch", METRICS), temperature, [0.9] * 2, top_k, [0.03] * 2)
    small = parameters_of("branch", METRICS, CFG.replace(top_k=3))
    assert small["top_k"] == [5, 5]  # floor(3 * 1.49) = 4 and floor(3 * 1.3) = 3, raised to 5


def test_resample_parameters():
    temperature = [max(2.0, 0.666 * (2.0 + 0.5 * v)) for v in (1.2, 2.5)]
    top_p = [max(0.5, 0.9 - 0.2 * a) for a in (0.9, 5.5)]
    assert temperature[0] == 2.0 and top_p[1] == 0.5  # both limits reached
    assert_parameters(parameters_of("resample", METRICS), temperature, top_p, [27] * 2, [0.03] * 2)


def test_adaptive_parameters():
    rows = [
        dict(ent=0.7, vent=0.3, a_ent=0.9, a_vent=1.2, agree=0.02, inter=1.6),
        dict(ent=6.0, vent=7.5, a_ent=5.5, a_vent=2.5, agree=0.4, inter=4.1),
    ]
    expected = {name: [] for name in PARAMETERS}
    for r in rows:
        u, a = r["ent"] + r["vent"], r["a_ent"] + r["a_vent"]
        expected["temperature"].append(0.666 * (1 + 0.3 * u + 0.2 * a - 0.2 * r["agree"]))
        expected["top_p"].append(min(max(0.9 * (1 + 0.1 * r["a_vent"]), 0.1), 1.0))
        expected["top_k"].append(
            min(max(round(27 * (1 + 0.3 * r["inter"] - 0.2 * r["agree"])), 1), 100)
        )
        expected["min_p"].append(min(max(0.03 * (1 - 0.5 * u), 0.01), 0.5))
    assert expected["top_p"][1] == 1.0 and expected["min_p"][1] == 0.01  # clipped
    assert_parameters(parameters_of("adaptive", METRICS), **expected)


def adaptive_rows(logits, n_rows):
    logits = mx.broadcast_to(mx.array(logits, dtype=mx.float32), (n_rows, len(logits)))
    return logits, mx.zeros((n_rows, 1, 1)), mx.zeros((n_rows,), dtype=mx.int32)


def test_adaptive_keeps_the_most_likely_of_its_draws():
    # Two live tokens of nearly equal mass: one draw picks either, the best of 50
    # draws is (almost surely) always the more likely one.
    logits = np.full(128, -np.inf)
    logits[[17, 90]] = [0.05, 0.0]
    for n, all_top in ((50, True), (1, False)):
        step = make_entropix_sampler(CFG.replace(n_adaptive_samples=n), 3, compile=False)
        token, strategy, info = step(*adaptive_rows(logits, 256), mx.random.key(0))
        assert (np.array(strategy) == STRATEGIES.index("adaptive")).all()
        assert (np.array(token) == 17).all() == all_top
        assert set(np.array(token).tolist()) <= {17, 90}


def test_adaptive_best_of_n_law():
    # The kept candidate of lowest rank among n exact draws: P(rank r) = S_r^n - S_(r+1)^n.
    n_rows, n = 20000, 5
    logits = 1.3 * np.random.default_rng(2).standard_normal(128)
    step = make_entropix_sampler(CFG, 3, compile=False)
    token, strategy, info = step(*adaptive_rows(logits, n_rows), mx.random.key(1))
    assert (np.array(strategy) == STRATEGIES.index("adaptive")).all()
    t, top_p, top_k, min_p = (info[name][0].item() for name in PARAMETERS)
    q = np.exp(logits / t - np.max(logits / t))
    q /= q.sum()
    order = np.argsort(-q)
    kept = q[order] * (
        (q[order] >= min_p * q[order][0])
        & (np.arange(128) < top_k)
        & (np.cumsum(q[order]) - q[order] < top_p)
    )
    tail = np.cumsum((kept / kept.sum())[::-1])[::-1]  # S_r
    law = tail**n - np.append(tail[1:], 0.0) ** n
    counts = np.bincount(np.argsort(order)[np.array(token)], minlength=128)
    common = law * n_rows >= 5
    observed = np.append(counts[common], counts[~common].sum())
    predicted = np.append(law[common], law[~common].sum()) * n_rows
    assert chisquare(observed, predicted).pvalue > 1e-3
    plain = kept / kept.sum() * n_rows  # a single draw's law is clearly rejected
    assert chisquare(observed, np.append(plain[common], plain[~common].sum())).pvalue < 1e-3


def test_one_call_uses_a_different_strategy_per_row(reference, step):
    rows = [0, 1, 2, 3, 8]  # argmax, pause, branch, resample, adaptive (all vocab 49152)
    logits = mx.concatenate([case_inputs(reference, i)[0] for i in rows])
    scores = mx.array(
        np.random.default_rng(0).standard_normal((len(rows), 9, 33)), dtype=mx.float32
    )
    token, strategy, info = step(
        logits, scores, mx.zeros((len(rows),), dtype=mx.int32), mx.random.key(0)
    )
    assert [STRATEGIES[s] for s in strategy.tolist()] == list(STRATEGIES)
    for row, i in enumerate(rows):
        one = step(logits[row : row + 1], scores[row : row + 1], mx.array([0]), mx.random.key(0))[2]
        for name, values in info.items():
            assert values[row].item() == pytest.approx(one[name].item(), rel=1e-5, abs=1e-6), name
    assert token[0].item() == int(np.argmax(reference["logits_0"])) and token[1].item() == PAUSE_ID


def test_step_compiles_and_matches_eager(reference):
    rows = [0, 1, 2, 3, 8]
    logits = mx.concatenate([case_inputs(reference, i)[0] for i in rows]).astype(mx.bfloat16)
    scores = mx.array(
        np.random.default_rng(0).standard_normal((len(rows), 9, 33)), dtype=mx.float32
    )
    prev = mx.array([0, 0, 0, 0, PAUSE_ID], dtype=mx.int32)
    eager = make_entropix_sampler(CFG, PAUSE_ID, compile=False)
    compiled_vocab_part = make_entropix_sampler(CFG, PAUSE_ID, compile=True)
    # mx.compile raises if anything inside syncs with the host (.item(), bool(array), ...).
    results = [
        f(logits, scores, prev, mx.random.key(5))
        for f in (eager, mx.compile(eager), compiled_vocab_part)
    ]
    for token, strategy, info in results[1:]:
        assert token.tolist() == results[0][0].tolist()
        assert strategy.tolist() == results[0][1].tolist()
        for name, values in info.items():
            np.testing.assert_allclose(
                np.array(values), np.array(results[0][2][name]), rtol=1e-5, atol=1e-6
            )


def test_equal_seeds_equal_tokens_different_seeds_different(reference, step):
    logits, scores = case_inputs(reference, 5)  # adaptive, high entropy
    logits, scores = mx.repeat(logits, 32, axis=0), mx.repeat(scores, 32, axis=0)
    prev = mx.zeros((32,), dtype=mx.int32)
    first, again, other = (
        step(logits, scores, prev, mx.random.key(s))[0].tolist() for s in (1, 1, 2)
    )
    assert first == again and first != other


def test_pause_token_id_is_required_and_checked():
    with pytest.raises(ValueError, match="resolve_pause_token"):
        make_entropix_sampler(SamplerConfig())
    step = make_entropix_sampler(SamplerConfig(pause_token_id=500), compile=False)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        step(mx.zeros((1, 128)), mx.zeros((1, 1, 1)), None, mx.random.key(0))


def far_attention_by_hand(scores: np.ndarray, window: int) -> np.ndarray:
    """Per row: the heads' mean softmax mass on positions p with first < p < L - 1 - window,
    first being the row's first position not scored -inf."""
    out = []
    for row in scores:
        first = int(np.argmax(np.isfinite(row[0])))
        length = row.shape[-1]
        masses = []
        for head in row:
            finite = np.isfinite(head)
            p = np.zeros_like(head)
            p[finite] = np.exp(head[finite] - head[finite].max())
            p /= p.sum()
            masses.append(p[first + 1 : max(length - 1 - window, first + 1)].sum())
        out.append(np.mean(masses))
    return np.array(out)


def test_far_attention_against_a_hand_computation():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 4, 40)).astype(np.float32) * 2
    scores[1, :, :7] = -np.inf  # a left-padded row: its sink is position 7
    for window in (0, 8, 32, 60):
        got = np.array(far_attention(mx.array(scores), window))
        np.testing.assert_allclose(got, far_attention_by_hand(scores, window), atol=1e-6)
    # Attention piled on an old position counts fully; on the sink or the newest tokens, not at all.
    piled = np.full((1, 2, 50), -30.0, dtype=np.float32)
    piled[0, :, 10] = 30.0
    assert float(far_attention(mx.array(piled), 16)[0]) == pytest.approx(1.0, abs=1e-6)
    for where in (0, 45):
        elsewhere = np.full((1, 2, 50), -30.0, dtype=np.float32)
        elsewhere[0, :, where] = 30.0
        assert float(far_attention(mx.array(elsewhere), 16)[0]) == pytest.approx(0.0, abs=1e-6)


def test_loop_guard_keeps_a_far_reading_row_out_of_argmax():
    # Two rows in the argmax corner (a peaked distribution); row 0's final-layer attention sits
    # on an old position, row 1's on the newest tokens.
    logits = mx.array(np.stack([np.r_[20.0, np.zeros(99)]] * 2).astype(np.float32))
    scores = np.full((2, 3, 60), -20.0, dtype=np.float32)
    scores[0, :, 5] = 20.0
    scores[1, :, 58] = 20.0
    scores = mx.array(scores)
    off = make_entropix_sampler(SamplerConfig(), pause_token_id=99)
    on = make_entropix_sampler(SamplerConfig(loop_attn=0.5, loop_window=8), pause_token_id=99)
    key = mx.random.key(0)
    assert [STRATEGIES[s] for s in off(logits, scores, None, key)[1].tolist()] == ["argmax"] * 2
    assert [STRATEGIES[s] for s in on(logits, scores, None, key)[1].tolist()] == [
        "adaptive",
        "argmax",
    ]
    # A corner the row is not in is untouched: the guard only takes tokens out of argmax.
    flat = mx.zeros((2, 100))
    assert (on(flat, scores, None, key)[1] == off(flat, scores, None, key)[1]).all().item()


def test_loop_guard_off_is_the_original_sampler(reference):
    logits, scores = case_inputs(reference, 0)
    guarded = make_entropix_sampler(CFG.replace(loop_attn=1.0), pause_token_id=PAUSE_ID)
    plain = make_entropix_sampler(CFG, pause_token_id=PAUSE_ID)
    key = mx.random.key(3)
    a, b = guarded(logits, scores, None, key), plain(logits, scores, None, key)
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
