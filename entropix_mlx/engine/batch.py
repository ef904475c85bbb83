"""Batched generation: many rows in one forward pass per step.

Each row has its own prompt, KV state, sampler, PRNG key, EOS ids and max_tokens (stop strings
are cut from its text by the caller, with `engine.text`). Rows join between steps (their
prompts prefilled together, right-padded, then merged into the running batch) and leave when
done. The KV cache is mlx-lm's `BatchKVCache`: rows are left-padded, and the
final layer's scores are -inf over a row's padding, so its attention metrics see only its
own tokens.
"""

import dataclasses
import itertools
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

from ..distributed import rank0_decides
from ..errors import GenerationError
from ..sampling import make_greedy_sampler, reads_scores
from .decode import SamplerStep, TokenStep, forward_and_sample, prefill, read_token_steps
from .seeds import check_seed, fresh_seed
from .text import EOS, row_end

MAX_BATCH_SIZE = 64  # rows in one batch; the KV cache and every step grow with it

Outputs = Tuple[mx.array, mx.array, mx.array, Dict[str, mx.array]]  # token, logprob, strategy, info


@dataclass
class Row:
    uid: int
    sampler: SamplerStep
    with_scores: bool
    max_tokens: int
    eos_ids: frozenset
    top_logprobs: int = 0
    generated: int = 0


@dataclass
class RowStep:
    """One row's token from `BatchGenerator.next`."""

    uid: int
    step: TokenStep
    end: Optional[str]  # text.EOS at an end-of-sequence id, text.MAX_TOKENS at the row's last
    top_logprobs: List[Tuple[int, float]] = field(default_factory=list)  # the k likeliest, if asked
    fork: Optional[dict] = None  # the look-ahead fork decided before this token (lookahead.py)


def sample_rows(samplers: Sequence[SamplerStep], logits, scores, prev, keys):
    """Run each row's sampler on its rows (one call per distinct sampler) -> [B] outputs.

    A metric or parameter that a row's sampler does not report is NaN for that row."""
    groups: Dict[int, Tuple[SamplerStep, List[int]]] = {}
    for i, sampler in enumerate(samplers):
        groups.setdefault(id(sampler), (sampler, []))[1].append(i)
    if len(groups) == 1:
        return samplers[0](logits, scores, prev, keys)
    parts, order = [], []
    for sampler, rows in groups.values():
        idx = mx.array(rows)
        parts.append(
            sampler(logits[idx], None if scores is None else scores[idx], prev[idx], keys[idx])
        )
        order += rows
    token, strategy, info = concat_outputs(parts)
    inverse = mx.argsort(mx.array(order))
    return token[inverse], strategy[inverse], {k: v[inverse] for k, v in info.items()}


def concat_outputs(parts: Sequence[tuple]) -> tuple:
    """Concatenate per-row outputs (arrays, then one info dict last) along the rows."""
    *arrays, _ = zip(*parts)
    names = dict.fromkeys(k for part in parts for k in part[-1])
    info = {
        name: mx.concatenate([p[-1].get(name, mx.full(p[0].shape, mx.nan)) for p in parts])
        for name in names
    }
    return (*(mx.concatenate(a) for a in arrays), info)


