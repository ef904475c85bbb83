"""Presets tuned for writing without giving up arithmetic (`calibrate --objective writing`).

Every grid candidate answers the same development items, paired (same seeds):
1. arithmetic: the dev items of `calibrate --objective accuracy` (seed 1; the evaluation uses
   seed 0); a candidate is kept only if its accuracy is within ARITH_SLACK of greedy's;
2. writing: the writing task's dev prompts (the evaluation's test prompts are never seen),
   with the standard sampler at STANDARD_TEMPS beside the candidates. The best standard arm is
   the one that loops least (ties: the least junk); its junk share is the cap;
3. chosen: of the candidates kept by (1) with junk at most the cap, the one that loops least
   (ties: the lower surprisal, the nearer the model's own text; then the earlier). If none is
   kept, the model's preset stays, and the preset file says so.

Grid: the loop guard (SamplerConfig.loop_attn: off, 0.1, 0.15, 0.2) x the argmax corner
(low_ent and low_vent as in the preset, and narrowed to 2/3: more tokens sampled).
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..sampling import SamplerConfig
from .arms import Arm
from .runner import run_eval
from .tuning import DEV_ARITH_SEED, Candidate, evaluate, greedy_accuracy, preset_file
from .writing import load_writing_task
from .writing_report import ArmData
from .writing_scores import WritingScorer

ARITH_SLACK = 0.01
STANDARD_TEMPS = (0.7, 0.9, 1.3, 1.7)
LOOP_GUARDS = (1.0, 0.1, 0.15, 0.2)  # loop_attn; 1 is off
CORNERS = (1.0, 2 / 3)
WRITING_MEASURES = ("loop", "junk", "surprisal")


@dataclass(frozen=True)
class WritingCandidate:
    """One grid candidate (or a standard arm: `arith` None) and its dev measures."""

    name: str
    config: SamplerConfig
    arith: Optional[Candidate]
    loop: float
    junk: float
    surprisal: float


def writing_grid(base: SamplerConfig) -> List[Tuple[str, SamplerConfig]]:
    grid = []
    for factor in CORNERS:
        corner = base.replace(
            low_ent=round(base.low_ent * factor, 4), low_vent=round(base.low_vent * factor, 4)
        )
        for guard in LOOP_GUARDS:
            name = f"loop guard {'off' if guard >= 1 else guard}, argmax x{factor:.2g}"
            grid.append((name, corner.replace(loop_attn=guard)))
    return grid


def writing_measures(
    model, tokenizer, arms: Sequence[Arm], limit: int, seeds, max_tokens: int, batch_size: int, log
) -> dict:
    """{arm name: {measure: mean over prompts}} on the writing task's dev prompts."""
    task = load_writing_task(tokenizer, "dev", limit, max_tokens)
    scorer = WritingScorer(model, task)
    run = run_eval(
        model, tokenizer, task, arms, seeds, batch_size=batch_size, on_record=scorer.score, log=log
    )
    prompts = [item.index for item in task.items]
    out = {}
    for arm in arms:
        data = ArmData([r for r in run.records if r["arm"] == arm.name], prompts)
        out[arm.name] = {m: prompt_mean(data.values[m]) for m in WRITING_MEASURES}
    return out


def prompt_mean(values: np.ndarray) -> float:
    """The mean over prompts that have the measure (NaN if none has: no words, say); a NaN junk
    share fails the junk cap."""
    known = values[~np.isnan(values)]
    return float(known.mean()) if known.size else float("nan")


def tune_writing(
    model,
    tokenizer,
    base: SamplerConfig,
    *,
    items: int = 90,
    prompts: int = 48,
    max_tokens: int = 96,
    seeds: Sequence[int] = (0,),
    batch_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
):
    """(chosen candidate or None, candidates, standard arms, greedy's dev arithmetic accuracy)."""
    grid = writing_grid(base)
    greedy = greedy_accuracy(model, tokenizer, base, items, batch_size, progress, log)
    arith = evaluate(model, tokenizer, grid, items, seeds, batch_size, progress, log)
    standard = [Arm(f"standard:t={t:g}", "standard", base.replace(temp=t)) for t in STANDARD_TEMPS]
    candidates = [Arm(f"c{i}", "entropix", config) for i, (_, config) in enumerate(grid)]
    measures = writing_measures(
        model, tokenizer, standard + candidates, prompts, seeds, max_tokens, batch_size, log
    )
    tried = [
        WritingCandidate(name, config, a, **measures[f"c{i}"])
        for i, ((name, config), a) in enumerate(zip(grid, arith))
    ]
    baselines = [WritingCandidate(a.name, a.config, None, **measures[a.name]) for a in standard]
    chosen = choose(tried, baselines, greedy)
    return chosen, tried, baselines, greedy


