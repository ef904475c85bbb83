import mlx.core as mx
import numpy as np
import pytest
from scipy.stats import chisquare

from entropix_mlx.sampling import make_greedy_sampler, make_standard_sampler, sample

N_DRAWS = 20000
P_PASS = 1e-3


def kept_distribution(logits, temperature, top_p=1.0, top_k=None, min_p=0.0):
    """The spec's draw distribution, computed independently in float64 numpy."""
    z = np.asarray(logits, np.float64) / temperature
    q = np.exp(z - z.max())
    q /= q.sum()
    order = np.argsort(-q, kind="stable")
    sorted_q = q[order]
    rank = np.arange(len(q))
    keep = (
        (sorted_q >= min_p * sorted_q[0])
        & (rank < (top_k or len(q)))
        & (np.cumsum(sorted_q) - sorted_q < top_p)
    )
    kept = np.zeros_like(q)
    kept[order[keep]] = sorted_q[keep]
    return kept / kept.sum()


def goodness_of_fit(tokens, expected):
    """Chi-square p-value of the drawn tokens against `expected`; draws outside its support fail."""
    counts = np.bincount(np.asarray(tokens), minlength=len(expected))
    assert counts[expected == 0].sum() == 0, "drew a token the filters should have removed"
    expected_counts = expected * len(tokens)
    # Rare tokens are pooled into one bin so that every bin expects >= 5 draws.
    rare, common = (expected > 0) & (expected_counts < 5), expected_counts >= 5
    observed, predicted = counts[common], expected_counts[common]
    if rare.any():
        assert expected_counts[rare].sum() >= 5, "too few draws for a chi-square test"
        observed = np.append(observed, counts[rare].sum())
        predicted = np.append(predicted, expected_counts[rare].sum())
    return chisquare(observed, predicted).pvalue


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    return (1.5 * rng.standard_normal(128)).astype(np.float32)


def draw_many(logits, seed=0, **params):
    batch = mx.broadcast_to(mx.array(logits), (N_DRAWS, len(logits)))
    return np.array(sample(batch, key=mx.random.key(seed), **params))


SETTINGS = [
    dict(temperature=1.0, top_p=1.0, top_k=100, min_p=0.0),
    dict(temperature=0.7, top_p=1.0, top_k=10, min_p=0.0),
    dict(temperature=1.3, top_p=0.8, top_k=100, min_p=0.0),
    dict(temperature=1.0, top_p=1.0, top_k=100, min_p=0.1),
    dict(temperature=0.666, top_p=0.9, top_k=27, min_p=0.03),
]


@pytest.mark.parametrize("params", SETTINGS)
def test_draws_follow_the_exact_kept_distribution(logits, params):
    tokens = draw_many(logits, **params)
    expected = kept_distribution(logits, **params)
    assert goodness_of_fit(tokens, expected) > P_PASS
    # The same test rejects a slightly wrong distribution on the same support.
    wrong = expected**1.15 / (expected**1.15).sum()
    assert goodness_of_fit(tokens, wrong) < P_PASS


def test_min_p_removes_tokens(logits):
    # Fix: the original computed the min_p mask but never applied it.
    unfiltered = kept_distribution(logits, 1.0, top_k=100)
    filtered = kept_distribution(logits, 1.0, top_k=100, min_p=0.2)
    removed = (unfiltered > 0) & (filtered == 0)
    assert unfiltered[removed].sum() * N_DRAWS > 1000  # would be drawn often without min_p
    tokens = draw_many(logits, temperature=1.0, top_p=1.0, top_k=100, min_p=0.2)
    assert not np.isin(tokens, np.flatnonzero(removed)).any()


def test_top_p_keeps_the_most_probable_token_even_below_its_mass(logits):
    tokens = draw_many(logits, temperature=1.0, top_p=0.01, top_k=100, min_p=0.0)
    assert (tokens == np.argmax(logits)).all()


def test_top_p_is_the_descending_nucleus():
    # Fix: the original flipped the top-k list to ascending order before the cumulative
    # sum and so trimmed the most probable token of a flat distribution.
    probs = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    logits = np.full(128, -1e9, np.float32)
    logits[[40, 7, 99, 3, 60]] = np.log(probs)
    tokens = draw_many(logits, temperature=1.0, top_p=0.6, top_k=100, min_p=0.0)
    expected = kept_distribution(logits, 1.0, top_p=0.6)
    assert set(np.flatnonzero(expected)) == {40, 7, 99}
    assert goodness_of_fit(tokens, expected) > P_PASS


