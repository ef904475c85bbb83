"""This project's speed and memory goals, checked against an `entropix-mlx bench` report.

    python benchmarks/bench_goals.py REPORT.json [REPORT.json ...]

`entropix-mlx bench` reports figures; the targets below are the project's own (the issues that
set them), so they live here, beside the other benchmarks. Ratios are ours / mlx-lm on the same
weights. Prints each goal with its value per row ("!" marks a miss) and whether every row meets
it; the exit status is 0 either way (a miss is reported, not asserted).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

SHARED = ("greedy", "standard", "entropix")
# (what is compared, which of our samplers, figure, direction, target)
GOALS = (
    ("entropix decode / mlx-lm sampled decode", ("entropix",), "decode_tps", ">=", 0.95),
    ("greedy decode / mlx-lm greedy decode", ("greedy",), "decode_tps", ">=", 1.0),
    ("prefill / mlx-lm prefill", SHARED, "prefill_tps", ">=", 1.0),
    ("peak memory / mlx-lm peak memory", SHARED, "peak_memory_mb", "<=", 1.05),
    ("sampler step / one decode step", SHARED, "sampler_share", "<=", 0.05),
)
# Ours on float32 weights (the CPU policy) against mlx-lm on the stored, quantized ones.
REFERENCE_GOALS = (
    ("float32 prefill / mlx-lm prefill on the stored weights", SHARED, "prefill_tps", ">=", 10.0),
    (
        "float32 greedy decode / mlx-lm greedy decode on the stored weights",
        ("greedy",),
        "decode_tps",
        ">=",
        1.3,
    ),
)
COLD_GOAL = ("first-use (cold compile cache) entropix decode / mlx-lm sampled decode", ">=", 0.95)


def evaluate_goals(rows: List[dict], cold_compile: Optional[dict] = None) -> List[dict]:
    """Each goal with its value per row and whether every row meets it."""
    goals = []
    for name, samplers, figure, direction, target in GOALS:
        checks = [
            {"row": row_name(row), "value": ratio(row, figure)}
            for row in rows
            if row["baseline"] and row["sampler"] in samplers
        ]
        goals.append(goal(name, direction, target, checks))
    for name, samplers, figure, direction, target in REFERENCE_GOALS:
        checks = [
            {"row": row_name(row), "value": row["reference_ratios"][figure]}
            for row in rows
            if row["reference_ratios"] and row["sampler"] in samplers
        ]
        if checks:
            goals.append(goal(name, direction, target, checks))
    cold = (cold_compile or {}).get("entropix_over_mlx_lm_cold_decode")
    if cold is not None:
        name, direction, target = COLD_GOAL
        checks = [{"row": f"{cold_compile['prompt_tokens']} tok", "value": cold}]
        goals.append(goal(name, direction, target, checks))
    return goals


def row_name(row: dict) -> str:
    return f"{row['prompt_tokens']} tok {row['label']}"


def ratio(row: dict, figure: str) -> float:
    return row["sampler_share"] if figure == "sampler_share" else row["ratios"][figure]


def goal(name: str, direction: str, target: float, checks: List[dict]) -> dict:
    for check in checks:
        value = check["value"]
        check["met"] = value >= target if direction == ">=" else value <= target
    met = all(c["met"] for c in checks)
    return {"goal": name, "target": f"{direction} {target}", "checks": checks, "met": met}


def goal_lines(goals: List[dict]) -> List[str]:
    lines = ["Goals (ours / mlx-lm on the same weights):"]
    for g in goals:
        values = ", ".join(f"{c['value']:.2f}" + ("" if c["met"] else "!") for c in g["checks"])
        lines.append(f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']} {g['target']}: {values}")
    return lines


def main(argv=None):
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            goals = evaluate_goals(report["rows"], report.get("cold_compile"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"{path}: not a readable `entropix-mlx bench --json` report ({e!r})")
        print("\n".join([path, *goal_lines(goals)]))


if __name__ == "__main__":
    main()
