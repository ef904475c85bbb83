"""The server's generation worker: continuous batching of requests over one `BatchGenerator`.

Requests join the running batch between decode steps and leave when done; each row keeps its
own sampler, seed, stop strings and max_tokens, and a request with `n` choices is one prompt
prefilled once and forked into `n` rows. A prompt longer than one prefill chunk runs a chunk per
step before it joins, so the running rows go on meanwhile and a cancelled request stops between
chunks. A cancelled request's rows leave before the next step. Finished rows' KV states go into
a prompt cache, so a conversation's next turn prefills only its new tokens. Under `mlx.launch`
the other ranks carry out rank 0's plan (admissions, drops) before every step, so every rank
runs the same batch; the prompt cache is then off.
"""

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Deque, Dict, List, Optional, Tuple, Union

import mlx.core as mx

from . import distributed
from .engine.batch import BatchGenerator, RowStep
from .engine.decode import default_prefill_step_size, prefill
from .engine.prompt_cache import PromptCache
from .engine.seeds import row_seeds
from .engine.text import RowText
from .errors import GenerationError
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
    continues_prompt: bool = (
        False  # the text continues the prompt's (a completion), else a new text
    )


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
CANCELLED = Failure(503, "the generation was cancelled")


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

    async def stream(self, heartbeat: Optional[float] = None) -> AsyncIterator[Optional[Event]]:
        """The events until every choice has finished, or a Failure; with `heartbeat`, None
        whenever that many seconds pass without one."""
        open_choices = self.request.n
        while open_choices:
            try:
                event = await asyncio.wait_for(self.events.get(), heartbeat)
            except TimeoutError:
                yield None
                continue
            yield event
            if isinstance(event, Failure):
                return
            open_choices -= isinstance(event, Finish)


@dataclass
class Joining:
    """An admitted request whose rows are not in the batch yet. Its prompt runs a chunk per step
    outside the batch, so that a long prompt neither holds the running rows back for long nor
    runs on after its client has gone; it joins the batch once what is left fits one chunk."""

    key: int
    request: GenerationRequest
    seeds: List[int]
    sampler: object
    cache: list  # the KV cache of the prompt tokens run so far
    rest: List[int]  # the prompt tokens still to run
    cached_tokens: int  # prompt tokens the prompt cache held
    uids: List[int] = field(default_factory=list)  # its rows, once in the batch


@dataclass(frozen=True)
class Plan:
    """Rank 0's decisions for one step, which every rank carries out (`Scheduler.prepare`)."""

    admit: List[GenerationRequest]
    drop_rows: List[int]
    drop_joining: List[int]  # keys of joining requests
    reset: bool = False  # start from an empty batch (after a failed step)


