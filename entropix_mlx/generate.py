"""The Python API: `stream_generate` / `generate` for one prompt, `stream_batch_generate` /
`batch_generate` for many as rows of one batch. Each picks its token source from the engine:
the single-row loop (`engine.decode.generate_step`), the batch (`engine.batch`) or, for an
Entropix config with `branch_k > 0`, look-ahead rows (`engine.lookahead`)."""

import time
from dataclasses import dataclass
from typing import Any, Dict, Generator, List, Optional, Sequence, Tuple, Union

import mlx.core as mx

from .engine.batch import MAX_BATCH_SIZE, BatchGenerator
from .engine.decode import SamplerStep, TokenStep, generate_step
from .engine.lookahead import LookAheadGenerator, LookAheadRules
from .engine.prompt import Prompt, context_length, fit_prompt, is_chat, literal_prompt_ids
from .engine.seeds import check_seed, row_seeds
from .engine.text import RowText, row_end
from .errors import GenerationError
from .sampling import SamplerConfig, make_sampler


@dataclass
class GenerationResponse:
    """What `stream_generate` yields for each token."""

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


@dataclass
class RowResponse(GenerationResponse):
    """What `stream_batch_generate` yields: a `GenerationResponse` for one row. Its
    `generation_tps` is the whole batch's generated tokens per second."""

    index: int = 0  # the row's position in `prompts`


def stream_generate(
    model,
    tokenizer,
    prompt: Prompt,
    *,
    sampler: Union[str, SamplerStep] = "entropix",
    config: Optional[SamplerConfig] = None,
    max_tokens: int = 256,
    seed: Optional[int] = None,
    stop: Sequence[str] = (),
    max_kv_size: Optional[int] = None,
    prompt_cache: Optional[List[Any]] = None,
) -> Generator[GenerationResponse, None, None]:
    """Stream a completion of `prompt` as responses.

    `prompt`: raw text (encoded as is), a list of chat messages (`{"role", "content"}`, run
    through the model's chat template) or token ids. The text of raw text or ids continues
    them exactly (its first token keeps its leading space); a chat answer is a text of its own.

    `sampler`: "entropix" (default), "standard", "greedy", or a sampler step. Generation
    stops at any EOS id of the tokenizer, at a `stop` string (the text ends before it) or after
    `max_tokens` tokens. `prompt_cache` (the model's `make_cache()`, possibly holding earlier
    tokens) continues from and keeps the KV state. An Entropix `config` with `branch_k > 0`
    decodes with look-ahead, as one row of `stream_batch_generate`.
    """
    if look_ahead_rules(sampler, config, stop) is not None:
        if max_kv_size is not None or prompt_cache is not None:
            raise GenerationError(
                "look-ahead (branch_k > 0) takes no max_kv_size or prompt_cache", "config"
            )
        yield from stream_batch_generate(
            model,
            tokenizer,
            [prompt],
            sampler=sampler,
            config=config,
            max_tokens=max_tokens,
            seed=seed,
            stop=stop,
        )
        return
    prompt_ids = literal_prompt_ids(tokenizer, prompt)
    cached = prompt_cache[0].offset if prompt_cache else 0
    context = context_length(model) if max_kv_size is None else None
    max_tokens = fit_prompt(prompt_ids, context, max_tokens, cached)
    check_seed(seed)
    step = make_sampler(sampler, config, tokenizer) if isinstance(sampler, str) else sampler
    text = RowText(tokenizer, stop, () if is_chat(prompt) else prompt_ids)
    eos_ids = set(tokenizer.eos_token_ids)
    steps = generate_step(
        mx.array(prompt_ids),
        model,
        step,
        max_tokens=max_tokens,
        seed=seed,
        max_kv_size=max_kv_size,
        prompt_cache=prompt_cache,
    )
    clock = Clock(len(prompt_ids))
    for n, token_step in enumerate(steps, start=1):
        clock.tick(1)
        new, _ = text.add(token_step.token, row_end(token_step.token, eos_ids, n, max_tokens))
        yield response(GenerationResponse, token_step, new, text, len(prompt_ids), clock)
        if text.end:
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


