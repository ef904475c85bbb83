"""The Entropix sampler: five strategies chosen per row by entropy/varentropy, lazily."""

from __future__ import annotations

import numbers
from typing import Optional

import mlx.core as mx

from ..errors import ConfigError
from .config import MAX_CANDIDATES, SamplerConfig
from .draw import sample_rank, take_rank, top_candidates
from .metrics import attention_metrics, far_attention, logits_entropy_varentropy

STRATEGIES = ("argmax", "pause", "branch", "resample", "adaptive")
ARGMAX, PAUSE, BRANCH, RESAMPLE, ADAPTIVE = range(len(STRATEGIES))
PARAMETERS = ("temperature", "top_p", "top_k", "min_p")

# Fixed limits of the strategy table (the tunable coefficients live in SamplerConfig).
PAUSE_MAX_TEMP = 1.5
BRANCH_MAX_TEMP = 1.5
BRANCH_MIN_TOP_K = 5
RESAMPLE_MIN_TEMP = 2.0
RESAMPLE_MIN_TOP_P = 0.5
ADAPTIVE_TOP_P_RANGE = (0.1, 1.0)
ADAPTIVE_TOP_K_RANGE = (1, MAX_CANDIDATES)
ADAPTIVE_MIN_P_RANGE = (0.01, 0.5)


def choose_strategy(
    metrics: dict[str, mx.array], cfg: SamplerConfig, far: Optional[mx.array] = None
) -> mx.array:
    """Index into STRATEGIES per row [B] int32: the first matching quadrant wins. With the loop
    guard on, `far` ([B], see far_attention) above cfg.loop_attn keeps a row out of argmax."""
    ent, vent = metrics["logits_entropy"], metrics["logits_varentropy"]
    argmax = (ent < cfg.low_ent) & (vent < cfg.low_vent)
    if cfg.loop_attn < 1 and far is not None:
        argmax = argmax & (far <= cfg.loop_attn)
    conditions = (
        argmax,
        (ent > cfg.med_ent) & (vent < cfg.low_vent),  # pause
        (ent < cfg.high_ent) & (vent > cfg.high_vent),  # branch
        (ent > cfg.high_ent) & (vent > cfg.high_vent),  # resample
    )
    strategy = mx.full(ent.shape, ADAPTIVE, dtype=mx.int32)
    for index in reversed(range(len(conditions))):
        strategy = mx.where(conditions[index], index, strategy)
    return strategy


def strategy_parameters(metrics: dict[str, mx.array], cfg: SamplerConfig) -> dict[str, tuple]:
    """Every strategy's temperature, top_p, top_k and min_p from the metrics.

    Returns, per name in PARAMETERS, a tuple of five [B] float32 arrays in
    STRATEGIES order. The argmax strategy has temperature 0.
    """
    ent, vent = metrics["logits_entropy"], metrics["logits_varentropy"]
    attn_ent, attn_vent = metrics["attn_entropy"], metrics["attn_varentropy"]
    agreement, interaction = metrics["agreement"], metrics["interaction_strength"]
    zero, top_p, top_k, min_p = (
        mx.full(ent.shape, v, dtype=mx.float32) for v in (0, cfg.top_p, cfg.top_k, cfg.min_p)
    )

    pause_temp = cfg.temp * (cfg.pause_temp_offset + cfg.pause_temp_coef * attn_ent)
    branch_temp = cfg.temp * (cfg.branch_temp_offset + cfg.branch_temp_coef * interaction)
    branch_top_k = mx.floor(cfg.top_k * (1 + cfg.branch_top_k_coef * (1 - agreement)))
    resample_temp = cfg.temp * (cfg.resample_temp_offset + cfg.resample_temp_coef * attn_vent)
    resample_top_p = cfg.top_p - cfg.resample_top_p_coef * attn_ent

    logits_uncertainty = ent + vent
    attn_uncertainty = attn_ent + attn_vent
    ada_temp = cfg.temp * (
        1
        + cfg.ada_temp_logits * logits_uncertainty
        + cfg.ada_temp_attn * attn_uncertainty
        - cfg.ada_temp_agree * agreement
    )
    ada_top_p = cfg.top_p * (1 + cfg.ada_top_p * attn_vent)
    ada_top_k = mx.round(
        cfg.top_k * (1 + cfg.ada_top_k_int * interaction - cfg.ada_top_k_agree * agreement)
    )
    ada_min_p = cfg.min_p * (1 - cfg.ada_min_p * logits_uncertainty)

    pause_temp = mx.minimum(PAUSE_MAX_TEMP, pause_temp)
    branch_temp = mx.minimum(BRANCH_MAX_TEMP, branch_temp)
    # The candidate set bounds every top_k; the reported value says so.
    branch_top_k = mx.clip(branch_top_k, BRANCH_MIN_TOP_K, MAX_CANDIDATES)
    resample_temp = mx.maximum(RESAMPLE_MIN_TEMP, resample_temp)
    resample_top_p = mx.maximum(RESAMPLE_MIN_TOP_P, resample_top_p)
    ada_top_p = mx.clip(ada_top_p, *ADAPTIVE_TOP_P_RANGE)
    ada_top_k = mx.clip(ada_top_k, *ADAPTIVE_TOP_K_RANGE)
    ada_min_p = mx.clip(ada_min_p, *ADAPTIVE_MIN_P_RANGE)

    return {  # argmax, pause, branch, resample, adaptive
        "temperature": (zero, pause_temp, branch_temp, resample_temp, ada_temp),
        "top_p": (top_p, top_p, top_p, resample_top_p, ada_top_p),
        "top_k": (top_k, top_k, branch_top_k, top_k, ada_top_k),
        "min_p": (min_p, min_p, min_p, min_p, ada_min_p),
    }