def test_draws_are_exact_not_uniform_noise_biased():
    # Fix: the original divided probabilities by uniform (not exponential) noise, which
    # over-samples likely tokens (0.36 instead of 0.30 here).
    probs = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    logits = np.full(128, -1e9, np.float32)
    logits[:5] = np.log(probs)
    rng = np.random.default_rng(1)
    biased = np.mean(np.argmax(probs / rng.uniform(size=(N_DRAWS, 5)), axis=1) == 0)
    tokens = draw_many(logits, temperature=1.0, top_p=1.0, top_k=100, min_p=0.0)
    share = np.mean(tokens == 0)
    sigma = np.sqrt(0.3 * 0.7 / N_DRAWS)
    assert abs(share - 0.3) < 4 * sigma < abs(biased - 0.3)
    assert goodness_of_fit(tokens, kept_distribution(logits, 1.0)) > P_PASS


def test_per_row_parameters_and_zero_temperature(logits):
    batch = mx.broadcast_to(mx.array(logits), (4, len(logits)))
    temperature = mx.array([0.0, 0.0, 5.0, 5.0])
    tokens = np.array(sample(batch, temperature, 1.0, 100, 0.0, mx.random.key(0)))
    assert tokens.dtype == np.int32
    assert (tokens[:2] == np.argmax(logits)).all()


def test_equal_seeds_equal_draws_different_seeds_different(logits):
    params = dict(temperature=1.0, top_p=1.0, top_k=100, min_p=0.0)
    batch = mx.broadcast_to(mx.array(logits), (64, len(logits)))
    first, again, other = (
        np.array(sample(batch, key=mx.random.key(s), **params)) for s in (3, 3, 4)
    )
    assert (first == again).all() and (first != other).any()


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=0.666, top_p=0.9, top_k=27),
        dict(temperature=0.8, top_p=0.7, top_k=0, min_p=0.05),
        dict(temperature=1.2),
    ],
)
def test_standard_sampler_is_exact(logits, params):
    step = make_standard_sampler(**params)
    batch = mx.broadcast_to(mx.array(logits), (N_DRAWS, len(logits)))
    tokens, strategy, info = step(batch, None, None, mx.random.key(0))
    assert info == {} and (np.array(strategy) == -1).all()
    expected = kept_distribution(
        logits,
        params["temperature"],
        params.get("top_p", 1.0),
        params.get("top_k"),
        params.get("min_p", 0.0),
    )
    assert goodness_of_fit(np.array(tokens), expected) > P_PASS


def test_greedy_and_zero_temperature_samplers(logits):
    batch = mx.array(np.stack([logits, -logits]))
    expected = [np.argmax(logits), np.argmax(-logits)]
    for step in (make_greedy_sampler(), make_standard_sampler(temperature=0.0)):
        tokens, strategy, info = step(batch, None, None, mx.random.key(0))
        assert np.array(tokens).tolist() == expected and np.array(strategy).tolist() == [-1, -1]


@pytest.mark.parametrize(
    "params, field",
    [
        (dict(temperature=-1.0), "temp"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=1.0), "min_p"),
        (dict(top_k=2.0), "top_k"),
    ],
)
def test_standard_sampler_validates(params, field):
    with pytest.raises(ValueError, match=field):
        make_standard_sampler(**params)


def test_a_tiny_temperature_is_argmax_even_over_large_logits():
    # 100 / 1e-37 overflows float32: the logits are shifted to a maximum of 0 first.
    logits = mx.array([[0.0, 50.0, 100.0, -30.0], [7.0, -2.0, 3.0, 6.5]])
    keys = mx.random.split(mx.random.key(0), 2)
    for step in (
        make_standard_sampler(temperature=1e-37),  # the plain draw
        make_standard_sampler(temperature=1e-37, top_p=0.9),  # over the candidates
        make_standard_sampler(temperature=1.2e-38, top_k=3),
    ):
        token, _, _ = step(logits, None, mx.array([0, 0]), keys)
        assert token.tolist() == [2, 0]
    assert sample(logits, 1e-37, 1.0, 4, 0.0, keys).tolist() == [2, 0]