def stream_batch_generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    sampler: Union[str, SamplerStep] = "entropix",
    config: Optional[SamplerConfig] = None,
    max_tokens: int = 256,
    seed: Optional[int] = None,
    stop: Sequence[str] = (),
    prefill_step_size: Optional[int] = None,
) -> Generator[RowResponse, None, None]:
    """Complete all `prompts` as rows of one batch, yielding each row's responses as they come.

    Prompts are as for `stream_generate`. Row i is seeded with `seed + i` (`seed` None: a fresh
    seed); with the same seed a row gives the tokens a single run with seed `seed + i` gives.
    Identical prompts are prefilled once. A row stops at an EOS id or a `stop` string
    (finish_reason "stop"; the text ends before the stop string) or after `max_tokens` tokens
    ("length").
    """
    checked = check_prompts(tokenizer, model, prompts, max_tokens)
    seeds = row_seeds(seed, len(prompts))
    step = make_sampler(sampler, config, tokenizer) if isinstance(sampler, str) else sampler
    rules = look_ahead_rules(sampler, config, stop)
    if rules is not None:
        batch = LookAheadGenerator(model, tokenizer, prefill_step_size=prefill_step_size)
        options = {"look_ahead": rules}
    else:
        batch = BatchGenerator(model, prefill_step_size=prefill_step_size)
        options = {}
    eos_ids = tokenizer.eos_token_ids
    index: Dict[int, int] = {}
    groups = group_identical(checked)
    for ids, rows in groups:
        row_options = dict(max_tokens=checked[rows[0]][1], eos_ids=eos_ids, **options)
        if len(rows) > 1:
            uids = batch.insert_choices(ids, [seeds[i] for i in rows], step, **row_options)
        else:
            uids = [batch.insert(ids, step, seed=seeds[rows[0]], **row_options)]
        index.update(zip(uids, rows))
    texts = {
        uid: RowText(tokenizer, stop, () if is_chat(prompts[i]) else checked[i][0])
        for uid, i in index.items()
    }
    clock = Clock(sum(len(ids) for ids, _ in groups))  # prefilled once per distinct prompt
    while len(batch):
        row_steps = batch.next()
        clock.tick(len(row_steps))
        for row in row_steps:
            text = texts.get(row.uid)
            if text is None:  # a later token of a row already stopped
                continue
            new, end = text.add(row.step.token, row.end)
            if end:
                del texts[row.uid]
            if end and not row.end:  # a stop string: the engine's row still runs
                batch.remove([row.uid])
            i = index[row.uid]
            yield response(
                RowResponse, row.step, new, text, len(checked[i][0]), clock, row.fork, index=i
            )


def batch_generate(model, tokenizer, prompts: Sequence[Prompt], **kwargs) -> List[str]:
    """The completions of `prompts`, in prompt order; `kwargs` as for `stream_batch_generate`
    (sampler="entropix", config=None, max_tokens=256, seed=None, stop=())."""
    texts = [""] * len(prompts)
    for response in stream_batch_generate(model, tokenizer, prompts, **kwargs):
        texts[response.index] += response.text
    return texts


def look_ahead_rules(sampler, config: Optional[SamplerConfig], stop) -> Optional[LookAheadRules]:
    """How rows fork: by an Entropix config's `branch_k`; None for no look-ahead."""
    if sampler != "entropix" or config is None:
        return None
    return LookAheadRules.from_config(config, stop)


def check_prompts(
    tokenizer, model, prompts: Sequence[Prompt], max_tokens: int
) -> List[Tuple[List[int], int]]:
    """(token ids, max_tokens that fit) per prompt; one-line errors name the prompt."""
    if not len(prompts):
        raise GenerationError("no prompts given; pass at least one", "prompt")
    if len(prompts) > MAX_BATCH_SIZE:
        raise GenerationError(
            f"{len(prompts)} prompts are more than one batch holds ({MAX_BATCH_SIZE}); "
            "split them into smaller batches",
            "prompt",
        )
    context = context_length(model)
    checked = []
    for i, prompt in enumerate(prompts):
        ids = literal_prompt_ids(tokenizer, prompt)
        try:
            checked.append((ids, fit_prompt(ids, context, max_tokens)))
        except GenerationError as e:
            raise type(e)(f"prompt {i}: {e}", e.param) from None
    return checked


def group_identical(checked) -> List[Tuple[List[int], List[int]]]:
    """(token ids, the indices of the prompts with exactly those ids), in first-seen order."""
    groups: Dict[tuple, List[int]] = {}
    for i, (ids, _) in enumerate(checked):
        groups.setdefault(tuple(ids), []).append(i)
    return [(list(ids), rows) for ids, rows in groups.items()]


class Clock:
    """Prompt and generation speed: the prompt's time runs to the first token."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens, self.generated = prompt_tokens, 0
        self.tic, self.prompt_tps = time.perf_counter(), 0.0

    def tick(self, tokens: int):
        if not self.prompt_tps:
            self.prompt_tps = self.prompt_tokens / (time.perf_counter() - self.tic)
            self.tic = time.perf_counter()
        self.generated += tokens

    @property
    def generation_tps(self) -> float:
        return self.generated / max(time.perf_counter() - self.tic, 1e-9)


def response(
    cls,
    step: TokenStep,
    text: str,
    row: RowText,
    prompt_tokens: int,
    clock: Clock,
    fork: Optional[dict] = None,
    **extra,
):
    """A `cls` response for one token of a row."""
    return cls(
        text=text,
        token=step.token,
        logprob=step.logprob,
        strategy=step.strategy,
        metrics=step.metrics,
        params=step.params,
        prompt_tokens=prompt_tokens,
        prompt_tps=clock.prompt_tps,
        generation_tokens=clock.generated,
        generation_tps=clock.generation_tps,
        peak_memory=mx.get_peak_memory() / 1e9,
        finish_reason=row.finish_reason,
        fork=fork,
        **extra,
    )
