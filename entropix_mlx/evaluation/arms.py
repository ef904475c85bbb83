"""The arms compared: a name, a sampler and its settings."""

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from ..errors import EvalError
from ..sampling import SAMPLERS, SamplerConfig
from ..sampling.config import MAX_BRANCH_K

ARMS = ("greedy", "standard", "entropix")
# Answer-level methods over several paths, chosen with --sampler: CoT-decoding (greedy paths after
# the top-k first tokens, answers weighed by their tokens' margins) and self-consistency (standard
# samples, majority vote).
ANSWER_LEVEL = ("cot-decoding", "self-consistency")
DEFAULT_PATHS = 5
BASELINES = ("greedy", "standard")  # every other arm is compared against each one present
CONTROL_TEMPERATURE = (
    0.7  # the non-adaptive control: the same base top_p/top_k/min_p, fixed temperature
)


@dataclass(frozen=True)
class Arm:
    """One way of answering: `sampler` (greedy, standard or entropix) with `config`."""

    name: str
    sampler: str  # greedy, standard, entropix, or one of ANSWER_LEVEL
    config: SamplerConfig
    paths: int = 1  # answer-level methods: paths per answer
    repetition_penalty: Optional[float] = None  # mlx-lm's, over the last 20 tokens (a baseline)

    @property
    def deterministic(self) -> bool:
        """Greedy and CoT-decoding ignore the seed, so they run once per item."""
        return self.sampler in ("greedy", "cot-decoding")

    @property
    def path_sampler(self) -> str:
        """The sampler each path runs: greedy for CoT-decoding, standard for self-consistency."""
        paths = {"cot-decoding": "greedy", "self-consistency": "standard"}
        return paths.get(self.sampler, self.sampler)

    def settings(self) -> Dict[str, object]:
        """The settings that shape this arm's choices (for the summary)."""
        penalty = {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty else {}
        if self.sampler == "greedy":
            return penalty
        if self.sampler == "cot-decoding":
            return {"paths": self.paths, "choice": "largest summed answer-token margin by answer"}
        if self.path_sampler == "standard":
            base = {k: getattr(self.config, k) for k in ("temp", "top_p", "top_k", "min_p")}
            if self.paths > 1:
                return {**base, "paths": self.paths, "choice": "majority vote"}
            return {**base, **penalty}
        return self.config.to_dict()


def make_arms(
    samplers: Sequence[str] = ARMS,
    preset: Optional[Mapping[str, object]] = None,
    presets: Sequence[Tuple[str, SamplerConfig]] = (),
    paths: int = DEFAULT_PATHS,
) -> list:
    """Arms for `samplers` on the model's `preset`, plus one entropix arm per (name, config) preset;
    the answer-level arms decode `paths` paths per answer."""
    base = SamplerConfig.merged(preset or {})
    if paths < 2 or ("cot-decoding" in samplers and paths > MAX_BRANCH_K):
        raise EvalError(
            f"--paths must be >= 2 (at most {MAX_BRANCH_K} for cot-decoding), not {paths}"
        )
    arms = []
    for sampler in dict.fromkeys(samplers):  # in order, once each
        if sampler not in SAMPLERS + ANSWER_LEVEL:
            choices = ", ".join(SAMPLERS + ANSWER_LEVEL)
            raise EvalError(f"unknown sampler {sampler!r}; choose from {choices}")
        controlled = sampler in ("standard", "self-consistency")
        config = base.replace(temp=CONTROL_TEMPERATURE) if controlled else base
        n = paths if sampler in ANSWER_LEVEL else 1
        arms.append(Arm(f"{sampler}@{n}" if n > 1 else sampler, sampler, config, n))
    for name, config in presets:
        arms.append(Arm(f"entropix:{name}", "entropix", config))
    names = [arm.name for arm in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EvalError(
            f"two arms are named {duplicates[0]!r}; give the --config files different names"
        )
    if not arms:
        raise EvalError("no arms to compare; pass --sampler and/or --config")
    return arms