def select_by_strategy(strategy: mx.array, per_strategy: tuple[mx.array, ...]) -> mx.array:
    """Per row, the value of the row's strategy ([B] from five [B] arrays)."""
    # A chain of mx.where stays elementwise, so compilation fuses it into one kernel.
    chosen = per_strategy[-1]
    for index in reversed(range(len(per_strategy) - 1)):
        chosen = mx.where(strategy == index, per_strategy[index], chosen)
    return chosen.astype(mx.float32)


def make_entropix_sampler(
    config: Optional[SamplerConfig] = None,
    pause_token_id: Optional[int] = None,
    *,
    compile: Optional[bool] = None,
):
    """Build `step(logits, scores, prev_token, key) -> (token, strategy, info)`.

    logits [B, V], scores [B, H, L] (-inf where a row has no token), prev_token [B] or
    None, key from mx.random.key, or [B, 2] keys, one per row (see draw.categorical).
    Returns token [B] int32, strategy [B] int32 (index into STRATEGIES) and info: the
    six metrics and the temperature, top_p, top_k, min_p used, each [B] float32.
    pause_token_id defaults to config.pause_token_id (see resolve_pause_token).

    compile=True runs the [B, V] part under mx.compile; the default does so only on
    a GPU. On the CPU backend compiling buys ~10% per step but costs ~25 s on first
    use (C++ built for each of ~30 kernels, cached under $TMPDIR/mlx, again for each
    new config). The attention metrics, whose length L grows every token, are
    never compiled.
    """
    cfg = config if config is not None else SamplerConfig()
    pause_id = cfg.pause_token_id if pause_token_id is None else pause_token_id
    if isinstance(pause_id, bool) or not isinstance(pause_id, numbers.Integral) or pause_id < 0:
        raise ConfigError(
            f"pause_token_id must be a token id >= 0, got {pause_id!r}; "
            "resolve it with resolve_pause_token(config, tokenizer)"
        )
    pause_id = int(pause_id)

    def decide(logits, attn, far, prev_token, key):
        logits = logits.astype(mx.float32)
        vocab = logits.shape[-1]
        if pause_id >= vocab:
            raise ConfigError(f"pause_token_id {pause_id} is outside the vocabulary ({vocab})")
        entropy, varentropy = logits_entropy_varentropy(logits)
        metrics = {"logits_entropy": entropy, "logits_varentropy": varentropy, **attn}
        strategy = choose_strategy(metrics, cfg, far)
        per_strategy = strategy_parameters(metrics, cfg)
        used = {name: select_by_strategy(strategy, per_strategy[name]) for name in PARAMETERS}
        emit_pause = (strategy == PAUSE) & (prev_token != pause_id)
        used["temperature"] = mx.where(emit_pause, 0.0, used["temperature"])

        # One candidate set and one draw serve every strategy: only the parameters
        # differ per row, and adaptive keeps the best of n draws.
        candidate_logits, candidate_ids = top_candidates(logits)
        draws = mx.where(strategy == ADAPTIVE, cfg.n_adaptive_samples, 1)
        rank = sample_rank(
            logits,
            candidate_logits,
            *(used[name] for name in PARAMETERS),
            key,
            num_draws=draws,
            max_draws=cfg.n_adaptive_samples,
        )
        token = mx.where(emit_pause, pause_id, take_rank(candidate_ids, rank))
        return token.astype(mx.int32), strategy, {**metrics, **used}

    if compile is None:
        compile = mx.default_device() == mx.gpu
    if compile:
        decide = mx.compile(decide)

    def step(logits, scores, prev_token, key):
        if prev_token is None:
            prev_token = mx.full((logits.shape[0],), -1, dtype=mx.int32)
        # Like the attention metrics, the loop guard's input has a growing length: not compiled.
        if cfg.loop_attn >= 1:
            far = mx.zeros((logits.shape[0],), dtype=mx.float32)  # unread: the guard is off
        else:
            far = far_attention(scores, cfg.loop_window)
        return decide(logits, attention_metrics(scores), far, prev_token, key)

    step.reads_scores = True
    return step


def resolve_pause_token(config: SamplerConfig, tokenizer) -> int:
    """The pause token id: config.pause_token_id if set, else config.pause_token encoded
    by tokenizer.encode(text, add_special_tokens=False), which must give one token."""
    if config.pause_token_id is not None:
        return config.pause_token_id
    ids = list(tokenizer.encode(config.pause_token, add_special_tokens=False))
    if len(ids) != 1:
        raise ConfigError(
            f"pause_token {config.pause_token!r} encodes to {len(ids)} tokens {ids}, "
            "not one; choose text that is a single token or set pause_token_id"
        )
    return int(ids[0])
