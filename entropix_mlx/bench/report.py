"""The benchmark report: per-row figures (median and range), ratios to mlx-lm, and the goals."""

import statistics
from typing import Dict, List, Sequence

FIGURES = (
    "prefill_tps",
    "decode_tps",
    "ttft_s",
    "peak_memory_mb",
    "working_memory_mb",
    "prefill_cpu_ms",
    "decode_cpu_ms",
    "sampler_step_us",
)

# (what is compared, which of our samplers, figure, direction, target); ratios are ours / mlx-lm.
GOALS = (
    ("entropix decode / mlx-lm sampled decode", ("entropix",), "decode_tps", ">=", 0.95),
    ("greedy decode / mlx-lm greedy decode", ("greedy",), "decode_tps", ">=", 1.0),
    ("prefill / mlx-lm prefill", ("greedy", "standard", "entropix"), "prefill_tps", ">=", 1.0),
    (
        "peak memory / mlx-lm peak memory",
        ("greedy", "standard", "entropix"),
        "peak_memory_mb",
        "<=",
        1.05,
    ),
    (
        "sampler step / one decode step",
        ("greedy", "standard", "entropix"),
        "sampler_share",
        "<=",
        0.05,
    ),
)
# Ours on float32 weights (the CPU policy) against mlx-lm on the stored, quantized ones.
REFERENCE_GOALS = (
    (
        "float32 prefill / mlx-lm prefill on the stored weights",
        ("greedy", "standard", "entropix"),
        "prefill_tps",
        ">=",
        10.0,
    ),
    (
        "float32 greedy decode / mlx-lm greedy decode on the stored weights",
        ("greedy",),
        "decode_tps",
        ">=",
        1.3,
    ),
)
COLD_GOAL = ("first-use (cold compile cache) entropix decode / mlx-lm sampled decode", ">=", 0.95)


def summarize(values: Sequence[float]) -> Dict[str, object]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "samples": list(values),
    }


def median(row: dict, figure: str) -> float:
    return row["figures"][figure]["median"]


def build_rows(
    samples: Dict[tuple, Dict[str, List[float]]], contenders, prompt_lengths
) -> List[dict]:
    """One row per (prompt length, contender), with ratios to its mlx-lm baseline row."""
    rows = []
    for length in prompt_lengths:
        by_label = {}
        for c in contenders:
            row = {
                "prompt_tokens": length,
                "engine": c.engine,
                "sampler": c.sampler,
                "label": c.label,
                "baseline": c.baseline,
                "reference": c.reference,
                "figures": {name: summarize(samples[length, c.label][name]) for name in FIGURES},
            }
            # The sampler's share of one decode step: its time times the decode rate.
            row["sampler_share"] = median(row, "sampler_step_us") * 1e-6 * median(row, "decode_tps")
            by_label[c.label] = row
        for row in by_label.values():
            base = by_label.get(row["baseline"])
            row["ratios"] = ratios(row, base)
            row["reference_ratios"] = ratios(row, by_label.get(row["reference"]))
        rows.extend(by_label.values())
    return rows


def ratios(row: dict, base) -> Dict[str, float]:
    return {name: median(row, name) / median(base, name) for name in FIGURES} if base else {}


def _value(row: dict, figure: str) -> float:
    return row["sampler_share"] if figure == "sampler_share" else row["ratios"][figure]


def _meets(value: float, direction: str, target: float) -> bool:
    return value >= target if direction == ">=" else value <= target


def evaluate_goals(rows: List[dict], cold_compile: dict = None) -> List[dict]:
    """Each goal with its value per row and whether every row meets it (reported, not asserted)."""
    goals = []
    for name, samplers, figure, direction, target in GOALS:
        checks = [
            {"row": f"{row['prompt_tokens']} tok {row['label']}", "value": _value(row, figure)}
            for row in rows
            if row["baseline"] and row["sampler"] in samplers
        ]
        goals.append(_goal(name, direction, target, checks))
    for name, samplers, figure, direction, target in REFERENCE_GOALS:
        checks = [
            {
                "row": f"{row['prompt_tokens']} tok {row['label']}",
                "value": row["reference_ratios"][figure],
            }
            for row in rows
            if row["reference_ratios"] and row["sampler"] in samplers
        ]
        if checks:
            goals.append(_goal(name, direction, target, checks))
    ratio = (cold_compile or {}).get("entropix_over_mlx_lm_cold_decode")
    if ratio is not None:
        name, direction, target = COLD_GOAL
        goals.append(
            _goal(
                name,
                direction,
                target,
                [{"row": f"{cold_compile['prompt_tokens']} tok", "value": ratio}],
            )
        )
    return goals


def _goal(name, direction, target, checks):
    for check in checks:
        check["met"] = _meets(check["value"], direction, target)
    return {
        "goal": name,
        "target": f"{direction} {target}",
        "checks": checks,
        "met": all(c["met"] for c in checks),
    }


def cold_compile_section(runs: List[dict], prompt_tokens: int, gen_tokens: int) -> dict:
    """The cold/warm runs with their decode ratios (cold / warm; entropix cold / mlx-lm cold)."""
    for run in runs:
        run["cold_over_warm_decode"] = run["cold"]["decode_tps"] / run["warm"]["decode_tps"]
    section = {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "runs": runs}
    by_engine = {run["engine"]: run for run in runs}
    if {"mlx-lm", "entropix-mlx"} <= set(by_engine):
        ours, theirs = by_engine["entropix-mlx"], by_engine["mlx-lm"]
        section["entropix_over_mlx_lm_cold_decode"] = (
            ours["cold"]["decode_tps"] / theirs["cold"]["decode_tps"]
        )
    return section
