"""How one run is measured: a generation's speed and memory, and a sampler step's time."""

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable, List

import mlx.core as mx

from ..errors import BenchError

MB = 1e6


@dataclass(frozen=True)
class RunFigures:
    """One generation: prompt_tokens prefilled, then gen_tokens decoded."""

    prefill_tps: float  # prompt tokens / time to first token (mlx-lm's definition)
    decode_tps: float  # (gen_tokens - 1) / time from the first token to the last
    ttft_s: float  # time to first token: prefill plus the first sampling step
    peak_memory_mb: float  # the model's weights plus the run's working peak
    working_memory_mb: float  # peak active memory during the run minus what was active before
    # Process CPU time (all threads) per token: steadier than wall time on a shared machine.
    prefill_cpu_ms: float  # per prompt token, up to the first token
    decode_cpu_ms: float  # per decoded token after the first


def measure_generation(tokens: Iterable, prompt_tokens: int, weights_bytes: int) -> RunFigures:
    """Drain `tokens` (a token generator, not yet started) and time it."""
    mx.synchronize()
    mx.clear_cache()
    active_before = mx.get_active_memory()
    mx.reset_peak_memory()
    start, cpu_start = time.perf_counter(), time.process_time()
    stamps = [(time.perf_counter(), time.process_time()) for _ in tokens]
    # mlx-lm queues one step past the last token; let it finish outside the timed span.
    mx.synchronize()
    working = max(mx.get_peak_memory() - active_before, 0)
    if len(stamps) < 2:
        raise BenchError(f"a timed run needs at least 2 tokens, got {len(stamps)}")
    (first, cpu_first), (last, cpu_last) = stamps[0], stamps[-1]
    decoded = len(stamps) - 1
    return RunFigures(
        prefill_tps=prompt_tokens / (first - start),
        decode_tps=decoded / (last - first),
        ttft_s=first - start,
        peak_memory_mb=(weights_bytes + working) / MB,
        working_memory_mb=working / MB,
        prefill_cpu_ms=1e3 * (cpu_first - cpu_start) / prompt_tokens,
        decode_cpu_ms=1e3 * (cpu_last - cpu_first) / decoded,
    )


def measure_step_us(step: Callable[[], object], iterations: int, warmup: int = 3) -> float:
    """Median wall time of `mx.eval(step())` in microseconds."""
    for _ in range(warmup):
        mx.eval(step())
    times: List[float] = []
    for _ in range(iterations):
        tic = time.perf_counter()
        mx.eval(step())
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1e6
