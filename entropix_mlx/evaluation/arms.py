"""The arms compared: a name, a sampler and its settings."""

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from ..errors import EvalError
from ..sampling import SAMPLERS, SamplerConfig

ARMS = ("greedy", "standard", "entropix")
BASELINES = ("greedy", "standard")  # every other arm is compared against each one present
CONTROL_TEMPERATURE = 0.7  # the non-adaptive control: the same base top_p/top_k/min_p, fixed temperature


@dataclass(frozen=True)
class Arm:
    """One way of answering: `sampler` (greedy, standard or entropix) with `config`."""

    name: str
    sampler: str
    config: SamplerConfig

    @property
    def deterministic(self) -> bool:
        """Greedy ignores the seed, so it runs once per item."""
        return self.sampler == "greedy"

    def settings(self) -> Dict[str, object]:
        """The settings that shape this arm's choices (for the summary)."""
        if self.sampler == "greedy":
            return {}
        if self.sampler == "standard":
            return {k: getattr(self.config, k) for k in ("temp", "top_p", "top_k", "min_p")}
        return self.config.to_dict()


def make_arms(samplers: Sequence[str] = ARMS, preset: Optional[Mapping[str, object]] = None,
              presets: Sequence[Tuple[str, SamplerConfig]] = ()) -> list:
    """Arms for `samplers` on the model's `preset`, plus one entropix arm per (name, config) preset."""
    base = SamplerConfig.from_dict(dict(preset or {}))
    arms = []
    for sampler in dict.fromkeys(samplers):  # in order, once each
        if sampler not in SAMPLERS:
            raise EvalError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        config = base.replace(temp=CONTROL_TEMPERATURE) if sampler == "standard" else base
        arms.append(Arm(sampler, sampler, config))
    for name, config in presets:
        arms.append(Arm(f"entropix:{name}", "entropix", config))
    names = [arm.name for arm in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EvalError(f"two arms are named {duplicates[0]!r}; give the --config files different names")
    if not arms:
        raise EvalError("no arms to compare; pass --sampler and/or --config")
    return arms
