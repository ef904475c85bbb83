"""The server's generation worker (scheduler.py): continuous batching, stop strings, traces,
cancellation, a full queue, a failing step."""

import asyncio

import pytest

from entropix_mlx.sampling import SamplerConfig
from entropix_mlx.scheduler import Busy, GenerationRequest, GenerationWorker

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
