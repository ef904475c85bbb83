"""The benchmark report: per-row figures (median and range) and ratios to mlx-lm."""

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


def describe_samples(values: Sequence[float]) -> Dict[str, object]:
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
                "figures": {
                    name: describe_samples(samples[length, c.label][name]) for name in FIGURES
                },
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
