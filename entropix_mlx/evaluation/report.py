"""The output of an evaluation: per-answer records (items.jsonl), a summary (summary.json), a table.

items.jsonl: one JSON object per answer, keys always present in this order:
  task, item (0-based index), id, group (e.g. "level-2", or null),
  arm, sampler (greedy | standard | entropix, null for log-likelihood arms),
  seed (the run seed; null for greedy and log-likelihood, which ignore it),
  sample_seed (the per-item seed given to the sampler, null when unused),
  gold (the gold number as a string; for multiple choice the gold index),
  answer (the extracted number as a canonical string, or null; for multiple choice the chosen index),
  correct (bool), extracted (bool: a number was found), completion (the text up to the stop
  string; null for multiple choice), finish (eos | stop_string | max_tokens; null for
  multiple choice), tokens (generated tokens; for multiple choice the tokens scored),
  seconds (this answer's time, shared prompt prefill excluded), strategies (entropix:
  {strategy: tokens}, else {}), pause_tokens (entropix: pause tokens emitted, else null),
  scores (multiple choice: one score per choice, else null),
  row_tokens (tokens decoded by every row the answer used: rollouts and paths included; the
  answer's compute, one row of a forward pass each; multiple choice: the tokens scored),
  forks (look-ahead forks committed in the answer), paths (decoded paths: >1 for
  self-consistency; CoT-decoding's paths are forks) and path_answers (each path's extracted
  answer when paths > 1, else null).

summary.json (schema "entropix-mlx/eval-summary/1"):
  schema, task, kind (generate | choice), model, data {source, licence, file},
  items, seeds, max_tokens, stop, quick, started (UTC ISO time), wall_seconds,
  prefix_tokens, prefill_seconds,
  chance (multiple choice: mean of 1/choices; else null),
  arms: [{name, sampler, settings, answers, correct, accuracy, ci95 [low, high] (Wilson),
          extraction_failures, finish {eos, stop_string, max_tokens}, tokens_per_answer,
          row_tokens_per_answer, forks_per_answer, seconds_per_answer,
          by_group {group: {answers, correct, accuracy}},
          strategies ({strategy: share of tokens} for entropix arms, else null),
          pause_per_100_tokens (entropix arms, else null)}],
  comparisons: [{arm, baseline, pairs, both, arm_only, baseline_only, neither,
                 accuracy_delta (arm minus baseline, over the pairs), p_value (exact McNemar)}].
Pairs are (item, seed); a greedy answer pairs with every seed of the other arm.
"""

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..sampling import STRATEGIES
from .arms import BASELINES
from .runner import CHOICE_ARMS, FINISH_REASONS
from .stats import paired_counts, wilson_interval

SCHEMA = "entropix-mlx/eval-summary/1"
ITEMS_FILE = "items.jsonl"
SUMMARY_FILE = "summary.json"
CHOICE_SETTINGS = {
    "loglik-sum": {"scoring": "summed log-probability of the choice's tokens"},
    "loglik-norm": {"scoring": "summed log-probability per character of the choice"},
}
Key = Tuple[int, Optional[int]]


def summarize(
    task,
    run,
    arms: Sequence = (),
    *,
    model: str,
    seeds: Sequence[int],
    max_tokens: Optional[int],
    quick: bool = False,
    started: Optional[datetime] = None,
    baselines: Sequence[str] = BASELINES,
) -> dict:
    """The summary.json object of a finished run (see this module's docstring)."""
    choice = task.kind == "choice"
    arm_rows = (
        [(name, None, CHOICE_SETTINGS[name]) for name in CHOICE_ARMS]
        if choice
        else [(arm.name, arm.sampler, arm.settings()) for arm in arms]
    )
    records = run.records
    started = started or datetime.now(timezone.utc)
    return {
        "schema": SCHEMA,
        "task": task.name,
        "kind": task.kind,
        "model": model,
        "data": {"source": task.source, "licence": task.licence, "file": task.data},
        "items": len(task.items),
        "seeds": None if choice else list(seeds),
        "max_tokens": None if choice else (max_tokens or task.max_tokens),
        "stop": list(task.stop),
        "quick": quick,
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round(run.wall_seconds, 2),
        "prefix_tokens": run.prefix_tokens,
        "prefill_seconds": round(run.prefill_seconds, 2),
        "chance": round(sum(1 / len(i.choices) for i in task.items) / len(task.items), 6)
        if choice
        else None,
        "arms": [
            arm_summary(name, sampler, settings, [r for r in records if r["arm"] == name])
            for name, sampler, settings in arm_rows
        ],
        "comparisons": comparisons(
            [row[0] for row in arm_rows], records, ("loglik-sum",) if choice else baselines
        ),
    }


