"""Batched decoding: total generated tokens per second at B rows, against mlx-lm's batch loop.

    python benchmarks/bench_batch.py [--batch-sizes 1,4,8,16] [--gen-tokens 32] [--repeats 2]
                                     [--model NAME] [--cpu-dtype quantized|float32] [--json FILE]

Both engines run the very same weights (a GGUF is converted for mlx-lm without re-quantizing,
as `entropix-mlx bench` does; with `--cpu-dtype float32` both are dequantized to float32 by the
same function, and the system OpenBLAS, loaded by entropix_mlx, serves both; mlx-lm on the stored
weights runs too, as the reference) on the same B prompts of different lengths (real prose), greedy,
for `--gen-tokens` tokens per row that never stop at EOS. mlx-lm runs its `BatchGenerator`
(the loop under `mlx_lm.batch_generate`); ours runs `BatchGenerator` with the greedy and the
Entropix sampler (the model's preset). Rows take turns within each repeat; figures are medians.
"Decode" is generated tokens per second after every row's first token; "total" includes the
prefill. The Entropix share is one batched sampler step ([B, V] logits, [B, H, L] scores)
against one batched decode step.
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
from entropix_mlx.bench.machine import machine_info  # noqa: E402
from entropix_mlx.bench.same_weights import mlx_lm_folder  # noqa: E402
from entropix_mlx.bench.text import TEXT  # noqa: E402
from entropix_mlx.engine.batch import BatchGenerator  # noqa: E402
from entropix_mlx.loading import DEFAULT_MODEL, load  # noqa: E402
from entropix_mlx.loading.cpu_weights import dequantize_model  # noqa: E402
from entropix_mlx.sampling import make_sampler  # noqa: E402


def make_prompts(tokenizer, batch: int, base_length: int):
    """`batch` prose prompts of different lengths (base_length .. 2 * base_length tokens)."""
    ids = tokenizer.encode(TEXT)
    lengths = [base_length + (base_length * i) // max(batch, 1) for i in range(batch)]
    return [ids[i * 7 : i * 7 + n] for i, n in enumerate(lengths)]


def run_ours(model, prompts, sampler, gen_tokens):
    batch = BatchGenerator(model)
    for i, ids in enumerate(prompts):
        batch.insert(ids, sampler, seed=i, max_tokens=gen_tokens)
    return timed_loop(batch.next, lambda steps: len(steps), len(prompts) * gen_tokens)


def run_mlx_lm(model, prompts, gen_tokens):
    from mlx_lm.generate import BatchGenerator as MlxLmBatchGenerator

    batch = MlxLmBatchGenerator(
        model,
        max_tokens=gen_tokens,
        completion_batch_size=len(prompts),
        prefill_batch_size=len(prompts),
    )
    batch.insert(prompts, [gen_tokens] * len(prompts))
    try:
        return timed_loop(
            batch.next_generated, lambda responses: len(responses), len(prompts) * gen_tokens
        )
    finally:
        batch.close()


def timed_loop(step, count, expected):
    """(total s, decode s, tokens): call `step` until `expected` tokens came out."""
    tic = time.perf_counter()
    tokens, first = 0, None
    while tokens < expected:
        n = count(step())
        if n == 0:
            break
        tokens += n
        if first is None:
            first, first_tokens = time.perf_counter(), tokens
    end = time.perf_counter()
    return {
        "total_s": end - tic,
        "decode_s": end - first,
        "tokens": tokens,
        "decode_tokens": tokens - first_tokens,
    }


def sampler_share(model, sampler, batch, length, step_s):
    args = model.args
    logits = 4.0 * mx.random.normal((batch, args.vocab_size))
    scores = mx.random.normal((batch, args.num_attention_heads, length))
    prev, keys = (
        mx.zeros((batch,), dtype=mx.int32),
        mx.stack([mx.random.key(i) for i in range(batch)]),
    )
    mx.eval(logits, scores, keys)
    times = []
    for _ in range(7):
        tic = time.perf_counter()
        mx.eval(sampler(logits, scores, prev, keys))
        times.append(time.perf_counter() - tic)
    seconds = statistics.median(times[2:])
    return {"sampler_step_ms": seconds * 1e3, "share": seconds / step_s}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpu-dtype", choices=("quantized", "float32"), default="quantized")
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args(argv)
    import mlx_lm

    model, tokenizer, info = load(opts.model, cpu_dtype=opts.cpu_dtype)
    folder = str(mlx_lm_folder(opts.model))
    theirs, _ = mlx_lm.load(folder)
    if opts.cpu_dtype == "float32":
        stored, _ = mlx_lm.load(folder)  # the reference: mlx-lm on the weights as stored
        dequantize_model(theirs)
    entropix = make_sampler("entropix", info.sampler_config(), tokenizer)
    n = opts.gen_tokens
    greedy = make_sampler("greedy")
    arms = {"mlx-lm greedy": lambda prompts: run_mlx_lm(theirs, prompts, n)}
    if opts.cpu_dtype == "float32":
        arms["mlx-lm greedy (stored weights)"] = lambda prompts: run_mlx_lm(stored, prompts, n)
    arms["entropix-mlx greedy"] = lambda prompts: run_ours(model, prompts, greedy, n)
    arms["entropix-mlx entropix"] = lambda prompts: run_ours(model, prompts, entropix, n)
    results = []
    for b in (int(v) for v in opts.batch_sizes.split(",")):
        prompts = make_prompts(tokenizer, b, opts.prompt_tokens)
        runs = {name: [] for name in arms}
        for name, run in arms.items():  # warm-up
            run([p[:8] for p in prompts[:2]])
        for repeat in range(opts.repeats):
            names = list(arms)[repeat % len(arms) :] + list(arms)[: repeat % len(arms)]
            for name in names:
                runs[name].append(arms[name](prompts))
        for name, samples in runs.items():
            decode = statistics.median(s["decode_tokens"] / s["decode_s"] for s in samples)
            total = statistics.median(s["tokens"] / s["total_s"] for s in samples)
            row = {
                "batch": b,
                "arm": name,
                "decode_tok_s": decode,
                "total_tok_s": total,
                "samples": samples,
            }
            if name == "entropix-mlx entropix":
                step_s = b / decode
                row.update(
                    sampler_share(
                        model, entropix, b, opts.prompt_tokens * 2 + opts.gen_tokens, step_s
                    )
                )
            results.append(row)
            print_row(row, results)
    if opts.json:
        report = {
            "machine": machine_info(),
            "model": opts.model,
            "quantization": info.quantization,
            "weight_dtype": info.weight_dtype,
            "settings": vars(opts) | {"json": str(opts.json)},
            "results": results,
        }
        opts.json.write_text(json.dumps(report, indent=2) + "\n")


def print_row(row, results):
    same_batch = {r["arm"]: r for r in results if r["batch"] == row["batch"]}
    ratio = row["decode_tok_s"] / same_batch["mlx-lm greedy"]["decode_tok_s"]
    stored = same_batch.get("mlx-lm greedy (stored weights)")
    if stored and row["arm"].startswith("entropix-mlx"):
        ratio_text = f"{ratio:.2f}x; {row['decode_tok_s'] / stored['decode_tok_s']:.2f}x stored"
    else:
        ratio_text = f"{ratio:.2f}x"
    extra = (
        f"  sampler step {row['sampler_step_ms']:.1f} ms ({row['share']:.1%})"
        if "share" in row
        else ""
    )
    print(
        f"B={row['batch']:<3} {row['arm']:<30} decode {row['decode_tok_s']:7.1f} tok/s ({ratio_text})  "
        f"total {row['total_tok_s']:7.1f} tok/s{extra}",
        flush=True,
    )


if __name__ == "__main__":
    main()
