"""Seeds: the one rule for a seed nobody gave, and the one rule for the seeds of a request's rows."""

import secrets
from typing import List, Optional

from ..errors import GenerationError

SEED_LIMIT = 2**64  # MLX's random keys take seeds in [0, 2**64)


def check_seed(seed: Optional[int], name: str = "seed"):
    """A seed is None or a whole number in [0, 2**64)."""
    bad_type = isinstance(seed, bool) or not isinstance(seed, int)
    if seed is not None and (bad_type or not 0 <= seed < SEED_LIMIT):
        raise GenerationError(f"{name} must be a whole number in [0, 2**64), not {seed!r}", "seed")


def fresh_seed() -> int:
    """A seed for a run that was given none: unpredictable, and distinct across requests."""
    return secrets.randbelow(2**31)


def row_seeds(seed: Optional[int], n: int) -> List[int]:
    """The seeds of `n` rows of one request: row i gets `seed + i` (a fresh seed when None), so
    that a row of a batch gives the tokens a single run with that seed gives."""
    check_seed(seed)
    base = fresh_seed() if seed is None else seed
    if base + n > SEED_LIMIT:
        raise GenerationError(
            f"seed {seed} leaves no room for {n} rows (row i is seeded with seed + i, which must "
            f"stay below 2**64); use a seed below {SEED_LIMIT - n + 1}",
            "seed",
        )
    return [base + i for i in range(n)]
