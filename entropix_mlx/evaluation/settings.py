"""What a run covers: the seeds, and the plan of a --quick smoke run."""

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import EvalError

QUICK_ITEMS = {"gsm8k": 2}  # 3 for the others
QUICK_MAX_TOKENS = {"arith": 6, "gsm8k": 16, "writing": 16}
QUICK_GSM8K_SHOTS = 1  # the 8-shot prefix alone takes minutes to prefill on a CPU


def parse_seeds(text: str) -> Tuple[int, ...]:
    """'1,2,3' -> (1, 2, 3); distinct integers, at least one."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise EvalError(
            f"--seeds takes comma-separated integers such as 1,2,3, not {text!r}"
        ) from None
    duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicates:
        raise EvalError(f"--seeds lists {duplicates[0]} twice; give each seed once")
    if any(s < 0 for s in seeds):
        raise EvalError(f"--seeds must be >= 0, not {text!r}")
    return seeds


@dataclass(frozen=True)
class Plan:
    """Items, seeds, answer length and GSM8K shots after --quick is applied."""

    limit: Optional[int]
    seeds: Tuple[int, ...]
    max_tokens: Optional[int]
    shots: Optional[int] = None


def plan(
    task: str, limit: Optional[int], seeds: Tuple[int, ...], max_tokens: Optional[int], quick: bool
) -> Plan:
    """--quick: 2-3 items, the first seed, few tokens and a 1-shot GSM8K prefix."""
    if not quick:
        return Plan(limit, seeds, max_tokens)
    items = QUICK_ITEMS.get(task, 3)
    return Plan(
        min(limit or items, items),
        seeds[:1],
        max_tokens or QUICK_MAX_TOKENS.get(task),
        QUICK_GSM8K_SHOTS if task == "gsm8k" else None,
    )
