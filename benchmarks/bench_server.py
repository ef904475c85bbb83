"""Serving local apps: concurrent clients against `entropix-mlx serve` and `mlx_lm.server`.

    python benchmarks/bench_server.py [--model NAME] [--clients 8] [--tokens 64] [--cpu-dtype D]
                                      [--memory-requests 200] [--skip-mlx-lm] [--json FILE]

Each server runs in its own process on the same weights (a GGUF converted for mlx-lm without
re-quantizing; with `--cpu-dtype float32` both dequantize to float32 and load the system
OpenBLAS, mlx-lm through a launcher that loads it before `mlx` is imported). The same clients
send streaming greedy text completions of prose prompts, `--tokens` tokens each: N at once
(aggregate tokens/s, median and worst time to first token), then the same N one after another.
For ours also: a chat's second turn after a ~500-token history (time to first token, and the
tokens the prompt cache served), and the server's resident memory over `--memory-requests`
requests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.append(str(Path(__file__).resolve().parents[1]))  # when not installed
from entropix_mlx import cpu_blas  # noqa: E402
from entropix_mlx.bench.machine import machine_info  # noqa: E402
from entropix_mlx.bench.same_weights import mlx_lm_folder  # noqa: E402
from entropix_mlx.bench.text import PARAGRAPHS  # noqa: E402
from entropix_mlx.loading import DEFAULT_MODEL  # noqa: E402
from entropix_mlx.loading.cpu_weights import dequantize_model  # noqa: E402

MLX_LM_LAUNCHER = (
    "import ctypes, sys; path = sys.argv.pop(1); "
    "path and ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL); "
    "from mlx_lm.server import main; main()"
)


def start(command, port, log_path):
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited early; see {log_path}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit(f"server did not start; see {log_path}")


def stream_completion(url, model, prompt, tokens, extra):
    """(time to first token, seconds, tokens) of one streaming completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "stream": True,
        "temperature": 0.0,
        **extra,
    }
    tic, first, count = time.perf_counter(), None, 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                first = first or time.perf_counter()
                count += 1
    return {
        "ttft": (first or time.perf_counter()) - tic,
        "seconds": time.perf_counter() - tic,
        "tokens": count,
    }


def concurrent(url, model, prompts, tokens, extra):
    results = [None] * len(prompts)

    def client(i):
        results[i] = stream_completion(url, model, prompts[i], tokens, extra)

    tic = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(results, time.perf_counter() - tic)


def sequential(url, model, prompts, tokens, extra):
    tic = time.perf_counter()
    results = [stream_completion(url, model, p, tokens, extra) for p in prompts]
    return summary(results, time.perf_counter() - tic)


def summary(results, wall):
    ttfts = [r["ttft"] for r in results]
    total = sum(r["tokens"] for r in results)
    return {
        "wall_s": wall,
        "tokens": total,
        "aggregate_tok_s": total / wall,
        "ttft_median_s": statistics.median(ttfts),
        "ttft_worst_s": max(ttfts),
        "runs": results,
    }


