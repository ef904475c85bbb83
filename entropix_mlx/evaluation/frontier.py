"""The frontier: the standard sampler swept over temperature gives a curve of (surprisal, measure)
points; another arm beats a temperature schedule only where it lies beyond that curve at its
own surprisal, with a bootstrap interval that excludes the curve.

Sweeps: temperature (the standard sampler with the preset's top-p, top-k and min-p), min-p
(temperature 1, top-p 1, top-k 100: the candidate set's cap) and mlx-lm's repetition penalty on
greedy decoding.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import EvalError
from ..sampling import SamplerConfig
from ..sampling.config import MAX_CANDIDATES
from .arms import CONTROL_TEMPERATURE, Arm
from .bootstrap import Resamples, percentile_interval, weighted_means

CURVE = "temperature"
FAMILIES = (CURVE, "min-p", "repetition penalty")
# Measures drawn against surprisal, and whether lower is better.
MEASURES = {"loop": True, "seq_rep_4": True, "junk": True, "relevance": False}


def parse_values(text: Optional[str], option: str, low: float, high: float) -> Tuple[float, ...]:
    """'0.5,0.9' -> (0.5, 0.9): distinct numbers in [low, high]."""
    if not text:
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise EvalError(f"{option} takes comma-separated numbers such as 0.5,0.9, not {text!r}")
    bad = [v for v in values if not low <= v <= high]
    if bad:
        raise EvalError(f"{option} values must lie in [{low:g}, {high:g}], not {bad[0]:g}")
    if len(set(values)) < len(values):
        raise EvalError(f"{option} lists a value twice; give each once")
    return values


def sweep_arms(
    base: SamplerConfig,
    temps: Sequence[float] = (),
    min_ps: Sequence[float] = (),
    penalties: Sequence[float] = (),
) -> List[Arm]:
    """The sweep's arms; the temperature that the plain `standard` arm already runs is left out."""
    arms = [
        Arm(f"standard:t={t:g}", "standard", base.replace(temp=t))
        for t in temps
        if t != CONTROL_TEMPERATURE
    ]
    arms += [
        Arm(
            f"min-p:{p:g}",
            "standard",
            base.replace(temp=1.0, top_p=1.0, top_k=MAX_CANDIDATES, min_p=p),
        )
        for p in min_ps
    ]
    arms += [Arm(f"greedy:rp={r:g}", "greedy", base, repetition_penalty=r) for r in penalties]
    return arms


def families(arms: Sequence[Arm], base: SamplerConfig) -> Dict[str, List[str]]:
    """{family: arm names}: the temperature curve takes every standard arm with the preset's
    truncation (the plain `standard` arm too)."""

    def truncation(config):
        return (config.top_p, config.top_k, config.min_p)

    found: Dict[str, List[str]] = {family: [] for family in FAMILIES}
    for arm in arms:
        if arm.repetition_penalty:
            found["repetition penalty"].append(arm.name)
        elif arm.sampler == "standard" and truncation(arm.config) == truncation(base):
            found[CURVE].append(arm.name)
        elif arm.name.startswith("min-p:"):
            found["min-p"].append(arm.name)
    return found


def curve_at(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """The piecewise-linear curve through (xs, ys), sorted by x, at `x`; NaN outside its span."""
    keep = ~(np.isnan(xs) | np.isnan(ys))
    xs, ys = xs[keep], ys[keep]
    if len(xs) < 2 or np.isnan(x) or not xs.min() <= x <= xs.max():
        return float("nan")
    order = np.argsort(xs)
    return float(np.interp(x, xs[order], ys[order]))


def against_curve(
    curve_x: np.ndarray,
    curve_y: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    resamples: Resamples,
    lower_is_better: bool,
) -> dict:
    """An arm's measure minus the curve's at the arm's surprisal, over prompts.

    `curve_x`, `curve_y`: [curve arms, prompts] per-prompt means (NaN where none); `x`, `y`: the
    arm's. Each resample recomputes every mean, the curve and its value at the arm's surprisal."""
    weights = resamples.with_original()
    xs = np.stack([weighted_means(row, weights) for row in curve_x], axis=1)  # [B+1, arms]
    ys = np.stack([weighted_means(row, weights) for row in curve_y], axis=1)
    at_x, arm_y = weighted_means(x, weights), weighted_means(y, weights)
    curve = np.array([curve_at(xs[b], ys[b], at_x[b]) for b in range(len(weights))])
    delta = arm_y - curve
    low, high = percentile_interval(delta[1:])
    outside = float(np.mean(np.isnan(curve[1:])))
    if np.isnan(curve[0]):  # no comparison: the curve is not extrapolated
        low = high = None
        verdict = "outside the curve's surprisal range"
    elif high is not None and high < 0:
        verdict = "below the curve" + (" (better)" if lower_is_better else " (worse)")
    elif low is not None and low > 0:
        verdict = "above the curve" + (" (worse)" if lower_is_better else " (better)")
    else:
        verdict = "on the curve"
    finite = lambda v: None if np.isnan(v) else round(float(v), 6)  # noqa: E731
    return {
        "surprisal": finite(at_x[0]),
        "value": finite(arm_y[0]),
        "curve": finite(curve[0]),
        "delta": finite(delta[0]),
        "ci95": [None if v is None else round(v, 6) for v in (low, high)],
        "resamples_outside": round(outside, 4),
        "verdict": verdict,
    }