class BatchGenerator:
    """Rows of different prompts decoded together, one forward pass per `next()`.

    `insert` queues a row; the next `next()` prefills every queued row in one padded batch and
    merges them into the running batch, whose forward pass then yields their first tokens. A
    row leaves after its EOS or `max_tokens` token, or when `remove`d. Like `generate_step`, the
    next forward pass is queued before the host reads the current tokens (so a row that stops at
    EOS or is removed for a stop string has cost one pass more than it used).
    """

    def __init__(
        self,
        model,
        *,
        prefill_step_size: Optional[int] = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        on_leave: Optional[Callable] = None,
    ):
        self.model = model
        self.prefill_step_size = prefill_step_size
        self.max_batch_size = max_batch_size
        self.on_leave = (
            on_leave  # (uid, the row's KV cache: prompt + generated tokens) as a row leaves
        )
        self.rows: List[Row] = []
        self.pending: List[Tuple[Row, List[int], Optional[List[Any]], mx.array]] = []
        self.cache: Optional[List[BatchKVCache]] = None
        self.keys: Optional[mx.array] = None  # [B, 2]: each row's PRNG key
        self.outputs: Optional[Outputs] = None  # the rows' next tokens, queued, not yet read
        self._uids = itertools.count()
        self._steps = 0

    def __len__(self) -> int:
        return len(self.rows) + len(self.pending)

    def insert(
        self,
        prompt_ids: Sequence[int],
        sampler: Optional[SamplerStep] = None,
        *,
        seed: Optional[int] = None,
        max_tokens: int = 256,
        eos_ids: Sequence[int] = (),
        prompt_cache: Optional[List[Any]] = None,
        top_logprobs: int = 0,
    ) -> int:
        """Queue a row continuing `prompt_ids` (after `prompt_cache`'s tokens, if given; that
        cache is copied, not changed); returns its uid. `top_logprobs` k > 0 reports the k
        likeliest tokens of every step."""
        if not len(prompt_ids):
            raise GenerationError("the prompt is empty; give some text to continue", "prompt")
        check_seed(seed)
        if len(self) >= self.max_batch_size:
            raise GenerationError(
                f"the batch is full ({self.max_batch_size} rows); wait for a row to finish"
            )
        sampler = sampler or make_greedy_sampler()
        row = Row(
            next(self._uids),
            sampler,
            reads_scores(sampler),
            max_tokens,
            frozenset(eos_ids),
            top_logprobs,
        )
        key = mx.random.key(seed if seed is not None else fresh_seed())
        self.pending.append((row, [int(t) for t in prompt_ids], prompt_cache, key))
        return row.uid

    def insert_choices(
        self,
        prompt_ids: Sequence[int],
        seeds: Sequence[Optional[int]],
        sampler=None,
        *,
        prompt_cache: Optional[List[Any]] = None,
        **row_options,
    ) -> List[int]:
        """Prefill `prompt_ids` once (into `prompt_cache` if given, which it extends) and continue
        it as one row per seed (a request's `n` choices); their uids. All rows or none: if one
        cannot be queued, those queued before it are removed."""
        cache = prompt_cache if prompt_cache is not None else self.model.make_cache()
        prefill(self.model, mx.array(prompt_ids[:-1])[None], cache, self.prefill_step_size)
        uids: List[int] = []
        try:
            for seed in seeds:
                uids.append(
                    self.insert(
                        prompt_ids[-1:], sampler, seed=seed, prompt_cache=cache, **row_options
                    )
                )
        except BaseException:
            self.remove(uids)
            raise
        return uids

    @property
    def uids(self) -> List[int]:
        """The uids of the rows running or queued."""
        return [row.uid for row in self.rows] + [row.uid for row, *_ in self.pending]

    def remove(self, uids: Sequence[int]):
        """Drop rows (queued or running); the others go on unchanged."""
        gone = set(uids)
        self.pending = [p for p in self.pending if p[0].uid not in gone]
        self._keep([i for i, row in enumerate(self.rows) if row.uid not in gone])

    def admit(self):
        """Prefill and merge the queued rows now, so that their first tokens can be read in
        `outputs` (and forced with `split_row`) before `next()` returns them."""
        if self.pending:
            self._admit()

    def split_row(self, uid: int, tokens: Sequence[int], logprobs: Sequence[float]) -> List[int]:
        """Replace running row `uid` by one copy per forced next token: copy i returns
        `tokens[i]` (with `logprobs[i]`) from the next `next()` and continues after it. The
        first copy keeps the row's uid and place, the others are appended with new uids; each
        copy's key is split from the row's. Returns the copies' uids."""
        i = next(j for j, row in enumerate(self.rows) if row.uid == uid)
        n, rows = len(tokens), len(self.rows)
        idx = mx.array(list(range(rows)) + [i] * (n - 1))
        for layer in self.cache:
            layer.filter(idx)
        copies = [dataclasses.replace(self.rows[i], uid=next(self._uids)) for _ in range(n - 1)]
        self.rows += copies
        keys = mx.random.split(self.keys[i], n)
        self.keys = mx.concatenate([self.keys, keys[1:]])
        self.keys[i] = keys[0]
        forced = mx.array([i, *range(rows, rows + n - 1)])
        token, logprob, strategy, info = self.outputs
        token, logprob, strategy = token[idx], logprob[idx], strategy[idx]
        token[forced] = mx.array(tokens, dtype=token.dtype)
        logprob[forced] = mx.array(logprobs, dtype=logprob.dtype)
        self.outputs = (token, logprob, strategy, {k: v[idx] for k, v in info.items()})
        return [uid] + [row.uid for row in copies]

    def next(self) -> List[RowStep]:
        """One token for every running row; [] when none is left. Queued rows join this step's
        forward pass (their first token comes from the next call), except in an empty batch,
        where they are prefilled and return their first token at once."""
        if self.pending and not self.rows:
            self._admit()
        if not self.rows:
            return []
        rows, current = self.rows, self.outputs
        # A row at its last token leaves before the next forward pass is queued: it needs none.
        self._keep([i for i, row in enumerate(rows) if row.generated + 1 < row.max_tokens])
        tokens = [self.outputs[0]] if self.rows else []
        if self.pending:
            tokens.append(self._join())
        if self.rows:
            self.outputs, self.keys = self._decode(
                self.cache, self.rows, self.keys, mx.concatenate(tokens)
            )
        results = []
        steps = read_token_steps(*current)
        for row, step, top in zip(rows, steps, top_logprobs(current[3], rows)):
            row.generated += 1
            end = row_end(step.token, row.eos_ids, row.generated, row.max_tokens)
            results.append(RowStep(row.uid, step, end, top))
        # The rows themselves, not what a subclass's remove() means by a uid (look-ahead's lanes).
        BatchGenerator.remove(self, [r.uid for r in results if r.end == EOS])
        self._steps += 1
        if self._steps % 256 == 0:
            mx.clear_cache()
        return results

    def _decode(self, cache, rows: List[Row], keys: mx.array, tokens: mx.array):
        """Queue one forward pass and sampler step for `rows` -> (outputs, their next keys)."""
        split = mx.vmap(mx.random.split)(keys)
        sampler = rank0_decides(partial(sample_rows, [row.sampler for row in rows]))
        with_scores = any(row.with_scores for row in rows)
        top = max(row.top_logprobs for row in rows)
        outputs = forward_and_sample(
            self.model, cache, sampler, tokens[:, None], tokens, split[:, 1], with_scores, top
        )
        mx.async_eval(outputs, split)
        return outputs, split[:, 0]

    def _admit(self):
        """The queued rows' first tokens, queued now in a forward pass of their own."""
        rows, cache, keys, last = self._take_pending()
        outputs, keys = self._decode(cache, rows, keys, last)
        running = self.outputs if self.rows else None
        self._append(rows, cache, keys)
        self.outputs = outputs if running is None else concat_outputs([running, outputs])

    def _join(self) -> mx.array:
        """Merge the queued rows into the running batch before its next forward pass, which
        yields their first tokens; the tokens they feed it (their prompts' last)."""
        rows, cache, keys, last = self._take_pending()
        self._append(rows, cache, keys)
        return last

    def _take_pending(self):
        """The queued rows with their prompts but the last token prefilled together -> (rows,
        their batch cache, their keys, their last prompt tokens)."""
        pending, self.pending = self.pending, []
        caches = [
            cache if cache is not None else self.model.make_cache() for _, _, cache, _ in pending
        ]
        # Each cache kind merges into its batch twin (a sliding-window layer's RotatingKVCache
        # into a BatchRotatingKVCache).
        cache = [layer[0].merge(list(layer)) for layer in zip(*caches)]
        rest = [ids[:-1] for _, ids, _, _ in pending]
        if any(rest):
            self._prefill_padded(cache, rest)
        last = mx.array([ids[-1] for _, ids, _, _ in pending])
        keys = mx.stack([key for *_, key in pending])
        return [row for row, *_ in pending], cache, keys, last

    def _append(self, rows: List[Row], cache: List[BatchKVCache], keys: mx.array):
        if not self.rows:
            self.rows, self.cache, self.keys = rows, cache, keys
            return
        for mine, theirs in zip(self.cache, cache):
            mine.extend(theirs)
        self.rows = self.rows + rows  # a new list: next() still holds the step's rows
        self.keys = mx.concatenate([self.keys, keys])

    def _prefill_padded(self, cache: List[BatchKVCache], prompts: List[List[int]]):
        """Prefill prompts of different lengths together: right-padded while they run (the
        causal mask keeps the padding out of every real token's view), then rolled to the left."""
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        for layer in cache:
            layer.prepare(lengths=lengths, right_padding=[width - n for n in lengths])
        tokens = mx.array([p + [0] * (width - len(p)) for p in prompts])
        prefill(self.model, tokens, cache, self.prefill_step_size)
        for layer in cache:
            layer.finalize()

    def _keep(self, indices: List[int]):
        if len(indices) == len(self.rows):
            return
        if self.on_leave is not None:
            for i in sorted(set(range(len(self.rows))) - set(indices)):
                self.on_leave(self.rows[i].uid, [layer.extract(i) for layer in self.cache])
        self.rows = [self.rows[i] for i in indices]
        if not indices:
            self.cache = self.keys = self.outputs = None
            return
        idx = mx.array(indices)
        for layer in self.cache:
            layer.filter(idx)
        self.keys = self.keys[idx]
        token, logprob, strategy, info = self.outputs
        self.outputs = (
            token[idx],
            logprob[idx],
            strategy[idx],
            {k: v[idx] for k, v in info.items()},
        )


def top_logprobs(info: Dict[str, mx.array], rows: List[Row]) -> List[List[Tuple[int, float]]]:
    """Per row, its `top_logprobs` likeliest (token, log-probability) pairs of the step."""
    if "top_ids" not in info:
        return [[] for _ in rows]
    ids, values = info["top_ids"].tolist(), info["top_logprobs"].tolist()
    return [
        list(zip(i[: row.top_logprobs], v[: row.top_logprobs]))
        for i, v, row in zip(ids, values, rows)
    ]
