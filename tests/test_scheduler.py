"""The server's generation worker (scheduler.py): continuous batching, stop strings, traces,
cancellation, a full queue, a failing step."""

import asyncio

import pytest

from entropix_mlx.sampling import SamplerConfig
from entropix_mlx.scheduler import Busy, Failure, GenerationRequest, GenerationWorker

TINY_PAUSE_ID = 16  # "..." is three tokens in the tiny vocabulary


@pytest.fixture(scope="module")
def tiny(tiny_served):
    return tiny_served


def tiny_request(tokenizer, **fields) -> GenerationRequest:
    settings = dict(
        prompt_ids=tokenizer.encode("hello"),
        sampler="greedy",
        config=SamplerConfig(pause_token_id=TINY_PAUSE_ID),
        max_tokens=6,
    )
    return GenerationRequest(**{**settings, **fields})


def worker_events(worker_args, *requests, cancel_first_after=None, cancel_before=()):
    """Run `requests` through one GenerationWorker -> each request's events (in submission order)."""

    async def scenario():
        worker = GenerationWorker(*worker_args)
        worker.start()
        try:
            jobs = [worker.submit(r) for r in requests]
            for i in cancel_before:
                jobs[i].cancelled.set()
            results = []
            for i, job in enumerate(jobs):
                if i in cancel_before:
                    results.append([])
                    continue
                events = []
                async for event in job.stream():
                    events.append(event)
                    if (
                        i == 0
                        and cancel_first_after is not None
                        and len(events) >= cancel_first_after
                    ):
                        job.cancelled.set()
                results.append(events)
            return results, jobs
        finally:
            worker.stop()

    return asyncio.run(asyncio.wait_for(scenario(), 60))


def test_worker_cuts_at_a_stop_string_and_traces_every_token(tiny):
    model, tokenizer, _ = tiny
    (free,), _ = worker_events((model, tokenizer), tiny_request(tokenizer))
    full = "".join(e.text for e in free[:-1])
    assert free[-1].reason in ("stop", "length") and len(full) >= 3, full
    stop = full[1:3]
    (events,), _ = worker_events(
        (model, tokenizer), tiny_request(tokenizer, stop=(stop,), trace=True)
    )
    *deltas, finish = events
    assert "".join(e.text for e in deltas) == full[: full.index(stop)]
    assert finish.reason == "stop" and finish.completion_tokens == len(deltas)
    records = [r for e in deltas for r in e.trace]
    assert [r["index"] for r in records] == list(range(len(deltas)))
    assert records[-1]["finish_reason"] == "stop"


def test_worker_batches_requests_and_a_cancelled_one_leaves_between_tokens(tiny):
    model, tokenizer, _ = tiny
    requests = [
        tiny_request(tokenizer, max_tokens=200),
        tiny_request(tokenizer, max_tokens=3),
        tiny_request(tokenizer),
    ]
    (long_events, short_events, skipped), jobs = worker_events(
        (model, tokenizer), *requests, cancel_first_after=1, cancel_before=(2,)
    )
    assert type(long_events[-1]).__name__ == "Failure" and long_events[-1].status == 503
    assert len(long_events) < 10  # stopped within a few tokens of 200
    assert type(short_events[-1]).__name__ == "Finish" and short_events[-1].completion_tokens == 3
    # Cancelled while waiting: never admitted, and told so (its handler must not wait forever).
    assert jobs[2].events.get_nowait() == Failure(503, "the generation was cancelled")
    assert jobs[2].events.empty()


def test_rows_of_one_batch_each_equal_their_request_alone(tiny):
    model, tokenizer, _ = tiny
    config = SamplerConfig(pause_token_id=TINY_PAUSE_ID)
    requests = [
        tiny_request(
            tokenizer,
            prompt_ids=tokenizer.encode(text),
            sampler=sampler,
            seed=seed,
            max_tokens=8,
            config=config.replace(temp=temp),
        )
        for text, sampler, seed, temp in [
            ("hello", "entropix", 1, 0.666),
            ("the tiny", "standard", 2, 1.0),
            ("a b c", "greedy", None, 0.666),
            ("hello", "entropix", 3, 0.9),
        ]
    ]
    together, _ = worker_events((model, tokenizer), *requests)
    alone = [worker_events((model, tokenizer), r)[0][0] for r in requests]
    text = lambda events: "".join(e.text for e in events if type(e).__name__ == "Delta")  # noqa: E731
    assert [text(e) for e in together] == [text(e) for e in alone]
    assert all(type(e[-1]).__name__ == "Finish" for e in together)