def best_standard(baselines: Sequence[WritingCandidate]) -> WritingCandidate:
    return min(baselines, key=lambda b: (b.loop, b.junk))  # min keeps the first of equals


def keeps_arithmetic(c: WritingCandidate, greedy: float) -> bool:
    return c.arith.accuracy >= greedy - ARITH_SLACK - 1e-9


def choose(
    tried: Sequence[WritingCandidate], baselines: Sequence[WritingCandidate], greedy: float
) -> Optional[WritingCandidate]:
    cap = best_standard(baselines).junk
    kept = [c for c in tried if keeps_arithmetic(c, greedy) and c.junk <= cap + 1e-12]
    return min(kept, key=lambda c: (c.loop, c.surprisal)) if kept else None


def format_writing_candidates(
    tried, baselines, chosen: Optional[WritingCandidate], greedy: float
) -> str:
    width = max(len(c.name) for c in [*tried, *baselines])
    cap = best_standard(baselines)
    lines = [f"{'arm'.ljust(width)}  arith  loops   junk  surprisal"]
    for c in [*baselines, *tried]:
        arith = f"{100 * c.arith.accuracy:4.1f}%" if c.arith else "    -"
        if c is chosen:
            mark = "  <- chosen"
        elif c is cap:
            mark = "  <- best standard arm (junk cap)"
        elif c.arith and not keeps_arithmetic(c, greedy):
            mark = "  (arithmetic below greedy - 1 pt)"
        else:
            mark = ""
        lines.append(
            f"{c.name.ljust(width)}  {arith}  {100 * c.loop:4.1f}%  {100 * c.junk:4.2f}%  "
            f"{c.surprisal:9.3f}{mark}"
        )
    lines.append(f"greedy arithmetic: {100 * greedy:.1f}%")
    if chosen is None:
        lines.append("No candidate kept arithmetic at no more junk than the best standard arm.")
    return "\n".join(lines)


def writing_preset_toml(
    chosen: Optional[WritingCandidate],
    tried,
    baselines,
    greedy: float,
    base: SamplerConfig,
    model_name: str,
    base_source: str,
    items: int,
    prompts: int,
    max_tokens: int,
    seeds: Sequence[int],
) -> str:
    """The preset file: a header (data, rule, every arm's dev measures), then the settings that
    the grid touches (the model's preset's own when nothing was chosen)."""
    seed_text = ",".join(map(str, seeds))
    header = [
        f"Entropix sampler preset for {model_name}, written by "
        "`entropix-mlx calibrate --objective writing`.",
        f"Data: {items} development arithmetic items (seed {DEV_ARITH_SEED}; the evaluation uses "
        f"seed 0) and the first {prompts} development writing prompts ({max_tokens} tokens), "
        f"sampling seeds {seed_text}. Start: {base_source}.",
        "Rule: arithmetic within 1 point of greedy, junk at most the best standard arm's (the "
        "fewest loops), then the fewest loops; see entropix_mlx/evaluation/writing_tuning.py.",
        f"greedy arithmetic: {100 * greedy:.1f}%",
        *(
            f"{c.name}: "
            + (f"arithmetic {100 * c.arith.accuracy:.1f}%, " if c.arith else "")
            + f"loops {100 * c.loop:.1f}%, junk {100 * c.junk:.2f}%, surprisal {c.surprisal:.3f}"
            for c in [*baselines, *tried]
        ),
        f"Chosen: {chosen.name}." if chosen else "Chosen: none; the model's preset is kept.",
    ]
    config = chosen.config if chosen else base
    keys = ("low_ent", "low_vent", "med_ent", "high_ent", "high_vent", "pause_token", "loop_attn")
    settings = {k: v for k, v in config.to_dict().items() if k in keys}
    return preset_file(header, settings)
