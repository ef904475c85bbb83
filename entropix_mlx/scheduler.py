"""The server's generation worker: continuous batching of requests over one `BatchGenerator`.

Requests join the running batch between decode steps and leave when done; each row keeps its
own sampler, seed, stop strings and max_tokens, and a request with `n` choices is one prompt
prefilled once and forked into `n` rows. A cancelled request's rows leave before the next step.
Finished rows' KV states go into a prompt cache, so a conversation's next turn prefills only its
new tokens. Under `mlx.launch` the other ranks replay rank 0's plan (admissions and drops) before
every step, so every rank runs the same batch; the prompt cache is then off.
"""

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Deque, Dict, List, Optional, Tuple, Union

import mlx.core as mx

from . import distributed
from .engine.batch import BatchGenerator, RowStep
from .engine.prompt_cache import PromptCache
from .engine.seeds import row_seeds
from .engine.text import RowText
from .sampling import SamplerConfig, make_sampler
from .trace import trace_record

log = logging.getLogger("entropix_mlx.server")

DEFAULT_MAX_CONCURRENCY = 8  # rows decoded together
DEFAULT_MAX_QUEUE = 32  # requests waiting for a row; beyond that the server answers 429
DEFAULT_PROMPT_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class GenerationRequest:
    """A request checked by the library's own rules (`engine.prompt.fit_prompt`,
    `engine.seeds.row_seeds`, `Scheduler.sampler`), ready for the worker. Choice i of `n` is
    seeded with `seed + i`."""

    prompt_ids: List[int]
    sampler: str
    config: SamplerConfig
    max_tokens: int
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()
    trace: bool = False
    n: int = 1
    top_logprobs: Optional[int] = None  # None: no log-probabilities; k: the token's and k likeliest


@dataclass
class TokenLogprob:
    token: int
    logprob: float  # under the untempered model distribution
    top: List[Tuple[int, float]]


@dataclass
class Delta:
    """New text of one choice (may be empty), with the trace records and log-probabilities of the
    tokens behind it."""

    text: str
    trace: List[dict]
    logprobs: List[TokenLogprob] = field(default_factory=list)
    index: int = 0


@dataclass
class Finish:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens taken from the prompt cache rather than prefilled
    index: int = 0


@dataclass
class Failure:
    status: int
    message: str


Event = Union[Delta, Finish, Failure]


class Busy(Exception):
    """Too many requests are waiting; the message is one line."""


