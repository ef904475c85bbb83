from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from entropix_mlx.sampling import attention_metrics, calculate_metrics
from entropix_mlx.sampling.metrics import precise_sum

REFERENCE = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata" / "entropix_reference.npz"
)
METRICS = (
    "logits_entropy",
    "logits_varentropy",
    "attn_entropy",
    "attn_varentropy",
    "agreement",
    "interaction_strength",
)


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return dict(np.load(REFERENCE))


def case_inputs(reference, i):
    """logits [1, V] and scores [1, H, L] (the file stores scores as [1, H, 1, L])."""
    return mx.array(reference[f"logits_{i}"])[None], mx.array(reference[f"scores_{i}"][:, :, 0, :])


def reference_value(reference, name, i):
    return reference["attn_varentropy_heads" if name == "attn_varentropy" else name][i]


@pytest.mark.parametrize("i", range(24))
def test_metrics_match_reference(reference, i):
    got = calculate_metrics(*case_inputs(reference, i))
    for name in METRICS:
        assert got[name].shape == (1,) and got[name].dtype == mx.float32
        np.testing.assert_allclose(
            got[name].item(),
            reference_value(reference, name, i),
            rtol=1e-3,
            atol=1e-4,
            err_msg=f"case {i} ({reference['name'][i]}): {name}",
        )


def test_attn_varentropy_is_across_heads_and_nonzero(reference):
    # Fix: the torch original took the variance over a length-1 axis and always got 0.
    i = 3  # "resample": heads with clearly different entropies
    scores = reference[f"scores_{i}"][0, :, 0, :].astype(np.float64)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    head_entropy = -(p * np.log2(p)).sum(-1)
    got = attention_metrics(case_inputs(reference, i)[1])["attn_varentropy"].item()
    assert reference["attn_varentropy_torch"][i] == 0
    assert got > 0.5
    np.testing.assert_allclose(got, np.var(head_entropy), rtol=1e-4)


def test_only_the_given_valid_positions_count(reference):
    # Fix: the original read the whole preallocated cache; unfilled zero slots
    # would change every attention metric, so callers pass valid positions only.
    i = 2
    scores = case_inputs(reference, i)[1]
    valid = attention_metrics(scores)
    padded = attention_metrics(mx.pad(scores, [(0, 0), (0, 0), (0, 2048)]))
    for name in ("attn_entropy", "agreement", "interaction_strength"):
        np.testing.assert_allclose(valid[name].item(), reference[name][i], rtol=1e-3)
        assert not np.isclose(padded[name].item(), reference[name][i], rtol=1e-2)


def test_rows_of_a_batch_are_independent(reference):
    rows = [2, 3, 4]  # same vocabulary; scores cut to a common shape
    logits = mx.concatenate([case_inputs(reference, i)[0] for i in rows])
    scores = mx.concatenate([case_inputs(reference, i)[1][:, :, :7] for i in rows])
    batched = calculate_metrics(logits, scores)
    for row, i in enumerate(rows):
        single = calculate_metrics(logits[row : row + 1], scores[row : row + 1])
        for name in METRICS:
            np.testing.assert_allclose(batched[name][row].item(), single[name].item(), rtol=1e-6)


def test_masked_logits_give_finite_metrics():
    logits = mx.array([[0.0, 0.0, -mx.inf, -mx.inf]])
    got = calculate_metrics(logits, mx.zeros((1, 2, 3)))
    assert got["logits_entropy"].item() == pytest.approx(1.0)
    assert got["logits_varentropy"].item() == pytest.approx(0.0, abs=1e-6)


def test_precise_sum_over_a_large_vocabulary():
    # MLX's CPU sum of 128256 equal float32 terms is off by ~1e-3; this one is not.
    x = mx.full((1, 128256), 1e-3)
    np.testing.assert_allclose(precise_sum(x).item(), 128.256, rtol=1e-5)


def test_scores_must_be_batch_heads_positions():
    with pytest.raises(ValueError, match=r"\[B, n_heads, L\], got shape \(1, 9, 1, 64\)"):
        attention_metrics(mx.zeros((1, 9, 1, 64)))
