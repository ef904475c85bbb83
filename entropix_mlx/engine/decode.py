"""One forward pass and sampler step, the prompt's prefill, and the single-row token loop."""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generator, List, Optional

import mlx.core as mx

from ..distributed import rank0_decides
from ..sampling import METRICS, PARAMETERS, STRATEGIES, make_greedy_sampler, reads_scores
from ..sampling.draw import top_candidates
from ..sampling.metrics import logsumexp, take_token
from .seeds import fresh_seed

SamplerStep = Callable[[mx.array, mx.array, mx.array, mx.array], Any]


@dataclass
class TokenStep:
    """One generated token, read to the host."""

    token: int
    logprob: float
    strategy: Optional[str]  # one of STRATEGIES; None for the plain samplers
    metrics: Dict[str, float] = field(default_factory=dict)
    params: Dict[str, float] = field(default_factory=dict)


def forward_and_sample(
    model,
    cache,
    sampler: SamplerStep,
    inputs: mx.array,
    prev: mx.array,
    key,
    with_scores: bool,
    top_logprobs: int = 0,
):
    """Lazily, for each row of `inputs` [B, L]: the next token, its log-probability, strategy and
    sampler info. `key` is one key or one per row ([B, 2]). With `top_logprobs` k > 0 the info
    also holds the k most likely tokens, "top_ids" [B, k], and their "top_logprobs"."""
    out = model(inputs, cache, return_scores=with_scores, last_only=True)
    logits, scores = out if with_scores else (out, None)
    logits = logits[:, -1, :].astype(mx.float32)
    token, strategy, info = sampler(logits, scores, prev, key)
    log_total = logsumexp(logits)
    logprob = take_token(logits, token) - log_total[:, 0]
    if top_logprobs:
        values, ids = top_candidates(logits, top_logprobs)
        info = {**info, "top_ids": ids, "top_logprobs": values - log_total}
    return token, logprob, strategy, info


def prefill(
    model, tokens: mx.array, cache: List[Any], step_size: Optional[int] = None
) -> List[Any]:
    """Run `tokens` [B, L] through the model into `cache` in chunks of `step_size` (default:
    `default_prefill_step_size()`), keeping no logits; returns `cache` for chaining."""
    step_size = step_size or default_prefill_step_size()
    for start in range(0, tokens.shape[1], step_size):
        model(tokens[:, start : start + step_size], cache, last_only=True)
        mx.eval([c.state for c in cache])
    return cache


def default_prefill_step_size() -> int:
    """Prompt tokens per prefill chunk: 512 on a GPU, 128 on the CPU backend, where the smaller
    working set cut peak memory at a 512-token prompt to 0.93x mlx-lm's (benchmarks/README.md)."""
    return 512 if mx.default_device() == mx.gpu else 128


def generate_step(
    prompt: mx.array,
    model,
    sampler: Optional[SamplerStep] = None,
    *,
    max_tokens: int = 256,
    seed: Optional[int] = None,
    max_kv_size: Optional[int] = None,
    prompt_cache: Optional[List[Any]] = None,
    prefill_step_size: Optional[int] = None,
) -> Generator[TokenStep, None, None]:
    """Yield up to `max_tokens` tokens after `prompt` (1-D token ids), one row.

    The prompt is prefilled in chunks of `prefill_step_size` (default: `default_prefill_step_size()`);
    each next forward pass and sampler step is queued with `mx.async_eval` before the host reads
    the current token. The attention scores are computed only for a sampler that reads them.
    """
    sampler = sampler or make_greedy_sampler()
    with_scores = reads_scores(sampler)
    sampler = rank0_decides(sampler)
    cache = prompt_cache if prompt_cache is not None else model.make_cache(max_kv_size)
    key = mx.random.key(seed if seed is not None else fresh_seed())

    prefill(model, prompt[None, :-1], cache, prefill_step_size)

    def decode_one_token(tokens, prev):
        nonlocal key
        key, subkey = mx.random.split(key)
        outputs = forward_and_sample(model, cache, sampler, tokens, prev, subkey, with_scores)
        mx.async_eval(outputs)
        return outputs

    current = decode_one_token(prompt[None, -1:], prompt[-1:])
    for n in range(max_tokens):
        token = current[0]
        upcoming = decode_one_token(token[:, None], token) if n + 1 < max_tokens else None
        yield read_token_steps(*current)[0]
        current = upcoming
        if n % 256 == 255:
            mx.clear_cache()


def read_token_steps(token, logprob, strategy, info) -> List[TokenStep]:
    """One TokenStep per row of a sampler step's [B] outputs (reads them to the host).

    A metric or parameter that is NaN for a row was not computed for it (a plain sampler
    sharing a batch with Entropix rows) and is left out."""
    info = {k: v.tolist() for k, v in info.items() if k in METRICS or k in PARAMETERS}
    steps = []
    for i, (t, lp, s) in enumerate(zip(token.tolist(), logprob.tolist(), strategy.tolist())):
        values = {k: v[i] for k, v in info.items() if not math.isnan(v[i])}
        metrics = {k: values[k] for k in METRICS if k in values}
        params = {k: values[k] for k in PARAMETERS if k in values}
        steps.append(TokenStep(t, lp, STRATEGIES[s] if s >= 0 else None, metrics, params))
    return steps