class Job:
    """One request: the worker feeds its events to the event loop that waits for them."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def deliver(self, event: Event):
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def stream(self) -> AsyncIterator[Event]:
        """The events until every choice has finished, or a Failure."""
        open_choices = self.request.n
        while open_choices:
            event = await self.events.get()
            yield event
            if isinstance(event, Failure):
                return
            open_choices -= isinstance(event, Finish)


class Scheduler:
    """The batch of running rows: what every rank does, in step (admit, drop, decode)."""

    def __init__(self, model, tokenizer, max_concurrency: int, prompt_cache_bytes: int = 0):
        self.model, self.tokenizer, self.max_concurrency = model, tokenizer, max_concurrency
        self.prompt_cache = (
            PromptCache(model, prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        )
        self.samplers: Dict[tuple, object] = {}
        self.samplers_lock = threading.Lock()  # the request handlers build samplers too
        self.left: Dict[int, list] = {}  # uid -> KV cache of a row that left, until its tokens come
        self.ended: Dict[
            int, List[int]
        ] = {}  # uid -> tokens of a finished row, until its cache comes
        self.reset()

    def reset(self):
        """A fresh, empty batch (after a failed step)."""
        self.batch = BatchGenerator(
            self.model, max_batch_size=self.max_concurrency, on_leave=self._row_left
        )
        self.left.clear()
        self.ended.clear()

    def admit(self, request: GenerationRequest) -> Tuple[List[int], int]:
        """Queue the request's rows -> (their uids, prompt tokens found in the prompt cache)."""
        ids = request.prompt_ids
        cache, rest = self.prompt_cache.fetch(ids) if self.prompt_cache else (None, list(ids))
        seeds = row_seeds(request.seed, request.n)
        options = dict(
            max_tokens=request.max_tokens,
            eos_ids=self.tokenizer.eos_token_ids,
            top_logprobs=request.top_logprobs or 0,
        )
        step = self.sampler(request.sampler, request.config)
        if request.n == 1:
            uids = [self.batch.insert(rest, step, seed=seeds[0], prompt_cache=cache, **options)]
        else:
            uids = self.batch.insert_choices(rest, seeds, step, prompt_cache=cache, **options)
        return uids, len(ids) - len(rest)

    def sampler(self, name: str, config: SamplerConfig):
        """One step per (sampler, settings): rows that share it are sampled in one call. Raises
        the library's error for an unknown sampler or a pause token outside the vocabulary."""
        key = (name, config)
        with self.samplers_lock:
            if key not in self.samplers:
                if len(self.samplers) >= 64:
                    self.samplers.clear()
                vocab = self.model.args.vocab_size
                self.samplers[key] = make_sampler(name, config, self.tokenizer, vocab)
            return self.samplers[key]

    def finished(self, uid: int, tokens: List[int]):
        """A row's whole token sequence (prompt and generated): its cache goes into the prompt
        cache once the row has left the batch."""
        if self.prompt_cache is None:
            return
        self.ended[uid] = tokens
        self._remember(uid)

    def _row_left(self, uid: int, cache: list):
        if self.prompt_cache is not None:
            self.left[uid] = cache
            self._remember(uid)

    def _remember(self, uid: int):
        if uid in self.left and uid in self.ended:
            self.prompt_cache.store(self.ended.pop(uid), self.left.pop(uid))


@dataclass
class Choice:
    """The stream state of one row: which request and choice it answers."""

    job: Job
    index: int
    text: RowText
    tokens: List[int]  # the prompt, then every generated token
    cached_tokens: int
    generated: int = 0


