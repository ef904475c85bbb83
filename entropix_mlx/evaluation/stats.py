"""Exact statistics for paired accuracy: Wilson intervals and McNemar's exact test."""

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Hashable, Mapping, Tuple

Z95 = NormalDist().inv_cdf(0.975)  # 1.959964...


def wilson_interval(correct: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval for a proportion correct/n (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    scale = 1 + z * z / n
    center = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts (binomial, p = 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedCounts:
    """Outcomes of two arms on the same units: both right, only A, only B, both wrong."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def pairs(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)


def paired_counts(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool]) -> PairedCounts:
    """Count outcomes over the units (keys) both arms answered; `a[key]` is True when right."""
    keys = a.keys() & b.keys()
    only_a = sum(a[k] and not b[k] for k in keys)
    only_b = sum(b[k] and not a[k] for k in keys)
    both = sum(a[k] and b[k] for k in keys)
    return PairedCounts(both, only_a, only_b, len(keys) - both - only_a - only_b)