def test_a_full_queue_answers_busy(tiny):
    model, tokenizer, _ = tiny

    async def scenario():
        worker = GenerationWorker(model, tokenizer, 2, 1)  # not started: nothing is admitted
        worker.submit(tiny_request(tokenizer))
        with pytest.raises(
            Busy, match=r"^the server is busy \(1 requests are waiting\); retry shortly$"
        ):
            worker.submit(tiny_request(tokenizer))

    asyncio.run(scenario())


class FailsOnce:
    """A model whose first forward pass raises, as a deep MLX error would."""

    def __init__(self, model):
        self.model, self.failed = model, False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise RuntimeError("[matmul] simulated failure")
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_worker_outlives_a_failing_generation(tiny):
    model, tokenizer, _ = tiny
    (failed,), _ = worker_events((FailsOnce(model), tokenizer), tiny_request(tokenizer))
    (served,), _ = worker_events((model, tokenizer), tiny_request(tokenizer, max_tokens=2))
    assert failed[-1].status == 500 and "simulated failure" in failed[-1].message
    assert served[-1].completion_tokens == 2


def run_jobs(worker, requests, timeout=30, on_event=None):
    """Submit `requests` to a started `worker` at once -> each one's events (a Busy refusal as
    the exception); fails rather than hangs if any accepted request is never answered."""

    async def scenario():
        jobs = []
        for request in requests:
            try:
                jobs.append(worker.submit(request))
            except Busy as e:
                jobs.append(e)

        async def events(job):
            if isinstance(job, Busy):
                return job
            seen = []
            async for event in job.stream():
                seen.append(event)
                if on_event is not None:
                    on_event(job, event)
            return seen

        return await asyncio.gather(*(events(job) for job in jobs))

    return asyncio.run(asyncio.wait_for(scenario(), timeout))


def finished(events) -> bool:
    return isinstance(events, list) and type(events[-1]).__name__ == "Finish"


@pytest.fixture
def worker_of(tiny):
    """A started GenerationWorker over the tiny model (or a wrapper of it); stopped after."""
    workers = []

    def start(model=None, **limits):
        worker = GenerationWorker(model or tiny[0], tiny[1], **limits)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def test_a_burst_over_the_batch_and_the_queue_is_served_to_the_last(tiny, worker_of):
    # One row, three waiting: each request finishes while the next ones wait, the moment at
    # which the worker used to fall asleep with a queue.
    tokenizer = tiny[1]
    worker = worker_of(max_concurrency=1, max_queue=3, prompt_cache_bytes=0)
    burst = [tiny_request(tokenizer, max_tokens=3) for _ in range(5)]
    results = run_jobs(worker, burst)
    refused = [r for r in results if isinstance(r, Busy)]
    assert all(finished(r) for r in results if not isinstance(r, Busy))
    assert len(refused) >= 1 and len(results) - len(refused) >= 3
    assert str(refused[0]).startswith("the server is busy (")
    (later,) = run_jobs(worker, [tiny_request(tokenizer, max_tokens=2)])
    assert finished(later) and later[-1].completion_tokens == 2
    assert worker.scheduler.rows == 0 and not worker.choices


def test_an_admission_that_fails_halfway_leaves_no_row_behind(tiny, worker_of, monkeypatch):
    from entropix_mlx.engine.batch import BatchGenerator

    tokenizer = tiny[1]
    insert, calls = BatchGenerator.insert, []

    def second_row_fails(self, *args, **kwargs):  # the fault: a request's 2nd row is refused
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure after one row was queued")
        return insert(self, *args, **kwargs)

    monkeypatch.setattr(BatchGenerator, "insert", second_row_fails)
    worker = worker_of(max_concurrency=3, max_queue=8, prompt_cache_bytes=0)
    requests = [tiny_request(tokenizer, n=3, seed=1)] + [
        tiny_request(tokenizer, max_tokens=3) for _ in range(4)
    ]
    failed, *served = run_jobs(worker, requests)
    assert failed == [Failure(500, "generation failed: simulated failure after one row was queued")]
    assert all(finished(events) for events in served)
    (later,) = run_jobs(worker, [tiny_request(tokenizer, n=2, max_tokens=2)])
    assert sum(type(e).__name__ == "Finish" for e in later) == 2
    assert worker.scheduler.batch.uids == [] and not worker.choices


