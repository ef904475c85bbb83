"""The bootstrap over prompts: resample the prompts (with all their answers), recompute a statistic.

Every statistic of one run draws the same resamples (`Resamples`), so differences between arms
and curves through several arms stay paired.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

RESAMPLES = 2000
SEED = 0
Interval = Tuple[Optional[float], Optional[float]]


@dataclass(frozen=True)
class Resamples:
    """`weights[b, i]`: how often resample b drew prompt i (row 0 of `with_original` is the data)."""

    weights: np.ndarray

    @classmethod
    def draw(cls, n: int, count: int = RESAMPLES, seed: int = SEED) -> "Resamples":
        rng = np.random.default_rng(seed)
        drawn = rng.integers(0, n, size=(count, n))
        weights = np.zeros((count, n))
        np.add.at(weights, (np.arange(count)[:, None], drawn), 1)
        return cls(weights)

    def with_original(self) -> np.ndarray:
        return np.vstack([np.ones(self.weights.shape[1]), self.weights])


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of per-prompt `values` (NaN where a prompt has none) under each row of `weights`;
    NaN where a row weighs no prompt with a value."""
    valid = ~np.isnan(values)
    total = weights @ valid
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights @ np.where(valid, values, 0.0)) / total, np.nan)


def percentile_interval(samples: np.ndarray) -> Interval:
    """The 95% percentile interval of the finite samples; (None, None) when there are none."""
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return None, None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def interval_of(
    statistic: Callable[[np.ndarray], np.ndarray], resamples: Resamples
) -> Tuple[Optional[float], Interval]:
    """(the statistic on the data, its 95% interval); `statistic` maps a weights matrix to one
    value per row."""
    values = statistic(resamples.with_original())
    point = float(values[0]) if np.isfinite(values[0]) else None
    return point, percentile_interval(values[1:])


def paired_mean_difference(
    a: np.ndarray, b: np.ndarray, resamples: Resamples
) -> Tuple[Optional[float], Interval, int]:
    """Mean over prompts of a - b (per-prompt values; prompts where either is NaN left out), its
    95% interval and the number of prompts."""
    d = a - b
    return (*interval_of(lambda w: weighted_means(d, w), resamples), int(np.sum(~np.isnan(d))))


def sums(per_prompt: Sequence[float], weights: np.ndarray) -> np.ndarray:
    return weights @ np.asarray(per_prompt, dtype=float)
