"""The samplers by name: what the CLI, the server, the evaluation and the benchmarks choose from."""

from typing import Optional

from ..errors import ConfigError
from .config import SamplerConfig
from .draw import make_greedy_sampler, make_standard_sampler
from .entropix import make_entropix_sampler, resolve_pause_token

SAMPLERS = ("entropix", "standard", "greedy")


def make_sampler(
    name: str = "entropix",
    config: Optional[SamplerConfig] = None,
    tokenizer=None,
    vocab_size: Optional[int] = None,
):
    """The sampler step for `name` (one of SAMPLERS) with `config`'s settings; with a tokenizer,
    Entropix's pause token is resolved from its text, and with `vocab_size` checked to be in
    the model's vocabulary."""
    if name not in SAMPLERS:
        raise ConfigError(
            f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}", "sampler"
        )
    config = config or SamplerConfig()
    if name == "entropix":
        pause_id = (
            resolve_pause_token(config, tokenizer)
            if tokenizer is not None
            else config.pause_token_id
        )
        if vocab_size is not None and pause_id is not None and pause_id >= vocab_size:
            raise ConfigError(
                f"pause_token_id {pause_id} is outside the vocabulary ({vocab_size})", "config"
            )
        return make_entropix_sampler(config, pause_token_id=pause_id)
    if name == "standard":
        return make_standard_sampler(config.temp, config.top_p, config.top_k, config.min_p)
    return make_greedy_sampler()


def reads_scores(sampler) -> bool:
    """Whether a sampler step reads the final layer's attention scores (the Entropix sampler
    does, the plain ones do not); a step that does not say is given them."""
    return getattr(sampler, "reads_scores", True)
