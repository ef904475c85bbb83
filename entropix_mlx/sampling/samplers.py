"""The samplers by name: what the CLI, the server, the evaluation and the benchmarks choose from."""

from typing import Optional

from ..errors import ConfigError
from .config import SamplerConfig
from .draw import make_greedy_sampler, make_standard_sampler
from .entropix import make_entropix_sampler, resolve_pause_token

SAMPLERS = ("entropix", "standard", "greedy")


def make_sampler(name: str = "entropix", config: Optional[SamplerConfig] = None, tokenizer=None):
    """The sampler step for `name` (one of SAMPLERS) with `config`'s settings; with a tokenizer,
    Entropix's pause token is resolved from its text."""
    config = config or SamplerConfig()
    if name == "entropix":
        pause_id = (
            resolve_pause_token(config, tokenizer)
            if tokenizer is not None
            else config.pause_token_id
        )
        return make_entropix_sampler(config, pause_token_id=pause_id)
    if name == "standard":
        return make_standard_sampler(config.temp, config.top_p, config.top_k, config.min_p)
    if name == "greedy":
        return make_greedy_sampler()
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
