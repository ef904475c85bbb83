"""The server over real loopback sockets (uvicorn in a thread, the tiny model): bursts past the
batch and the queue, connections that idle, trickle, half-close or leave mid-prefill."""

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

pytest.importorskip(
    "starlette", reason="the server extra is not installed: pip install -e '.[server]'"
)
uvicorn = pytest.importorskip(
    "uvicorn", reason="the server extra is not installed: pip install -e '.[server]'"
)

from entropix_mlx import server as server_module  # noqa: E402
from entropix_mlx.server import create_app, uvicorn_config  # noqa: E402

from .test_server import free_port, sse_payloads  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_served):
    return tiny_served


class Paced:
    """The tiny model, each forward pass taking at least `delay` seconds (so that a burst
    outruns the answers), noting every pass's width (prompt chunks are wide)."""

    def __init__(self, model, delay: float):
        self.model, self.delay, self.widths = model, delay, []

    def __call__(self, inputs, *args, **kwargs):
        self.widths.append(inputs.shape[1])
        time.sleep(self.delay)
        return self.model(inputs, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


@contextlib.contextmanager
def serving(app, **config):
    """`app` served by uvicorn on a free loopback port, in a thread -> (host, port)."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, "warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(30)


def url(address) -> str:
    return "http://%s:%d" % address


def served(address, **fields) -> dict:
    """A small completion after the scenario: the server still answers."""
    body = {"prompt": "hello", "max_tokens": 2, "sampler": "greedy", **fields}
    response = httpx.post(url(address) + "/v1/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def burst(address, bodies, route="/v1/completions"):
    """Send `bodies` as streaming requests at once, one thread each -> (status, lines) each."""
    results = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(i):
        with httpx.Client(base_url=url(address), timeout=60) as http:
            start.wait()
            with http.stream("POST", route, json={**bodies[i], "stream": True}) as response:
                results[i] = (response.status_code, list(response.iter_lines()))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert all(r is not None for r in results), "a request got no answer"
    return results


BUSY = {
    "error": {
        "message": "the server is busy (3 requests are waiting); retry shortly",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


def test_a_burst_over_the_rows_and_the_queue_is_answered_and_the_server_goes_on(tiny):
    model, tokenizer, info = tiny
    app = create_app(Paced(model, 0.03), tokenizer, info, max_concurrency=2, max_queue=3)
    with serving(app) as address:
        body = {"prompt": "hello", "max_tokens": 6, "sampler": "greedy"}
        results = burst(address, [body] * 10)  # 2 rows + 3 waiting < 10
        answered = [lines for status, lines in results if status == 200]
        refused = [lines for status, lines in results if status == 429]
        # At least the queue's worth are taken (more if rows free up while the burst comes).
        assert len(answered) + len(refused) == 10 and len(answered) >= 3 and refused
        for lines in answered:
            chunks = sse_payloads(lines)
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            assert sum(bool(c["choices"][0]["text"]) for c in chunks) <= 6
        assert all(json.loads("".join(lines)) == BUSY for lines in refused)
        assert served(address)["usage"]["completion_tokens"] == 2


def test_a_burst_with_an_admission_failing_halfway_leaves_no_orphan_row(tiny, monkeypatch):
    from entropix_mlx.engine.batch import BatchGenerator

    insert, calls = BatchGenerator.insert, []

    def second_row_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first request's second row: its first is already queued
            raise RuntimeError("simulated failure after one row was queued")
        return insert(self, *args, **kwargs)

    monkeypatch.setattr(BatchGenerator, "insert", second_row_fails)
    model, tokenizer, info = tiny
    app = create_app(Paced(model, 0.03), tokenizer, info, max_concurrency=4, max_queue=3)
    with serving(app) as address:
        body = {"prompt": "hello", "max_tokens": 5, "n": 2, "seed": 1}
        results = burst(address, [body] * 10)
        answers = [sse_payloads(lines) for status, lines in results if status == 200]
        failed = [chunks for chunks in answers if "error" in chunks[0]]
        assert failed == [
            [
                {
                    "error": {
                        "message": "generation failed: simulated failure after one row was queued",
                        "type": "server_error",
                        "param": None,
                        "code": "generation_failed",
                    }
                }
            ]
        ]
        for chunks in answers:
            if chunks not in failed:
                finishes = [
                    c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]
                ]
                assert sorted(finishes) == [0, 1]
        assert all(status in (200, 429) for status, _ in results)
        assert len(served(address, n=4)["choices"]) == 4  # every row is free again


def test_idle_connections_beyond_the_limit_are_closed_at_once_the_others_after_the_timeout(
    tiny,
):
    app = create_app(*tiny, max_tokens_limit=2)
    with serving(app, max_connections=4, idle_timeout=0.5) as address:
        sockets = []
        for _ in range(7):
            sockets.append(socket.create_connection(address))
            time.sleep(0.02)  # accepted in order
        try:
            for s in sockets:
                s.settimeout(0.3)
            closed_at_once = [s.recv(1) == b"" for s in sockets[4:]]
            assert closed_at_once == [True] * 3
            start = time.monotonic()
            for s in sockets[:4]:
                s.settimeout(5)
                assert s.recv(1) == b""  # closed by the server
            assert time.monotonic() - start < 3
        finally:
            for s in sockets:
                s.close()
        assert served(address)


def test_a_request_head_trickled_byte_by_byte_is_cut_off(tiny):
    app = create_app(*tiny, max_tokens_limit=2)
    with serving(app, idle_timeout=0.5) as address:
        head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        start, closed = time.monotonic(), False
        with socket.create_connection(address) as s:
            s.settimeout(0.05)  # one byte every 50 ms: 12 s for the whole head
            for byte in head:
                try:
                    s.sendall(bytes([byte]))
                    closed = s.recv(1) == b""
                except TimeoutError:
                    continue
                except OSError:  # reset by the server
                    closed = True
                if closed:
                    break
        assert closed and time.monotonic() - start < 3
        assert served(address)


def raw_request(body: dict, route="/v1/completions") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {route} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def read_all(s: socket.socket, timeout: float = 30) -> bytes:
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_half_closes_after_its_request_gets_the_answer(tiny, stream):
    app = create_app(*tiny, max_tokens_limit=4)
    with serving(app) as address, socket.create_connection(address) as s:
        body = {"prompt": "hello", "max_tokens": 3, "sampler": "greedy", "stream": stream}
        s.sendall(raw_request(body))
        s.shutdown(socket.SHUT_WR)
        reply = read_all(s).decode()
    assert "HTTP/1.1 200 OK" in reply
    if stream:
        assert "data: [DONE]\n\n" in reply and reply.endswith("\r\n0\r\n\r\n")  # chunked
    else:
        assert reply.startswith("HTTP/1.1 100 Continue\r\n\r\n")  # the probe, skipped by clients
        answer = json.loads(reply.rpartition("\r\n\r\n")[2])
        assert answer["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_mid_prefill_stops_its_prompt_between_chunks(
    tiny, stream, monkeypatch
):
    monkeypatch.setattr(server_module, "HEARTBEAT_SECONDS", 0.1)
    model, tokenizer, info = tiny
    paced = Paced(model, 0.02)
    app = create_app(paced, tokenizer, info, max_tokens_limit=4, prefill_step_size=4)
    prompt = [70 + i % 20 for i in range(240)]  # 60 chunks of 4: 1.2 s at least
    with serving(app) as address:
        with socket.create_connection(address) as s:
            s.sendall(raw_request({"prompt": prompt, "max_tokens": 4, "stream": stream}))
            while paced.widths.count(4) < 5:  # its prefill is under way
                time.sleep(0.01)
        time.sleep(1.5)
        chunks = paced.widths.count(4)
        assert chunks < 45, f"{chunks} of 60 chunks ran after the client left"
        assert served(address)


def test_a_body_that_does_not_arrive_in_time_is_a_408(tiny):
    app = create_app(*tiny, max_tokens_limit=2, body_timeout=0.3)
    with serving(app) as address, socket.create_connection(address) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
        reply = read_all(s, timeout=10).decode()
    status, _, rest = reply.partition("\r\n")
    assert status == "HTTP/1.1 408 Request Timeout"
    assert json.loads(rest.partition("\r\n\r\n")[2]) == {
        "error": {
            "message": "the request body did not arrive within 0.3 s; send it at once",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }
