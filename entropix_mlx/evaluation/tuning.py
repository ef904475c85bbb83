"""Presets tuned for accuracy on development items (`entropix-mlx calibrate --objective accuracy`).

A small, documented grid around the model's preset, every candidate answering the same dev items
(paired, same seeds): the most accurate wins; of equals, the one whose answers hold the fewest
pause tokens (text a reader must skip, which never made a dev answer right), then the earlier
candidate (fewer changes).
The dev items are arithmetic generated with seed DEV_ARITH_SEED; the evaluation's own items use
seed 0, so no evaluated item is ever tuned on.

Single-path grid (switches x argmax widening):
  switches   as-is | no resample (high_ent above any entropy: that corner goes to branch) |
             no pause and no resample (med_ent and high_ent above any entropy; the thresholds
             must rise, so pause cannot go alone)
  widening   low_ent and low_vent times 1, 1.5, 2.5 (kept 0.01 below med_ent and high_vent)
Branching grid (on the best single-path candidate): branch_k 2, 3 x branch_score margin, logprob
x gate as-is | wide (high_vent 0.01 above low_vent: every token outside the argmax corner with
varentropy above low_vent forks, while max_branch_points lasts), with branch_horizon and
max_branch_points as configured.
"""

import math
import textwrap
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

from ..sampling import SamplerConfig
from .arms import Arm
from .runner import run_eval
from .tasks import arith_task

DEV_ARITH_SEED = 1
WIDENING = (1.0, 1.5, 2.5)
SWITCHES = ("as-is", "no resample", "no pause, no resample")
BRANCH_KS = (2, 3)
GATES = ("as-is", "wide")
BRANCH_SCORES = ("margin", "logprob")


@dataclass(frozen=True)
class Candidate:
    name: str
    config: SamplerConfig
    correct: int = 0
    answers: int = 0
    row_tokens: int = 0
    pause_tokens: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.answers if self.answers else 0.0


def entropy_ceiling(vocab_size: int) -> float:
    """Bits above the entropy of any distribution over `vocab_size` tokens (log2 V)."""
    return math.ceil(math.log2(vocab_size)) + 1.0


def single_path_grid(base: SamplerConfig, vocab_size: int) -> List[Tuple[str, SamplerConfig]]:
    ceiling = entropy_ceiling(vocab_size)
    grid = []
    for switch in SWITCHES:
        config = base
        if switch != "as-is":
            config = config.replace(high_ent=ceiling + 1)
        if switch == "no pause, no resample":
            config = config.replace(med_ent=ceiling)
        for factor in WIDENING:
            widened = config.replace(
                low_ent=round(min(base.low_ent * factor, config.med_ent - 0.01), 4),
                low_vent=round(min(base.low_vent * factor, config.high_vent - 0.01), 4),
            )
            grid.append((f"{switch}, argmax x{factor:g}", widened))
    return grid


def branching_grid(
    base: SamplerConfig, k_values: Sequence[int] = BRANCH_KS
) -> List[Tuple[str, SamplerConfig]]:
    wide = base.replace(high_vent=round(base.low_vent + 0.01, 4))
    return [
        (f"branch_k {k}, {score}, {gate} gate", config.replace(branch_k=k, branch_score=score))
        for gate, config in zip(GATES, (base, wide))
        for k in k_values
        for score in BRANCH_SCORES
    ]


