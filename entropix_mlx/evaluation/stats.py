"""Statistics for paired comparisons: Wilson intervals, McNemar's exact test, Wilcoxon's
signed-rank test."""

import math
from collections import Counter
from dataclasses import dataclass
from statistics import NormalDist
from typing import Hashable, Mapping, Sequence, Tuple

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


@dataclass(frozen=True)
class SignedRank:
    """Wilcoxon's signed-rank test on paired differences: W+ (the rank sum of the positive
    differences), the differences that were not zero, and the two-sided p-value."""

    statistic: float
    n: int
    p_value: float
    exact: bool


WILCOXON_EXACT_MAX = 50  # up to this many nonzero differences the null distribution is enumerated


def wilcoxon_signed_rank(differences: Sequence[float]) -> SignedRank:
    """Two-sided Wilcoxon signed-rank test. Zero differences are dropped (Wilcoxon's rule), tied
    magnitudes share their mean rank; the p-value is exact (the sign-flip distribution of the
    tied ranks) up to WILCOXON_EXACT_MAX differences, else the normal approximation with the tie
    correction and no continuity correction."""
    nonzero = [d for d in differences if d != 0]
    n = len(nonzero)
    if n == 0:
        return SignedRank(0.0, 0, 1.0, True)
    ranks = mean_ranks([abs(d) for d in nonzero])
    w_plus = sum(r for r, d in zip(ranks, nonzero) if d > 0)
    if n <= WILCOXON_EXACT_MAX:
        doubled = [round(2 * r) for r in ranks]  # mean ranks are halves: doubled, integers
        counts = [1] + [0] * sum(doubled)  # counts[s]: sign patterns whose doubled W+ is s
        for r in doubled:
            counts = [c + (counts[s - r] if s >= r else 0) for s, c in enumerate(counts)]
        s = round(2 * w_plus)
        low, high = sum(counts[: s + 1]), sum(counts[s:])
        return SignedRank(w_plus, n, min(1.0, 2 * min(low, high) / 2**n), True)
    mean = n * (n + 1) / 4
    ties = sum(t**3 - t for t in Counter(ranks).values())
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - ties / 48)
    z = (w_plus - mean) / sd if sd else 0.0
    return SignedRank(w_plus, n, min(1.0, 2 * NormalDist().cdf(-abs(z))), False)


def mean_ranks(values: Sequence[float]) -> list:
    """1-based ranks of `values`, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks
