"""Generation in layers: tokens (`generate_step`), responses (`stream_generate`), text (`generate`)."""

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generator, List, Optional, Sequence, Tuple, Union

import mlx.core as mx

from .distributed import rank0_decides
from .errors import GenerationError
from .sampling import (
    METRICS,
    PARAMETERS,
    STRATEGIES,
    SamplerConfig,
    make_greedy_sampler,
    make_sampler,
)
from .sampling.draw import top_candidates
from .sampling.metrics import logsumexp, take_token

Prompt = Union[str, Sequence[Dict[str, str]], Sequence[int]]
SamplerStep = Callable[[mx.array, mx.array, mx.array, mx.array], Any]


@dataclass
class TokenStep:
    """One generated token as `generate_step` yields it."""

    token: int
    logprob: float
    strategy: Optional[str]  # one of STRATEGIES; None for the plain samplers
    metrics: Dict[str, float] = field(default_factory=dict)
    params: Dict[str, float] = field(default_factory=dict)


@dataclass
class GenerationResponse:
    """What `stream_generate` yields for each token (and once more, at the end)."""

    text: str  # the next segment of decoded text (may be empty)
    token: int
    logprob: float
    strategy: Optional[str]
    metrics: Dict[str, float]
    params: Dict[str, float]
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float  # GB
    finish_reason: Optional[str] = None  # "stop", "length" or None while generating
    fork: Optional[dict] = None  # the look-ahead fork resolved just before this token, if any


def step_outputs(
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
    working set cut peak memory at a 512-token prompt to 0.93x mlx-lm's (README, "Performance")."""
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
    with_scores: bool = True,
) -> Generator[TokenStep, None, None]:
    """Yield up to `max_tokens` tokens after `prompt` (1-D token ids).

    The prompt is prefilled in chunks of `prefill_step_size` (default: `default_prefill_step_size()`);
    each next forward pass and sampler step is queued with `mx.async_eval` before the host reads
    the current token.
    `with_scores=False` skips the attention scores (the plain samplers do not use them).
    """
    sampler = rank0_decides(sampler or make_greedy_sampler())
    cache = prompt_cache if prompt_cache is not None else model.make_cache(max_kv_size)
    key = mx.random.key(seed if seed is not None else time.time_ns() % (1 << 31))

    prefill(model, prompt[None, :-1], cache, prefill_step_size)

    def step(tokens, prev):
        nonlocal key
        key, subkey = mx.random.split(key)
        outputs = step_outputs(model, cache, sampler, tokens, prev, subkey, with_scores)
        mx.async_eval(outputs)
        return outputs

    current = step(prompt[None, -1:], prompt[-1:])
    for n in range(max_tokens):
        token = current[0]
        upcoming = step(token[:, None], token) if n + 1 < max_tokens else None
        yield to_token_steps(*current)[0]
        current = upcoming
        if n % 256 == 255:
            mx.clear_cache()


def to_token_steps(token, logprob, strategy, info) -> List[TokenStep]:
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


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> Tuple[str, bool]:
        """The text that is safe to emit now, and whether a stop string was reached."""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending = self.pending[: min(found)], ""
            return out, True
        keep = self._partial_stop_length()
        out, self.pending = (
            self.pending[: len(self.pending) - keep],
            self.pending[len(self.pending) - keep :],
        )
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _partial_stop_length(self) -> int:
        longest = max((len(s) for s in self.stops), default=1)
        for k in range(min(len(self.pending), longest - 1), 0, -1):
            if any(s.startswith(self.pending[-k:]) for s in self.stops):
                return k
        return 0


def chat_prompt_ids(
    tokenizer,
    prompt: Union[str, Sequence[Dict[str, str]]],
    system: Optional[str] = None,
    chat_template: bool = True,
) -> List[int]:
    """Token ids of a prompt for a chat model: plain text becomes a user message, and messages go
    through the chat template (plain text is encoded as written with `chat_template=False` or
    when the tokenizer has no template)."""
    if isinstance(prompt, str):
        if not chat_template or tokenizer.chat_template is None:
            return tokenizer.encode(prompt)
        prompt = [{"role": "user", "content": prompt}]
    messages = ([{"role": "system", "content": system}] if system else []) + list(prompt)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def check_prompt(
    prompt_ids: Sequence[int], context_length: Optional[int], max_tokens: int, cached: int = 0
) -> int:
    """Validate a prompt (after `cached` tokens already in the KV cache) against the context
    window; the `max_tokens` that still fits."""
    if len(prompt_ids) == 0:
        raise GenerationError("the prompt is empty; give some text to continue")
    if max_tokens < 1:
        raise GenerationError(f"max_tokens must be >= 1, not {max_tokens}")
    length = cached + len(prompt_ids)
    if context_length and length >= context_length:
        raise GenerationError(
            f"the prompt has {length} tokens but the model's context window is "
            f"{context_length}; shorten the prompt"
        )
    return min(max_tokens, context_length - length) if context_length else max_tokens