def second_turn(url, model):
    """Time to first token of a ~500-token chat's first and second turns, and the cached tokens."""
    history = [
        {"role": "user", "content": " ".join(PARAGRAPHS)[:2400] + "\n\nSummarize this in one line."}
    ]

    def turn(messages):
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": 16,
            "stream": True,
            "sampler": "greedy",
            "stream_options": {"include_usage": True},
        }
        tic, first, text, usage = time.perf_counter(), None, [], None
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    if choice["delta"].get("content"):
                        first = first or time.perf_counter()
                        text.append(choice["delta"]["content"])
        return (first or time.perf_counter()) - tic, "".join(text), usage

    ttft1, answer, usage1 = turn(history)
    history += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Shorter, please."},
    ]
    ttft2, _, usage2 = turn(history)
    return {
        "first_ttft_s": ttft1,
        "second_ttft_s": ttft2,
        "ratio": ttft2 / ttft1,
        "first_prompt_tokens": usage1["prompt_tokens"],
        "second_prompt_tokens": usage2["prompt_tokens"],
        "second_cached_tokens": usage2["prompt_tokens_details"]["cached_tokens"],
    }


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_curve(url, model, pid, requests, clients):
    curve = [(0, rss_mb(pid))]
    prompts = [p[:200] for p in PARAGRAPHS]
    for start_at in range(0, requests, clients):
        concurrent(
            url,
            model,
            [prompts[(start_at + i) % len(prompts)] for i in range(clients)],
            4,
            {"sampler": "greedy"},
        )
        curve.append((start_at + clients, rss_mb(pid)))
    return curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--cpu-dtype", default=None, help="passed to `entropix-mlx serve` (when supported)"
    )
    parser.add_argument("--memory-requests", type=int, default=200)
    parser.add_argument("--skip-mlx-lm", action="store_true")
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args(argv)
    prompts = [p[:300] for p in PARAGRAPHS[: opts.clients]]
    report = {"machine": machine_info(), "settings": vars(opts) | {"json": str(opts.json)}}

    ours = [
        sys.executable,
        "-m",
        "entropix_mlx",
        "serve",
        "--model",
        opts.model,
        "--port",
        "8901",
        "--max-concurrency",
        str(opts.clients),
        "--max-tokens-limit",
        str(max(opts.tokens, 64)),
    ]
    if opts.cpu_dtype:
        ours += ["--cpu-dtype", opts.cpu_dtype]
    process, url = start(ours, 8901, "/tmp/bench_server_ours.log")
    try:
        greedy = {"sampler": "greedy"}
        stream_completion(url, "default", prompts[0], 4, greedy)  # warm-up
        report["ours"] = {
            "concurrent": concurrent(url, "default", prompts, opts.tokens, greedy),
            "sequential": sequential(url, "default", prompts, opts.tokens, greedy),
            "second_turn": second_turn(url, "default"),
            "memory_mb": memory_curve(
                url, "default", process.pid, opts.memory_requests, opts.clients
            ),
        }
        print_rows("entropix-mlx", report["ours"])
    finally:
        process.terminate()
        process.wait()
    if not opts.skip_mlx_lm:
        folder = str(mlx_lm_folder(opts.model))
        if opts.cpu_dtype == "float32":
            folder = float32_folder(folder)
        blas = openblas_path() if opts.cpu_dtype == "float32" else ""
        theirs = [
            sys.executable,
            "-c",
            MLX_LM_LAUNCHER,
            blas,
            "--model",
            folder,
            "--port",
            "8902",
            "--decode-concurrency",
            str(opts.clients),
            "--max-tokens",
            str(opts.tokens),
        ]
        process, url = start(theirs, 8902, "/tmp/bench_server_mlx_lm.log")
        try:
            stream_completion(url, folder, prompts[0], 4, {})
            report["mlx_lm"] = {
                "concurrent": concurrent(url, folder, prompts, opts.tokens, {}),
                "sequential": sequential(url, folder, prompts, opts.tokens, {}),
            }
            print_rows("mlx_lm.server", report["mlx_lm"])
        finally:
            process.terminate()
            process.wait()
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")


def float32_folder(folder: str) -> str:
    """A copy of the mlx-lm folder with its weights dequantized to float32 (by the same function
    our CPU policy uses), made once beside it."""
    import mlx_lm
    from mlx_lm.utils import save

    target = Path(folder + "-float32")
    if not (target / "config.json").is_file():
        model, tokenizer, config = mlx_lm.load(folder, return_config=True)
        dequantize_model(model)
        config = {
            k: v for k, v in config.items() if k not in ("quantization", "quantization_config")
        }
        partial = target.with_name(target.name + ".part")  # renamed whole: never half a copy
        shutil.rmtree(partial, ignore_errors=True)
        save(partial, folder, model, tokenizer, config)
        partial.rename(target)
    return str(target)


def openblas_path() -> str:
    return cpu_blas.find_openblas() or ""


def print_rows(name, result):
    for mode in ("concurrent", "sequential"):
        r = result[mode]
        print(
            f"{name:<14} {mode:<10} {r['aggregate_tok_s']:7.2f} tok/s  TTFT median {r['ttft_median_s']:6.2f} s  "
            f"worst {r['ttft_worst_s']:6.2f} s  ({r['tokens']} tokens in {r['wall_s']:.1f} s)",
            flush=True,
        )
    if "second_turn" in result:
        t = result["second_turn"]
        print(
            f"{name:<14} chat turn 2 TTFT {t['second_ttft_s']:.2f} s vs turn 1 {t['first_ttft_s']:.2f} s "
            f"({t['ratio']:.2f}x; {t['second_cached_tokens']} of {t['second_prompt_tokens']} prompt tokens cached)"
        )
        print(f"{name:<14} RSS MB over requests: {result['memory_mb']}")


if __name__ == "__main__":
    main()