def arm_summary(name: str, sampler: Optional[str], settings: dict, records: List[dict]) -> dict:
    n = len(records)
    correct = sum(r["correct"] for r in records)
    low, high = wilson_interval(correct, n)
    finish = Counter(r["finish"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    strategies = Counter()
    for r in records:
        strategies.update(r["strategies"])
    entropix = sampler == "entropix"
    return {
        "name": name,
        "sampler": sampler,
        "settings": settings,
        "answers": n,
        "correct": correct,
        "accuracy": ratio(correct, n),
        "ci95": [round(low, 6), round(high, 6)],
        "extraction_failures": sum(not r["extracted"] for r in records),
        "finish": {reason: finish[reason] for reason in FINISH_REASONS} if sampler else None,
        "tokens_per_answer": ratio(tokens, n),
        "row_tokens_per_answer": ratio(sum(r.get("row_tokens", r["tokens"]) for r in records), n),
        "forks_per_answer": ratio(sum(r.get("forks", 0) for r in records), n),
        "seconds_per_answer": ratio(sum(r["seconds"] for r in records), n),
        "by_group": by_group(records),
        "strategies": {s: ratio(strategies[s], tokens) for s in STRATEGIES} if entropix else None,
        "pause_per_100_tokens": ratio(100 * sum(r["pause_tokens"] or 0 for r in records), tokens)
        if entropix
        else None,
    }


def ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 6) if b else None


def by_group(records: List[dict]) -> Dict[str, dict]:
    groups: Dict[str, List[bool]] = {}
    for r in records:
        if r["group"] is not None:
            groups.setdefault(r["group"], []).append(r["correct"])
    return {
        g: {"answers": len(v), "correct": sum(v), "accuracy": ratio(sum(v), len(v))}
        for g, v in sorted(groups.items())
    }


def outcomes(records: Iterable[dict], arm: str) -> Dict[Key, bool]:
    return {(r["item"], r["seed"]): r["correct"] for r in records if r["arm"] == arm}


def pair_up(a: Dict[Key, bool], b: Dict[Key, bool]) -> Dict[Key, bool]:
    """`b` keyed like `a`: a seedless (greedy) answer stands for every seed of its item."""
    return {
        key: b[key] if key in b else b[(key[0], None)]
        for key in a
        if key in b or (key[0], None) in b
    }


def comparisons(arm_names: List[str], records: List[dict], baselines: Sequence[str]) -> List[dict]:
    """Each arm against each baseline present (a baseline is not compared with earlier ones)."""
    present = [b for b in baselines if b in arm_names]
    rows = []
    for i, baseline in enumerate(present):
        for arm in arm_names:
            if arm == baseline or arm in present[:i]:
                continue
            a = outcomes(records, arm)
            counts = paired_counts(a, pair_up(a, outcomes(records, baseline)))
            rows.append(
                {
                    "arm": arm,
                    "baseline": baseline,
                    "pairs": counts.pairs,
                    "both": counts.both,
                    "arm_only": counts.only_a,
                    "baseline_only": counts.only_b,
                    "neither": counts.neither,
                    "accuracy_delta": ratio(counts.only_a - counts.only_b, counts.pairs),
                    "p_value": round(counts.p_value, 6),
                }
            )
    return rows


# --- files -----------------------------------------------------------------------------------


class RecordWriter:
    """Streams records to DIR/items.jsonl as they are made (a cut-short run keeps its answers)."""

    def __init__(self, out_dir: Path):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(out_dir) / ITEMS_FILE
        self.stream = open(self.path, "w", encoding="utf-8")

    def write(self, record: dict):
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self):
        self.stream.close()