def test_row_seeds_past_2_64_fail_the_request_before_any_row_is_queued(tiny, worker_of):
    tokenizer = tiny[1]
    worker = worker_of(max_concurrency=2, prompt_cache_bytes=0)
    bad = tiny_request(tokenizer, n=2, seed=2**64 - 1)  # past the server's own check
    failed, served = run_jobs(worker, [bad, tiny_request(tokenizer, max_tokens=2)])
    (failure,) = failed
    assert failure.status == 500 and "leaves no room for 2 rows" in failure.message
    assert finished(served)
    assert worker.scheduler.batch.uids == []


def test_a_step_that_fails_outside_the_model_fails_its_requests_and_the_worker_goes_on(
    tiny, worker_of, monkeypatch
):
    from entropix_mlx.engine.text import RowText

    tokenizer = tiny[1]
    add, failures = RowText.add, []

    def fails_once(self, token, end):
        if not failures:
            failures.append(1)
            raise RuntimeError("simulated failure while reading a token")
        return add(self, token, end)

    monkeypatch.setattr(RowText, "add", fails_once)
    worker = worker_of(max_concurrency=1, max_queue=4, prompt_cache_bytes=0)
    first, *rest = run_jobs(worker, [tiny_request(tokenizer, max_tokens=3) for _ in range(3)])
    assert first == [Failure(500, "generation failed: simulated failure while reading a token")]
    assert all(finished(events) for events in rest)


def test_more_choices_than_rows_are_refused_at_submission(tiny):
    from entropix_mlx.errors import GenerationError

    model, tokenizer, _ = tiny

    async def scenario():
        worker = GenerationWorker(model, tokenizer, 2, 4)  # not started
        with pytest.raises(GenerationError, match=r"^n must be in \[1, 2\]"):
            worker.submit(tiny_request(tokenizer, n=3))

    asyncio.run(scenario())


class Recording:
    """The tiny model, noting the width of every forward pass (prompt chunks are wide)."""

    def __init__(self, model, on_call=None):
        self.model, self.widths, self.on_call = model, [], on_call

    def __call__(self, inputs, *args, **kwargs):
        self.widths.append(inputs.shape[1])
        if self.on_call is not None:
            self.on_call(self)
        return self.model(inputs, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_a_long_prompt_joins_a_chunk_per_step_while_the_other_rows_go_on(tiny, worker_of):
    model, tokenizer, _ = tiny
    recording = Recording(model)
    worker = worker_of(recording, max_concurrency=2, prefill_step_size=8, prompt_cache_bytes=0)
    long_prompt = tiny_request(tokenizer, prompt_ids=[70 + i % 20 for i in range(100)])
    short = tiny_request(tokenizer, max_tokens=30)
    short_events, long_events = run_jobs(worker, [short, long_prompt])
    assert finished(short_events) and finished(long_events)
    chunks = [i for i, width in enumerate(recording.widths) if width == 8]
    assert len(chunks) >= 11  # 99 tokens to prefill: 11 chunks outside the batch, then join
    # Between two chunks of the long prompt, the short request's row made a token.
    assert all(b - a >= 2 for a, b in zip(chunks, chunks[1:]))


def test_a_cancelled_long_prompt_stops_between_chunks(tiny, worker_of):
    model, tokenizer, _ = tiny
    long_prompt = tiny_request(tokenizer, prompt_ids=[70 + i % 20 for i in range(200)])
    jobs = []

    def cancel_at_the_second_chunk(recording):
        if recording.widths.count(8) == 2:
            jobs[0].cancelled.set()

    recording = Recording(model, cancel_at_the_second_chunk)
    worker = worker_of(recording, max_concurrency=2, prefill_step_size=8, prompt_cache_bytes=0)

    async def scenario():
        jobs.append(worker.submit(long_prompt))
        return [event async for event in jobs[0].stream()]

    events = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert events == [Failure(503, "the generation was cancelled")]
    assert recording.widths.count(8) <= 3  # of the 24 chunks its prompt needed
    (later,) = run_jobs(worker, [tiny_request(tokenizer, max_tokens=2)])
    assert finished(later)


def test_a_cancelled_row_leaves_nothing_in_the_prompt_cache_bookkeeping(tiny, worker_of):
    tokenizer = tiny[1]
    worker = worker_of(max_concurrency=2)  # with the prompt cache

    def cancel_at_the_first_token(job, event):
        if type(event).__name__ == "Delta":
            job.cancelled.set()

    long = tiny_request(tokenizer, max_tokens=200)
    (cancelled,) = run_jobs(worker, [long], on_event=cancel_at_the_first_token)
    assert cancelled[-1] == Failure(503, "the generation was cancelled")
    (later,) = run_jobs(worker, [tiny_request(tokenizer, max_tokens=2)])
    assert finished(later)
    assert worker.scheduler.left == {} and worker.scheduler.ended == {}