def evaluate(
    model,
    tokenizer,
    grid,
    items: int,
    seeds: Sequence[int],
    batch_size: int,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> List[Candidate]:
    """Every candidate on the same `items` dev arithmetic items and seeds."""
    task = arith_task(items, seed=DEV_ARITH_SEED)
    arms = [Arm(f"c{i}", "entropix", config) for i, (_, config) in enumerate(grid)]
    run = run_eval(
        model, tokenizer, task, arms, seeds, batch_size=batch_size, progress=progress, log=log
    )
    out = []
    for i, (name, config) in enumerate(grid):
        records = [r for r in run.records if r["arm"] == f"c{i}"]
        out.append(
            Candidate(
                name,
                config,
                sum(r["correct"] for r in records),
                len(records),
                sum(r["row_tokens"] for r in records),
                sum(r["pause_tokens"] for r in records),
            )
        )
    return out


def greedy_accuracy(
    model,
    tokenizer,
    base: SamplerConfig,
    items: int,
    batch_size: int,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> float:
    """Greedy decoding's accuracy on the same dev arithmetic items (it ignores seeds)."""
    task = arith_task(items, seed=DEV_ARITH_SEED)
    run = run_eval(
        model,
        tokenizer,
        task,
        [Arm("greedy", "greedy", base)],
        (0,),
        batch_size=batch_size,
        progress=progress,
        log=log,
    )
    return sum(r["correct"] for r in run.records) / len(run.records)


def best(candidates: Sequence[Candidate]) -> Candidate:
    """The most accurate; of equals, the fewest pause tokens; then the earliest."""
    return max(candidates, key=lambda c: (c.accuracy, -c.pause_tokens))  # max keeps the first


def tune(
    model,
    tokenizer,
    base: SamplerConfig,
    *,
    items: int = 90,
    seeds: Sequence[int] = (0,),
    batch_size: int = 16,
    branching: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> Tuple[Candidate, List[Candidate]]:
    """(the chosen candidate, every candidate tried). With `branching`, the branching grid is
    searched on top of the best single-path candidate and may win."""
    vocab = model.args.vocab_size
    tried = evaluate(
        model, tokenizer, single_path_grid(base, vocab), items, seeds, batch_size, progress, log
    )
    chosen = best(tried)
    if branching:
        more = evaluate(
            model, tokenizer, branching_grid(chosen.config), items, seeds, batch_size, progress, log
        )
        tried += more
        chosen = best([chosen, *more])
    return chosen, tried


def format_candidates(tried: Sequence[Candidate], chosen: Candidate) -> str:
    width = max(len(c.name) for c in tried)
    lines = [f"{'candidate'.ljust(width)}  accuracy  answers  row tokens/answer  pause tokens"]
    for c in tried:
        mark = "  <- chosen" if c is chosen else ""
        lines.append(
            f"{c.name.ljust(width)}  {100 * c.accuracy:7.1f}%  {c.answers:7d}  "
            f"{c.row_tokens / max(c.answers, 1):17.1f}  {c.pause_tokens:12d}{mark}"
        )
    return "\n".join(lines)


def accuracy_preset_toml(
    chosen: Candidate,
    tried: Sequence[Candidate],
    model_name: str,
    base_source: str,
    items: int,
    seeds: Sequence[int],
) -> str:
    """The preset file: a header (data, grid, every candidate's dev accuracy), then the settings
    that differ from SamplerConfig() or that the grid touched."""
    header = [
        f"Entropix sampler preset for {model_name}, written by "
        "`entropix-mlx calibrate --objective accuracy --task arith`.",
        f"Data: {items} development arithmetic items (seed {DEV_ARITH_SEED}; the evaluation uses "
        f"seed 0), sampling seeds {','.join(map(str, seeds))}. Start: {base_source}.",
        "Rule: the most accurate grid candidate (ties: the fewest pause tokens in its answers, "
        "then the earlier); see entropix_mlx/evaluation/tuning.py.",
        *(
            f"{c.name}: {100 * c.accuracy:.1f}% ({c.correct}/{c.answers}), "
            f"{c.pause_tokens} pause tokens"
            for c in tried
        ),
        f"Chosen: {chosen.name}.",
    ]
    keys = (
        "low_ent",
        "low_vent",
        "med_ent",
        "high_ent",
        "high_vent",
        "pause_token",
        "branch_k",
        "branch_horizon",
        "max_branch_points",
        "branch_score",
    )
    settings = {k: v for k, v in chosen.config.to_dict().items() if k in keys}
    if not settings["branch_k"]:
        settings = {k: v for k, v in settings.items() if not k.startswith(("branch", "max_branch"))}
    return preset_file(header, settings)


def preset_file(header: Sequence[str], settings: dict) -> str:
    """A tuned preset's text: `header`'s paragraphs as wrapped comments, then `settings` (a subset
    of SamplerConfig's, validated together) as TOML lines."""
    body = SamplerConfig.from_dict(settings).to_toml().splitlines()
    comments = [
        f"# {line}"
        for paragraph in header
        for line in textwrap.wrap(paragraph, 95, subsequent_indent="  ")
    ]
    return "\n".join(comments + [b for b in body if b.split(" =")[0] in settings]) + "\n"
