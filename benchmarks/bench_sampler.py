"""Microseconds per sampler step: entropix-mlx samplers against mlx-lm's make_sampler.

    python benchmarks/bench_sampler.py [--vocab 49152 128256] [--batch 1 4] [--json FILE]

Fixed L: every sampler sees the same logits [B, V] and scores [B, H, L]; samplers are
timed in interleaved rounds (robust to a busy machine), each step forced with
mx.eval, after a warm-up; the median is reported. Growing L: 128 consecutive steps
with L + 1 each step, run in a fresh process, first with an empty compile cache
($TMPDIR/mlx, "cold") and then again with the cache it left ("warm").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # when not installed
# isort: off
import entropix_mlx  # noqa: E402, F401 - first: it loads the system OpenBLAS before mlx
import mlx.core as mx  # noqa: E402

# isort: on
from mlx_lm.sample_utils import make_sampler  # noqa: E402

from entropix_mlx.bench.cold_compile import empty_compile_cache, json_child  # noqa: E402
from entropix_mlx.sampling import make_entropix_sampler, make_standard_sampler  # noqa: E402

PAUSE_ID = 0


def samplers():
    """name -> step(logits, scores, prev_token, key); mlx-lm's ignores the extras."""
    mlx_lm = make_sampler(temp=0.666, top_p=0.9, top_k=27)
    return {
        "mlx-lm make_sampler": lambda logits, scores, prev, key: mlx_lm(logits),
        "standard (same settings)": make_standard_sampler(temperature=0.666, top_p=0.9, top_k=27),
        "entropix (default)": make_entropix_sampler(pause_token_id=PAUSE_ID),
        "entropix (compile=True)": make_entropix_sampler(pause_token_id=PAUSE_ID, compile=True),
    }


def make_inputs(batch, vocab, heads, length, seed=0):
    mx.random.seed(seed)
    logits = 3.0 * mx.random.normal((batch, vocab))
    scores = mx.random.normal((batch, heads, length))
    prev = mx.ones((batch,), dtype=mx.int32)
    mx.eval(logits, scores, prev)
    return logits, scores, prev


def timed_step(step, logits, scores, prev, key):
    start = time.perf_counter()
    mx.eval(step(logits, scores, prev, key))
    return (time.perf_counter() - start) * 1e6


def bench_fixed(batch, vocab, heads, length, warmup, rounds):
    logits, scores, prev = make_inputs(batch, vocab, heads, length)
    steps = samplers()
    times = {name: [] for name in steps}
    for i in range(warmup + rounds):
        key = mx.random.key(i)
        for name, step in steps.items():
            elapsed = timed_step(step, logits, scores, prev, key)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def growing_worker(name, batch, vocab, heads, length, n_steps):
    """One sampler, n_steps steps with L growing by one: first-step and total time."""
    logits, _, prev = make_inputs(batch, vocab, heads, length)
    all_scores = [mx.random.normal((batch, heads, length + i)) for i in range(n_steps)]
    mx.eval(all_scores)
    step = samplers()[name]
    start = time.perf_counter()
    times = [
        timed_step(step, logits, scores, prev, mx.random.key(i))
        for i, scores in enumerate(all_scores)
    ]
    total = time.perf_counter() - start
    return {"first_ms": times[0] / 1e3, "median_us": statistics.median(times[1:]), "total_s": total}


def bench_growing(batch, vocab, heads, length, n_steps):
    results = {}
    for name in samplers():
        args = [sys.executable, __file__, "--growing-worker", name, "--batch", str(batch)]
        args += ["--vocab", str(vocab), "--heads", str(heads), "--length", str(length)]
        args += ["--growing-steps", str(n_steps)]
        with empty_compile_cache() as env:
            cold, warm = (json_child(args, env, f"the growing-L run of {name}") for _ in range(2))
        results[name] = {"cold": cold, "warm": warm}
    return results


def print_fixed(rows):
    names = list(rows[0]["us"])
    print("\nFixed L: microseconds per step (median); ratio = / mlx-lm")
    print(f"{'V':>7} {'B':>2}  " + "  ".join(f"{n:>26}" for n in names))
    for row in rows:
        base = row["us"][names[0]]
        cells = [f"{row['us'][n]:>17.0f} ({row['us'][n] / base:4.2f}x)" for n in names]
        print(f"{row['vocab']:>7} {row['batch']:>2}  " + "  ".join(f"{c:>26}" for c in cells))


def print_growing(growing, batch, vocab, length, n_steps):
    print(f"\nGrowing L ({length}..{length + n_steps - 1}), {n_steps} steps, V={vocab}, B={batch}")
    print(f"{'sampler':>26}  {'cache':>5}  {'first step ms':>13}  {'median us':>9}  {'total s':>7}")
    for name, runs in growing.items():
        for cache, r in runs.items():
            print(
                f"{name:>26}  {cache:>5}  {r['first_ms']:>13.1f}  {r['median_us']:>9.0f}  {r['total_s']:>7.2f}"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--growing-steps", type=int, default=128)
    parser.add_argument("--no-growing", action="store_true", help="skip the growing-L benchmark")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--growing-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.growing_worker:
        result = growing_worker(
            args.growing_worker,
            args.batch[0],
            args.vocab[0],
            args.heads,
            args.length,
            args.growing_steps,
        )
        print(json.dumps(result))
        return

    print(f"mlx {mx.__version__}, device {mx.default_device()}, H={args.heads}, L={args.length}")
    fixed = [
        {
            "vocab": v,
            "batch": b,
            "us": bench_fixed(b, v, args.heads, args.length, args.warmup, args.rounds),
        }
        for v in args.vocab
        for b in args.batch
    ]
    print_fixed(fixed)
    report = {"mlx": mx.__version__, "heads": args.heads, "length": args.length, "fixed": fixed}
    if not args.no_growing:
        batch, vocab = args.batch[0], args.vocab[0]
        growing = bench_growing(batch, vocab, args.heads, args.length, args.growing_steps)
        print_growing(growing, batch, vocab, args.length, args.growing_steps)
        report["growing"] = {
            "batch": batch,
            "vocab": vocab,
            "steps": args.growing_steps,
            "samplers": growing,
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
