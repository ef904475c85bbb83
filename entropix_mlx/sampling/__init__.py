"""Entropix sampling: config, metrics, exact draws and the five-strategy sampler."""

from .config import MAX_CANDIDATES, SamplerConfig
from .draw import make_greedy_sampler, make_standard_sampler, sample
from .entropix import (
    PARAMETERS,
    STRATEGIES,
    choose_strategy,
    make_entropix_sampler,
    resolve_pause_token,
    strategy_parameters,
)
from .metrics import (
    METRICS,
    attention_metrics,
    calculate_metrics,
    logits_entropy_varentropy,
)
from .samplers import SAMPLERS, make_sampler, reads_scores

__all__ = [
    "MAX_CANDIDATES",
    "METRICS",
    "PARAMETERS",
    "SAMPLERS",
    "STRATEGIES",
    "SamplerConfig",
    "attention_metrics",
    "calculate_metrics",
    "choose_strategy",
    "logits_entropy_varentropy",
    "make_entropix_sampler",
    "make_greedy_sampler",
    "make_sampler",
    "make_standard_sampler",
    "reads_scores",
    "resolve_pause_token",
    "sample",
    "strategy_parameters",
]