class GenerationWorker:
    """The one thread that runs MLX: a loop of (admit waiting requests, drop cancelled rows, one
    decode step for every row, hand each row's token to its request)."""

    def __init__(
        self,
        model,
        tokenizer,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
    ):
        self.tokenizer = tokenizer
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        if distributed.world().size() > 1:
            prompt_cache_bytes = 0  # the other ranks could not keep theirs in step
        self.scheduler = Scheduler(model, tokenizer, max_concurrency, prompt_cache_bytes)
        self.inbox: "queue.Queue[Optional[Job]]" = queue.Queue()
        self.waiting: Deque[Job] = deque()
        self.choices: Dict[int, Choice] = {}
        self.to_drop: List[int] = []
        self.lock = threading.Lock()
        self.queued = 0  # submitted, not yet admitted
        self.running = True
        self.thread = threading.Thread(target=self._run, name="entropix-generation", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self, timeout: float = 10.0):
        """Finish the thread (cancelling what runs) and free its MLX streams."""
        for choice in list(self.choices.values()):
            choice.job.cancelled.set()
        self.inbox.put(None)
        self.thread.join(timeout)

    def submit(self, request: GenerationRequest) -> Job:
        with self.lock:
            if self.queued >= self.max_queue:
                raise Busy(
                    f"the server is busy ({self.queued} requests are waiting); retry shortly"
                )
            self.queued += 1
        job = Job(request, asyncio.get_running_loop())
        self.inbox.put(job)
        return job

    def _run(self):
        try:
            while self._collect(block=not self.choices):
                self._step()
        finally:
            distributed.share(None)  # releases follower ranks (a no-op in one process)
            # MLX needs each thread's streams destroyed before the interpreter exits.
            mx.clear_streams()

    def _collect(self, block: bool) -> bool:
        """Move submitted jobs to `waiting` (waiting for one when idle); False once stopped."""
        while True:
            try:
                job = self.inbox.get(block=block)
            except queue.Empty:
                return True
            if job is None:
                return False
            self.waiting.append(job)
            block = False

    def _step(self):
        admitted = self._take_admissible()
        drops = self._take_drops()
        distributed.share(([job.request for job in admitted], drops))
        self.scheduler.batch.remove(drops)
        for job in admitted:
            self._admit(job)
        if not len(self.scheduler.batch):
            return
        try:
            rows = self.scheduler.batch.next()
        except Exception as e:  # the server must outlive any one step
            log.exception("generation failed")
            self._fail_all(Failure(500, f"generation failed: {e}"))
            return
        for row in rows:
            self._deliver(row)

    def _take_admissible(self) -> List[Job]:
        """The waiting jobs, in arrival order, whose rows fit in the batch now."""
        admitted, free = [], self.max_concurrency - len(self.scheduler.batch)
        while self.waiting and (
            self.waiting[0].cancelled.is_set() or self.waiting[0].request.n <= free
        ):
            job = self.waiting.popleft()
            with self.lock:
                self.queued -= 1
            if not job.cancelled.is_set():
                admitted.append(job)
                free -= job.request.n
        return admitted

    def _take_drops(self) -> List[int]:
        """Rows to leave the batch: those past a stop string and those of cancelled requests."""
        drops, self.to_drop = self.to_drop, []
        cancelled = {id(c.job): c.job for c in self.choices.values() if c.job.cancelled.is_set()}
        for uid in [uid for uid, c in self.choices.items() if id(c.job) in cancelled]:
            drops.append(uid)
            del self.choices[uid]
        for job in cancelled.values():
            job.deliver(Failure(503, "the generation was cancelled"))
        return drops

    def _admit(self, job: Job):
        request = job.request
        try:
            uids, cached = self.scheduler.admit(request)
        except Exception as e:  # an input the checks let through fails this request only
            log.exception("admission failed")
            job.deliver(Failure(500, f"generation failed: {e}"))
            return
        for index, uid in enumerate(uids):
            self.choices[uid] = Choice(
                job, index, RowText(self.tokenizer, request.stop), list(request.prompt_ids), cached
            )

    def _deliver(self, row: RowStep):
        choice = self.choices.get(row.uid)
        if choice is None:  # dropped while its step was under way
            return
        request = choice.job.request
        choice.tokens.append(row.step.token)
        text, end = choice.text.add(row.step.token, row.end)
        finish = choice.text.finish_reason
        trace = [trace_record(choice.generated, row.step, text, finish)] if request.trace else []
        logprobs = []
        if request.top_logprobs is not None:
            logprobs = [TokenLogprob(row.step.token, row.step.logprob, row.top_logprobs)]
        choice.generated += 1
        choice.job.deliver(Delta(text, trace, logprobs, choice.index))
        if end is None:
            return
        if row.end is None:  # a stop string: the row is still in the batch
            self.to_drop.append(row.uid)
        del self.choices[row.uid]
        self.scheduler.finished(row.uid, choice.tokens)
        prompt_tokens = len(request.prompt_ids)
        choice.job.deliver(
            Finish(finish, prompt_tokens, choice.generated, choice.cached_tokens, choice.index)
        )

    def _fail_all(self, failure: Failure):
        for job in {id(c.job): c.job for c in self.choices.values()}.values():
            job.deliver(failure)
        self.choices.clear()
        self.to_drop.clear()
        self.scheduler.reset()


def follow(model, tokenizer, max_concurrency: int = DEFAULT_MAX_CONCURRENCY):
    """A follower rank under `mlx.launch`: replay rank 0's plan and step until it shares None."""
    scheduler = Scheduler(model, tokenizer, max_concurrency)
    while (plan := distributed.share(None)) is not None:
        requests, drops = plan
        scheduler.batch.remove(drops)
        for request in requests:
            with contextlib.suppress(Exception):  # the same input fails on rank 0, which reports it
                scheduler.admit(request)
        if len(scheduler.batch):
            try:
                scheduler.batch.next()
            except Exception:  # rank 0 failed the same step and starts afresh: so do we
                scheduler.reset()
