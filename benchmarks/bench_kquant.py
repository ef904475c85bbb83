"""K-quant GGUFs: load time, resident memory and decode speed against the same model in Q4_0.

    python benchmarks/bench_kquant.py [FILE.gguf ...] [--tokens 64] [--repeats 3] [--cpu-dtype D]

Default files: the llama.cpp K-quant fixtures in ../shared/testdata/kquant/. Each file's
weights are dequantized (gguf-py's reference) and written again with every matrix in Q4_0, the
rest as it was, into a temporary GGUF: the same model in the layout every loader knows. Both
files are loaded in fresh processes (time, and the growth of peak resident memory across
`load`, from /proc/self/status) and decode greedily in alternating runs; figures are medians.
`--cpu-dtype` is `load`'s: `quantized` (default) runs the kernels the file's types map to, as
a Mac's GPU does; `auto` is what Linux runs by default (float32 on OpenBLAS).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # when not installed
from entropix_mlx.loading import CPU_DTYPES  # noqa: E402

FIXTURES = REPO.parent / "shared" / "testdata" / "kquant"

MEASURE = r"""
import json, sys, time
import entropix_mlx  # OpenBLAS first, as a user gets it
import mlx.core as mx
from entropix_mlx.engine.decode import generate_step
from entropix_mlx.loading import load
def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key))
    return int(line.split()[1])
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # peak resident memory counts from here
tic = time.perf_counter()
model, tokenizer, info = load(sys.argv[1], cpu_dtype=sys.argv[3])
load_s = time.perf_counter() - tic
added_kb = status("VmHWM:") - before
prompt = mx.array(tokenizer.encode("The capital of France is Paris. The capital of Germany is"))
n = int(sys.argv[2])
list(generate_step(prompt, model, max_tokens=4))  # warm-up
tic = time.perf_counter()
steps = list(generate_step(prompt, model, max_tokens=n))
print(json.dumps({"load_s": load_s, "rss_added_mib": added_kb / 1024, "decode_tok_s": len(steps) / (time.perf_counter() - tic)}))
"""


def write_q4_0_twin(source: Path, target: Path):
    """`source`'s model with every matrix re-quantized to Q4_0 from its exact dequantization."""
    import gguf
    from gguf.quants import dequantize, quantize

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(target), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(field.name, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(field.name, field.contents(), kind)
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        weights = weights.reshape([int(d) for d in reversed(tensor.shape)])
        if weights.ndim == 2 and weights.shape[-1] % 32 == 0:
            q = gguf.GGMLQuantizationType.Q4_0
            writer.add_tensor(tensor.name, quantize(weights, q), raw_dtype=q)
        else:
            writer.add_tensor(tensor.name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def measure(path: Path, tokens: int, cpu_dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(tokens), cpu_dtype],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-dtype", choices=CPU_DTYPES, default="quantized")
    opts = parser.parse_args(argv)
    files = opts.files or sorted(FIXTURES.glob("*.gguf"))
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            twin = Path(tmp) / f"{path.stem}.Q4_0-twin.gguf"
            write_q4_0_twin(path, twin)
            runs = {path: [], twin: []}
            for _ in range(opts.repeats):
                for p in runs:
                    runs[p].append(measure(p, opts.tokens, opts.cpu_dtype))
            rows = {
                p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in runs.items()
            }
            mine, base = rows[path], rows[twin]
            print(
                f"{path.name} ({path.stat().st_size / 2**20:.1f} MiB): load {mine['load_s']:.2f} s, "
                f"+{mine['rss_added_mib']:.0f} MiB resident, decode {mine['decode_tok_s']:.1f} tok/s "
                f"= {mine['decode_tok_s'] / base['decode_tok_s']:.2f}x the Q4_0 twin "
                f"({twin.stat().st_size / 2**20:.1f} MiB: load {base['load_s']:.2f} s, "
                f"+{base['rss_added_mib']:.0f} MiB, {base['decode_tok_s']:.1f} tok/s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