def check_seed(seed: Optional[int]):
    """A seed is None or in [0, 2**64), the range of MLX's random keys."""
    bad_type = isinstance(seed, bool) or not isinstance(seed, int)
    if seed is not None and (bad_type or not 0 <= seed < 2**64):
        raise GenerationError(f"seed must be a whole number in [0, 2**64), not {seed!r}")


def literal_prompt_ids(tokenizer, prompt: Prompt) -> List[int]:
    """Token ids of a prompt taken literally: plain text is encoded as written (no chat
    template), a message list goes through the template, ids pass through."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if len(prompt) and isinstance(prompt[0], dict):
        return chat_prompt_ids(tokenizer, prompt)
    return [int(t) for t in prompt]


def stream_generate(
    model,
    tokenizer,
    prompt: Prompt,
    *,
    sampler: Union[str, SamplerStep] = "entropix",
    config: Optional[SamplerConfig] = None,
    max_tokens: int = 256,
    seed: Optional[int] = None,
    max_kv_size: Optional[int] = None,
    prompt_cache: Optional[List[Any]] = None,
) -> Generator[GenerationResponse, None, None]:
    """Stream a completion of `prompt` as responses.

    `prompt`: raw text (encoded as is), a list of chat messages (`{"role", "content"}`, run
    through the model's chat template) or token ids.

    `sampler`: "entropix" (default), "standard", "greedy", or a sampler step. Generation
    stops at any EOS id of the tokenizer or after `max_tokens` tokens. An Entropix `config`
    with `branch_k > 0` decodes with look-ahead branching (`entropix_mlx.branching`), as one
    row of `stream_batch_generate`.
    """
    if sampler == "entropix" and config is not None and config.branch_k:
        if max_kv_size is not None or prompt_cache is not None:
            raise GenerationError(
                "look-ahead branching (branch_k > 0) takes no max_kv_size or prompt_cache"
            )
        from .batch import stream_batch_generate  # it builds on this module

        yield from stream_batch_generate(
            model,
            tokenizer,
            [prompt],
            sampler=sampler,
            config=config,
            max_tokens=max_tokens,
            seed=seed,
        )
        return
    prompt_ids = literal_prompt_ids(tokenizer, prompt)
    context_length = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    cached = prompt_cache[0].offset if prompt_cache else 0
    max_tokens = check_prompt(
        prompt_ids, context_length if max_kv_size is None else None, max_tokens, cached
    )
    check_seed(seed)
    with_scores = sampler == "entropix" or callable(sampler)
    if isinstance(sampler, str):
        sampler = make_sampler(sampler, config, tokenizer)

    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    eos_ids = set(tokenizer.eos_token_ids)
    tic = time.perf_counter()
    prompt_tps, n = 0.0, 0
    steps = generate_step(
        mx.array(prompt_ids),
        model,
        sampler,
        max_tokens=max_tokens,
        seed=seed,
        max_kv_size=max_kv_size,
        prompt_cache=prompt_cache,
        with_scores=with_scores,
    )
    for n, step in enumerate(steps, start=1):
        if n == 1:
            prompt_tps = len(prompt_ids) / (time.perf_counter() - tic)
            tic = time.perf_counter()
        finish = "stop" if step.token in eos_ids else ("length" if n == max_tokens else None)
        if finish != "stop":
            detokenizer.add_token(step.token)
        if finish:
            detokenizer.finalize()
        yield GenerationResponse(
            text=detokenizer.last_segment,
            token=step.token,
            logprob=step.logprob,
            strategy=step.strategy,
            metrics=step.metrics,
            params=step.params,
            prompt_tokens=len(prompt_ids),
            prompt_tps=prompt_tps,
            generation_tokens=n,
            generation_tps=n / max(time.perf_counter() - tic, 1e-9),
            peak_memory=mx.get_peak_memory() / 1e9,
            finish_reason=finish,
        )
        if finish:
            break


def generate(model, tokenizer, prompt: Prompt, verbose: bool = False, **kwargs) -> str:
    """The whole completion as text; `kwargs` as for `stream_generate`."""
    text = ""
    response = None
    for response in stream_generate(model, tokenizer, prompt, **kwargs):
        text += response.text
        if verbose:
            print(response.text, end="", flush=True)
    if verbose and response is not None:
        print(f"\nPrompt: {response.prompt_tokens} tokens, {response.prompt_tps:.1f} tokens/s")
        print(
            f"Generation: {response.generation_tokens} tokens, {response.generation_tps:.1f} tokens/s"
        )
    return text
