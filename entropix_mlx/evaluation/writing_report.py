"""The writing task's summary (summary.json) and tables; prompts are the unit of every interval.

items.jsonl: the fields of report.py's records (answer, correct and extracted are null), plus
  token_ids (the generated tokens, EOS included), token_logprobs (their log-probabilities under
  the untempered model, as generation saw them), kind (request | continuation | loop-escape),
  ended (bool: the answer ended with EOS), loop (bool: the last tokens are two copies of a
  phrase of >= 3 tokens, or no EOS and seq-rep-4 > 0.3), seq_rep_4, surprisal (mean negative
  log-likelihood per token under the untempered model, nats), relevance (mean log p(answer |
  prompt) - mean log p(answer | a neutral prompt), nats/token; null for loop-escape prompts),
  words, unknown_words (words English wordfreq does not know), junk (their share; null without
  words), scoring_seconds. EOS is not measured; an empty answer has null surprisal.

summary.json (schema "entropix-mlx/writing-summary/1"):
  schema, task, split, model, data {source, licence}, items, items_by_kind, seeds, max_tokens
  {kind: tokens}, quick, started, wall_seconds, prefill_seconds, scoring_seconds, resamples,
  arms: [{name, sampler, settings, family (temperature | min-p | repetition penalty | null),
          answers, finish {eos, max_tokens}, tokens_per_answer, seconds_per_answer (generation),
          scoring_seconds_per_answer,
          measures {loop, ended, seq_rep_4, surprisal, junk, relevance:
                    {mean (over prompts of each prompt's mean), ci95}},
          corpus {rep_2, rep_3, rep_4, diversity: {value, ci95}, distinct_1, distinct_2},
          by_kind {kind: {measure: mean, diversity}}}],
  comparisons: [{arm, baseline, measure, kind (rate | mean | corpus), prompts, delta (arm minus
                 baseline), ci95 (paired bootstrap over prompts), test, p_value, and for rates
                 arm_only and baseline_only (pairs (prompt, seed); greedy stands for every seed)}],
  human: {prompts, measures {seq_rep_4, surprisal, junk, loop}, corpus {rep_2, rep_3, rep_4,
          diversity}} of the continuation prompts' own next tokens (null without any),
  human_gaps: [{arm, measure, delta (arm minus human, continuation prompts), ci95}],
  frontier: {curve, families {family: [arm]}, comparisons: [{arm, measure, surprisal, value,
             curve, delta, ci95, resamples_outside, verdict}]}.
Rates and means: each prompt's mean over its answers (seeds), then the mean over prompts; tests:
exact McNemar on rates, Wilcoxon signed-rank on per-prompt means; corpus measures (rep-n,
diversity) pool n-gram counts (Su et al. 2022); distinct-n is the mean over seeds of one answer a
prompt (no interval). Arms of a sweep are judged on the frontier, not against the baselines.
"""

from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Dict, List, Optional, Sequence

import numpy as np

from .arms import BASELINES
from .bootstrap import (
    RESAMPLES,
    Resamples,
    interval_of,
    paired_mean_difference,
    sums,
    weighted_means,
)
from .frontier import CURVE, MEASURES, against_curve
from .report import aligned, pair_up
from .stats import paired_counts, wilcoxon_signed_rank
from .text_metrics import DIVERSITY_N, distinct_n, ngram_counts
from .writing import KINDS

SCHEMA = "entropix-mlx/writing-summary/1"
RATES = ("loop", "ended")
MEANS = ("seq_rep_4", "surprisal", "junk", "relevance")


def rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def interval(ci) -> list:
    return [rounded(ci[0]), rounded(ci[1])]


def content_ids(record: dict) -> List[int]:
    return record["token_ids"][:-1] if record["ended"] else record["token_ids"]