class Scheduler:
    """The batch of running rows and the requests joining it: what every rank does, in step."""

    def __init__(
        self,
        model,
        tokenizer,
        max_concurrency: int,
        prompt_cache_bytes: int = 0,
        prefill_step_size: Optional[int] = None,
    ):
        self.model, self.tokenizer, self.max_concurrency = model, tokenizer, max_concurrency
        self.chunk = prefill_step_size or default_prefill_step_size()
        self.prompt_cache = (
            PromptCache(model, prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        )
        self.samplers: Dict[tuple, object] = {}
        self.samplers_lock = threading.Lock()  # the request handlers build samplers too
        self.left: Dict[int, list] = {}  # uid -> KV cache of a row that left, until its tokens come
        # uid -> a finished row's tokens, until its cache comes
        self.ended: Dict[int, List[int]] = {}
        self.keys = itertools.count()  # joining keys: the same sequence on every rank
        self.reset()

    def reset(self):
        """A fresh, empty batch and no joining request (after a failed step)."""
        self.batch = BatchGenerator(
            self.model,
            prefill_step_size=self.chunk,
            max_batch_size=self.max_concurrency,
            on_leave=self._row_left,
        )
        self.joining: Dict[int, Joining] = {}
        self.left.clear()
        self.ended.clear()

    @property
    def rows(self) -> int:
        """Rows running, queued, or held for joining requests."""
        return len(self.batch) + sum(j.request.n for j in self.joining.values())

    def prepare(self, plan: Plan) -> Tuple[list, List[Tuple[Joining, Optional[Exception]]]]:
        """Carry out a step's plan before its decode step: drop rows and joining requests, admit
        the new requests, run one prompt chunk and let in the requests ready to join -> (per
        admitted request its Joining or the error that refused it; the joining requests that
        joined the batch, or failed to, with the error)."""
        if plan.reset:
            self.reset()
        self.batch.remove(plan.drop_rows)
        for uid in plan.drop_rows:  # a cancelled row's cache: no tokens will come for it
            if uid not in self.ended:
                self.left.pop(uid, None)
        for key in plan.drop_joining:
            self.joining.pop(key, None)
        admitted = []
        for request in plan.admit:
            try:
                admitted.append(self._admit(request))
            except Exception as e:  # an input the checks let through fails this request only
                admitted.append(e)
        return admitted, self._advance()

    def _admit(self, request: GenerationRequest) -> Joining:
        seeds = row_seeds(request.seed, request.n)  # checked before anything is queued
        sampler = self.sampler(request.sampler, request.config)
        ids = request.prompt_ids
        if self.prompt_cache:
            cache, rest = self.prompt_cache.fetch(ids)
        else:
            cache, rest = self.model.make_cache(), list(ids)
        joining = Joining(
            next(self.keys), request, seeds, sampler, cache, rest, len(ids) - len(rest)
        )
        self.joining[joining.key] = joining
        return joining

    def _advance(self) -> List[Tuple[Joining, Optional[Exception]]]:
        """One prompt chunk of the first joining request that has more than one chunk left; then
        every joining request whose rest fits one chunk joins the batch."""
        done: List[Tuple[Joining, Optional[Exception]]] = []
        long = next((j for j in self.joining.values() if len(j.rest) > self.chunk + 1), None)
        if long is not None:
            try:
                prefill(self.model, mx.array(long.rest[: self.chunk])[None], long.cache, self.chunk)
                long.rest = long.rest[self.chunk :]
            except Exception as e:
                del self.joining[long.key]
                done.append((long, e))
        for joining in [j for j in self.joining.values() if len(j.rest) <= self.chunk + 1]:
            del self.joining[joining.key]
            try:
                joining.uids = self._insert(joining)
                done.append((joining, None))
            except Exception as e:  # insert_choices queues all rows or none
                done.append((joining, e))
        return done

    def _insert(self, joining: Joining) -> List[int]:
        request = joining.request
        options = dict(
            max_tokens=request.max_tokens,
            eos_ids=self.tokenizer.eos_token_ids,
            top_logprobs=request.top_logprobs or 0,
            prompt_cache=joining.cache,
        )
        if request.n == 1:
            seed = joining.seeds[0]
            return [self.batch.insert(joining.rest, joining.sampler, seed=seed, **options)]
        return self.batch.insert_choices(joining.rest, joining.seeds, joining.sampler, **options)

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
    """The one thread that runs MLX: a loop of (admit waiting requests, drop the rows nobody
    waits for, one prompt chunk, one decode step for every row, hand each row's token to its
    request). It sleeps only when nothing waits, joins or runs."""

    def __init__(
        self,
        model,
        tokenizer,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
        prefill_step_size: Optional[int] = None,
    ):
        self.tokenizer = tokenizer
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        if distributed.world().size() > 1:
            prompt_cache_bytes = 0  # the other ranks could not keep theirs in step
        self.scheduler = Scheduler(
            model, tokenizer, max_concurrency, prompt_cache_bytes, prefill_step_size
        )
        self.inbox: "queue.Queue[Optional[Job]]" = queue.Queue()
        self.waiting: Deque[Job] = deque()
        self.joining: Dict[int, Job] = {}  # joining key -> its job
        self.choices: Dict[int, Choice] = {}  # row uid -> the choice it answers
        self.reset_next = False
        self.lock = threading.Lock()
        self.queued = 0  # submitted, not yet admitted
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
        if not 1 <= request.n <= self.max_concurrency:
            raise GenerationError(
                f"n must be in [1, {self.max_concurrency}] (a request's choices are rows of one "
                f"batch), got {request.n}",
                "n",
            )
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
            while self._collect(block=self._idle()):
                try:
                    self._step()
                except Exception as e:  # the server must outlive any one step
                    log.exception("generation failed")
                    self._fail_all(Failure(500, f"generation failed: {e}"))
        finally:
            self._fail_all(Failure(503, "the server is shutting down"))
            self._collect(block=False)
            for job in self.waiting:
                job.deliver(Failure(503, "the server is shutting down"))
            distributed.share(None)  # releases follower ranks (a no-op in one process)
            # MLX needs each thread's streams destroyed before the interpreter exits.
            mx.clear_streams()

    def _idle(self) -> bool:
        """Nothing to do until a job comes: none waits, none joins, no row runs."""
        return not self.waiting and not self.scheduler.rows

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
        drop_rows, drop_joining = self._take_drops()
        requests = [job.request for job in admitted]
        plan = Plan(requests, drop_rows, drop_joining, reset=self.reset_next)
        self.reset_next = False
        distributed.share(plan)
        results, done = self.scheduler.prepare(plan)
        for job, result in zip(admitted, results):
            if isinstance(result, Exception):
                log.error("admission failed: %s", result)
                job.deliver(Failure(500, f"generation failed: {result}"))
            else:
                self.joining[result.key] = job
        for joining, error in done:
            self._joined(self.joining.pop(joining.key), joining, error)
        if len(self.scheduler.batch):
            for row in self.scheduler.batch.next():
                self._deliver(row)

    def _take_admissible(self) -> List[Job]:
        """The waiting jobs, in arrival order, whose rows fit in the batch now."""
        admitted, free = [], self.max_concurrency - self.scheduler.rows
        while self.waiting and (
            self.waiting[0].cancelled.is_set() or self.waiting[0].request.n <= free
        ):
            job = self.waiting.popleft()
            with self.lock:
                self.queued -= 1
            if job.cancelled.is_set():
                job.deliver(CANCELLED)
            else:
                admitted.append(job)
                free -= job.request.n
        return admitted

    def _take_drops(self) -> Tuple[List[int], List[int]]:
        """The rows that no choice waits for (past a stop string, of a cancelled request, or
        left by a failure) and the joining requests of cancelled jobs."""
        cancelled = {}
        for uid, choice in list(self.choices.items()):
            if choice.job.cancelled.is_set():
                cancelled[id(choice.job)] = choice.job
                del self.choices[uid]
        drop_joining = [key for key, job in self.joining.items() if job.cancelled.is_set()]
        for key in drop_joining:
            job = self.joining.pop(key)
            cancelled[id(job)] = job
        for job in cancelled.values():
            job.deliver(CANCELLED)
        drop_rows = [uid for uid in self.scheduler.batch.uids if uid not in self.choices]
        return drop_rows, drop_joining

    def _joined(self, job: Job, joining: Joining, error: Optional[Exception]):
        if error is not None:
            log.error("a request could not join the batch: %s", error)
            job.deliver(Failure(500, f"generation failed: {error}"))
            return
        request = job.request
        context = request.prompt_ids if request.continues_prompt else ()
        for index, uid in enumerate(joining.uids):
            text = RowText(self.tokenizer, request.stop, context)
            tokens = list(request.prompt_ids)
            self.choices[uid] = Choice(job, index, text, tokens, joining.cached_tokens)

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
        del self.choices[row.uid]  # past a stop string, its row leaves at the next step
        self.scheduler.finished(row.uid, choice.tokens)
        prompt_tokens = len(request.prompt_ids)
        choice.job.deliver(
            Finish(finish, prompt_tokens, choice.generated, choice.cached_tokens, choice.index)
        )

    def _fail_all(self, failure: Failure):
        """Answer every admitted request with `failure` and start the next step afresh."""
        jobs = [c.job for c in self.choices.values()] + list(self.joining.values())
        for job in {id(job): job for job in jobs}.values():
            job.deliver(failure)
        self.choices.clear()
        self.joining.clear()
        self.reset_next = True


def follow(
    model,
    tokenizer,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    prefill_step_size: Optional[int] = None,
):
    """A follower rank under `mlx.launch`: carry out rank 0's plans until it shares None."""
    scheduler = Scheduler(model, tokenizer, max_concurrency, prefill_step_size=prefill_step_size)
    while (plan := distributed.share(None)) is not None:
        scheduler.prepare(plan)  # rank 0 reports what fails
        if len(scheduler.batch):
            try:
                scheduler.batch.next()
            except Exception:  # rank 0 failed the same step and starts afresh: so do we
                scheduler.reset()