def write_summary(out_dir: Path, summary: dict) -> Path:
    path = Path(out_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# --- table -----------------------------------------------------------------------------------


def percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(summary: dict) -> str:
    """The summary as a few aligned tables for a person."""
    parts = [headline(summary), arms_table(summary)]
    groups = sorted({g for arm in summary["arms"] for g in arm["by_group"]})
    if groups:
        parts.append(groups_table(summary, groups))
    if summary["comparisons"]:
        parts.append(comparisons_table(summary))
    parts.extend(strategy_line(arm) for arm in summary["arms"] if arm["strategies"] is not None)
    return "\n\n".join(parts)


def headline(s: dict) -> str:
    if s["kind"] == "choice":
        what = f"{s['items']} items, log-likelihood multiple choice (chance {percent(s['chance'])})"
    else:
        seeds = ",".join(map(str, s["seeds"]))
        what = f"{s['items']} items x seeds {seeds} (greedy once per item), max {s['max_tokens']} tokens"
    quick = " [--quick smoke run]" if s["quick"] else ""
    return f"{s['task']}: {what}; model {s['model']}; {s['wall_seconds']:.0f} s{quick}"


def aligned(rows: List[List[str]]) -> str:
    """Left-align the first column, right-align the rest."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        )
        for row in rows
    )


def arms_table(s: dict) -> str:
    rows = [
        [
            "arm",
            "accuracy",
            "95% CI",
            "answers",
            "no answer",
            "eos/stop/max",
            "tokens",
            "row tokens",
            "s/answer",
        ]
    ]
    for arm in s["arms"]:
        low, high = arm["ci95"]
        finish = "/".join(str(arm["finish"][k]) for k in FINISH_REASONS) if arm["finish"] else "-"
        rows.append(
            [
                arm["name"],
                percent(arm["accuracy"]),
                f"[{100 * low:.1f}, {100 * high:.1f}]",
                str(arm["answers"]),
                str(arm["extraction_failures"]),
                finish,
                f"{arm['tokens_per_answer'] or 0:.1f}",
                f"{arm.get('row_tokens_per_answer') or 0:.1f}",
                f"{arm['seconds_per_answer'] or 0:.2f}",
            ]
        )
    return aligned(rows)


def groups_table(s: dict, groups: List[str]) -> str:
    rows = [["accuracy by group", *groups]]
    for arm in s["arms"]:
        rows.append(
            [arm["name"], *(percent(arm["by_group"].get(g, {}).get("accuracy")) for g in groups)]
        )
    return aligned(rows)


def comparisons_table(s: dict) -> str:
    rows = [
        ["paired comparison", "pairs", "arm only", "baseline only", "delta", "p (exact McNemar)"]
    ]
    for c in s["comparisons"]:
        delta = f"{100 * c['accuracy_delta']:+.1f} pt" if c["accuracy_delta"] is not None else "-"
        rows.append(
            [
                f"{c['arm']} vs {c['baseline']}",
                str(c["pairs"]),
                str(c["arm_only"]),
                str(c["baseline_only"]),
                delta,
                f"{c['p_value']:.3g}",
            ]
        )
    return aligned(rows)


def strategy_line(arm: dict) -> str:
    shares = "  ".join(
        f"{name} {percent(share)}" for name, share in arm["strategies"].items() if share
    )
    pauses = arm["pause_per_100_tokens"]
    return (
        f"{arm['name']} strategies (share of tokens): {shares or '-'}; pause tokens per 100 tokens: "
        + ("-" if pauses is None else f"{pauses:.2f}")
    )