class ArmData:
    """One arm's records as per-prompt arrays over the task's prompts (NaN where none)."""

    def __init__(self, records: List[dict], prompts: Sequence[int]):
        self.records = records
        column = {item: i for i, item in enumerate(prompts)}
        by_prompt: Dict[int, List[dict]] = defaultdict(list)
        for r in records:
            by_prompt[column[r["item"]]].append(r)
        n = len(prompts)
        self.values = {m: np.full(n, np.nan) for m in RATES + MEANS}
        # Per prompt and n: the n-grams' distinct and total counts summed over its answers.
        self.ngrams = {k: np.zeros((n, 2)) for k in DIVERSITY_N}
        for i, rs in by_prompt.items():
            for m in RATES + MEANS:
                vals = [float(r[m]) for r in rs if r[m] is not None]
                self.values[m][i] = np.mean(vals) if vals else np.nan
            for r in rs:
                for k, (distinct, total) in ngram_counts(content_ids(r)).items():
                    self.ngrams[k][i] += (distinct, total)

    def rep(self, n: int, weights: np.ndarray) -> np.ndarray:
        distinct, total = (sums(self.ngrams[n][:, j], weights) for j in (0, 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, 1 - distinct / total, np.nan)

    def diversity(self, weights: np.ndarray) -> np.ndarray:
        return np.prod([1 - self.rep(n, weights) for n in DIVERSITY_N], axis=0)


def summarize_writing(
    task,
    run,
    arms: Sequence,
    human: Dict[int, dict],
    families: Dict[str, List[str]],
    *,
    model: str,
    split: str,
    seeds: Sequence[int],
    quick: bool = False,
    started: Optional[datetime] = None,
    baselines: Sequence[str] = BASELINES,
    resample_count: int = RESAMPLES,
) -> dict:
    """The summary.json object of a finished writing run (see this module's docstring)."""
    prompts = [item.index for item in task.items]
    kinds = {item.index: item.group for item in task.items}
    resamples = Resamples.draw(len(prompts), resample_count)
    data = {
        arm.name: ArmData([r for r in run.records if r["arm"] == arm.name], prompts) for arm in arms
    }
    family_of = {name: family for family, names in families.items() for name in names}
    swept = {name for family, names in families.items() if family != CURVE for name in names}
    swept |= {name for name in families.get(CURVE, []) if name != "standard"}
    named = [arm.name for arm in arms if arm.name not in swept]
    return {
        "schema": SCHEMA,
        "task": task.name,
        "split": split,
        "model": model,
        "data": {"source": task.source, "licence": task.licence},
        "items": len(prompts),
        "items_by_kind": dict(Counter(kinds.values())),
        "seeds": list(seeds),
        "max_tokens": {item.group: item.max_tokens for item in task.items},
        "quick": quick,
        "started": (started or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "wall_seconds": round(run.wall_seconds, 2),
        "prefill_seconds": round(run.prefill_seconds, 2),
        "scoring_seconds": round(sum(r["scoring_seconds"] for r in run.records), 2),
        "resamples": resample_count,
        "arms": [
            arm_summary(arm, data[arm.name], family_of.get(arm.name), resamples, kinds, prompts)
            for arm in arms
        ],
        "comparisons": comparisons(named, data, baselines, resamples),
        **human_part(data, human, resample_count),
        "frontier": frontier_part(arms, data, families, resamples),
    }


def arm_summary(arm, d: ArmData, family, resamples: Resamples, kinds, prompts) -> dict:
    records = d.records
    n = len(records)
    weights = resamples.with_original()
    measures = {}
    for m in RATES + MEANS:
        mean, ci = interval_of(lambda w, m=m: weighted_means(d.values[m], w), resamples)
        measures[m] = {"mean": rounded(mean), "ci95": interval(ci)}
    corpus = {f"rep_{k}": {"value": rounded(d.rep(k, weights[:1])[0])} for k in DIVERSITY_N}
    value, ci = interval_of(d.diversity, resamples)
    corpus["diversity"] = {"value": rounded(value), "ci95": interval(ci)}
    for k in (1, 2):
        corpus[f"distinct_{k}"] = rounded(per_seed_distinct(records, k))
    by_kind = {}
    for kind in KINDS:
        mask = np.array([kinds[p] == kind for p in prompts], dtype=float)[None]
        if mask.any():
            by_kind[kind] = {
                m: rounded(weighted_means(d.values[m], mask)[0]) for m in RATES + MEANS
            }
            by_kind[kind]["diversity"] = rounded(d.diversity(mask)[0])
    finish = Counter(r["finish"] for r in records)
    return {
        "name": arm.name,
        "sampler": arm.sampler,
        "settings": arm.settings(),
        "family": family,
        "answers": n,
        "finish": {reason: finish[reason] for reason in ("eos", "max_tokens")},
        "tokens_per_answer": rounded(sum(r["tokens"] for r in records) / n) if n else None,
        "seconds_per_answer": rounded(sum(r["seconds"] for r in records) / n) if n else None,
        "scoring_seconds_per_answer": rounded(sum(r["scoring_seconds"] for r in records) / n)
        if n
        else None,
        "measures": measures,
        "corpus": corpus,
        "by_kind": by_kind,
    }


def per_seed_distinct(records: List[dict], n: int) -> Optional[float]:
    """distinct-n of one answer a prompt, averaged over the seeds (so greedy's single answer set
    compares with a sampled arm's)."""
    by_seed: Dict[Optional[int], List[List[int]]] = defaultdict(list)
    for r in records:
        by_seed[r["seed"]].append(content_ids(r))
    values = [v for v in (distinct_n(a, n) for a in by_seed.values()) if v is not None]
    return sum(values) / len(values) if values else None


def comparisons(
    names: List[str], data: Dict[str, ArmData], baselines: Sequence[str], resamples: Resamples
) -> List[dict]:
    """Each named arm against each baseline present (a baseline not against earlier ones)."""
    present = [b for b in baselines if b in names]
    rows = []
    for i, baseline in enumerate(present):
        for arm in names:
            if arm == baseline or arm in present[:i]:
                continue
            a, b = data[arm], data[baseline]
            for m in RATES + MEANS:
                delta, ci, n = paired_mean_difference(a.values[m], b.values[m], resamples)
                row = {"arm": arm, "baseline": baseline, "measure": m, "prompts": n}
                row.update(delta=rounded(delta), ci95=interval(ci))
                if m in RATES:
                    counts = paired_counts(*rate_pairs(a.records, b.records, m))
                    row.update(
                        kind="rate",
                        test="exact McNemar",
                        p_value=round(counts.p_value, 6),
                        arm_only=counts.only_a,
                        baseline_only=counts.only_b,
                    )
                else:
                    d = a.values[m] - b.values[m]
                    test = wilcoxon_signed_rank([float(v) for v in d[~np.isnan(d)]])
                    row.update(
                        kind="mean", test="Wilcoxon signed-rank", p_value=round(test.p_value, 6)
                    )
                rows.append(row)
            delta, ci = interval_of(lambda w: a.diversity(w) - b.diversity(w), resamples)
            rows.append(
                {
                    "arm": arm,
                    "baseline": baseline,
                    "measure": "diversity",
                    "prompts": len(resamples.weights[0]),
                    "delta": rounded(delta),
                    "ci95": interval(ci),
                    "kind": "corpus",
                    "test": "paired bootstrap",
                    "p_value": None,
                }
            )
    return rows


def rate_pairs(a: List[dict], b: List[dict], measure: str):
    """(arm, baseline) outcomes keyed by (prompt, seed); greedy's stands for every seed."""
    outcome = lambda records: {(r["item"], r["seed"]): bool(r[measure]) for r in records}  # noqa: E731
    mine = outcome(a)
    return mine, pair_up(mine, outcome(b))


def human_part(data: Dict[str, ArmData], human: Dict[int, dict], resample_count: int) -> dict:
    """The human continuations' measures and each arm's gap to them, over continuation prompts."""
    if not human:
        return {"human": None, "human_gaps": []}
    prompts = sorted(human)
    reference = ArmData(
        [
            {**h, "item": i, "seed": None, "ended": False, "relevance": None}
            for i, h in sorted(human.items())
        ],
        prompts,
    )
    resamples = Resamples.draw(len(prompts), resample_count)
    ones = np.ones((1, len(prompts)))
    measures = ("seq_rep_4", "surprisal", "junk")
    gaps = []
    for name, d in data.items():
        sub = ArmData([r for r in d.records if r["item"] in human], prompts)
        for m in measures:
            delta, ci, _ = paired_mean_difference(sub.values[m], reference.values[m], resamples)
            gaps.append({"arm": name, "measure": m, "delta": rounded(delta), "ci95": interval(ci)})
        for k in DIVERSITY_N:
            delta, ci = interval_of(lambda w, k=k: sub.rep(k, w) - reference.rep(k, w), resamples)
            gaps.append(
                {"arm": name, "measure": f"rep_{k}", "delta": rounded(delta), "ci95": interval(ci)}
            )
        delta, ci = interval_of(lambda w: sub.diversity(w) - reference.diversity(w), resamples)
        gaps.append(
            {"arm": name, "measure": "diversity", "delta": rounded(delta), "ci95": interval(ci)}
        )
    loops = [h["loop"] for h in human.values()]
    return {
        "human": {
            "prompts": len(prompts),
            "measures": {
                **{m: rounded(weighted_means(reference.values[m], ones)[0]) for m in measures},
                "loop": rounded(sum(loops) / len(loops)),
            },
            "corpus": {
                **{f"rep_{k}": rounded(reference.rep(k, ones)[0]) for k in DIVERSITY_N},
                "diversity": rounded(reference.diversity(ones)[0]),
            },
        },
        "human_gaps": gaps,
    }


def frontier_part(arms, data: Dict[str, ArmData], families, resamples: Resamples) -> dict:
    """Every arm off the temperature curve, measure by measure, against the curve."""
    curve = families.get(CURVE, [])
    rows = []
    if len(curve) >= 2:
        for arm in arms:
            if arm.name in curve:
                continue
            d = data[arm.name]
            for m, lower_is_better in MEASURES.items():
                row = against_curve(
                    np.stack([data[c].values["surprisal"] for c in curve]),
                    np.stack([data[c].values[m] for c in curve]),
                    d.values["surprisal"],
                    d.values[m],
                    resamples,
                    lower_is_better,
                )
                rows.append({"arm": arm.name, "measure": m, **row})
    return {"curve": CURVE, "families": families, "comparisons": rows}


# --- tables ----------------------------------------------------------------------------------


def pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def num(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ci_text(ci, percent: bool = False) -> str:
    """A 95% interval; `percent` shows a share in points."""
    if ci[0] is None:
        return "-"
    scale = 100 if percent else 1
    return f"[{scale * ci[0]:+.3g}, {scale * ci[1]:+.3g}]"


def format_writing_table(summary: dict) -> str:
    """The summary as aligned tables: arms, paired comparisons, the frontier, the human gap."""
    s = summary
    quick = " [--quick smoke run]" if s["quick"] else ""
    kinds = ", ".join(f"{n} {k}" for k, n in s["items_by_kind"].items())
    head = (
        f"writing ({s['split']}): {s['items']} prompts ({kinds}) x seeds "
        f"{','.join(map(str, s['seeds']))} (greedy once); model {s['model']}; "
        f"{s['wall_seconds']:.0f} s{quick}"
    )
    parts = [head, arms_table(s), kinds_table(s)]
    if s["comparisons"]:
        parts.append(comparisons_table(s))
    if s["frontier"]["comparisons"]:
        parts.append(frontier_table(s))
    if s["human"]:
        parts.append(human_table(s))
    return "\n\n".join(parts)


def arms_table(s: dict) -> str:
    header = ["arm", "loops", "eos", "seq-rep-4", "surprisal", "junk", "relevance"]
    header += ["diversity", "distinct-2", "tokens", "s/answer", "scoring s"]
    rows = [header]
    for arm in s["arms"]:
        m = arm["measures"]
        rows.append(
            [
                arm["name"],
                pct(m["loop"]["mean"]),
                pct(m["ended"]["mean"]),
                num(m["seq_rep_4"]["mean"]),
                num(m["surprisal"]["mean"]),
                pct(m["junk"]["mean"]),
                num(m["relevance"]["mean"]),
                num(arm["corpus"]["diversity"]["value"]),
                num(arm["corpus"]["distinct_2"]),
                num(arm["tokens_per_answer"], 1),
                num(arm["seconds_per_answer"], 2),
                num(arm["scoring_seconds_per_answer"], 2),
            ]
        )
    return aligned(rows)


def kinds_table(s: dict) -> str:
    kinds = [k for k in KINDS if k in s["items_by_kind"]]
    rows = [["by kind: loops / surprisal", *kinds]]
    for arm in s["arms"]:
        cells = []
        for kind in kinds:
            m = arm["by_kind"].get(kind, {})
            cells.append(f"{pct(m.get('loop'))} / {num(m.get('surprisal'), 2)}")
        rows.append([arm["name"], *cells])
    return aligned(rows)


def comparisons_table(s: dict) -> str:
    rows = [["paired comparison", "measure", "delta", "95% CI", "p", "test"]]
    for c in s["comparisons"]:
        percent = c["kind"] == "rate" or c["measure"] == "junk"
        delta = c["delta"]
        rows.append(
            [
                f"{c['arm']} vs {c['baseline']}",
                c["measure"],
                "-"
                if delta is None
                else (f"{100 * delta:+.1f} pt" if percent else f"{delta:+.3f}"),
                ci_text(c["ci95"], percent),
                "-" if c["p_value"] is None else f"{c['p_value']:.3g}",
                c["test"],
            ]
        )
    return aligned(rows)


def frontier_table(s: dict) -> str:
    rows = [
        [
            "against the temperature curve",
            "measure",
            "surprisal",
            "value",
            "curve",
            "delta",
            "95% CI",
            "verdict",
        ]
    ]
    for c in s["frontier"]["comparisons"]:
        rows.append(
            [
                c["arm"],
                c["measure"],
                num(c["surprisal"]),
                num(c["value"]),
                num(c["curve"]),
                num(c["delta"]),
                ci_text(c["ci95"]),
                c["verdict"],
            ]
        )
    return aligned(rows)


def human_table(s: dict) -> str:
    h = s["human"]
    line = (
        f"human continuations ({h['prompts']} prompts): surprisal {num(h['measures']['surprisal'])}, "
        f"seq-rep-4 {num(h['measures']['seq_rep_4'])}, junk {pct(h['measures']['junk'])}, "
        f"diversity {num(h['corpus']['diversity'])}"
    )
    rows = [["gap to the human text", "measure", "delta", "95% CI"]]
    for g in s["human_gaps"]:
        if g["measure"] in ("surprisal", "seq_rep_4", "diversity"):
            rows.append([g["arm"], g["measure"], num(g["delta"]), ci_text(g["ci95"])])
    return line + "\n" + aligned(rows)
