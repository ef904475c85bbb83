"""Decode speed, memory and traffic per rank of the tensor-parallel Llama (entropix_mlx.distributed).

    python benchmarks/bench_distributed.py MODEL [--tokens 32]            # one process
    mlx.launch --backend ring --hosts 127.0.0.1 -n 2 --python $(which python) \\
        benchmarks/bench_distributed.py MODEL [--tokens 32]               # two ranks

Rank 0 prints one JSON line. Decode runs the Entropix sampler (so the final layer's scores are
gathered every token). `sent_bytes_per_token` is what this rank sent during decode (TCP
bytes_sent of its sockets, from `ss`); `payload_bytes_per_token` is the same computed from the
shapes: per layer two all_sums of the hidden state, the scores gather, the token broadcast.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

sys.path.append(str(Path(__file__).resolve().parents[1]))  # when not installed
from entropix_mlx.distributed import world  # noqa: E402
from entropix_mlx.generate import stream_generate  # noqa: E402
from entropix_mlx.loading import load  # noqa: E402
from entropix_mlx.sampling import SamplerConfig  # noqa: E402

PROMPT_IDS = list(range(40, 104))  # 64 tokens


def sent_bytes() -> int:
    """Bytes this process has sent over its TCP sockets (`ss -tip`: bytes_sent), 0 if unknown."""
    try:
        listing = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True).stdout
    except OSError:
        return 0
    total, mine = 0, False
    for line in listing.splitlines():
        if not line.startswith((" ", "\t")):  # a socket line; its details follow, indented
            mine = f"pid={os.getpid()}," in line
        elif mine and (found := re.search(r"bytes_sent:(\d+)", line)):
            total += int(found.group(1))
    return total


def payload_bytes_per_token(model, context: int, ranks: int) -> int:
    """Bytes one rank sends per decoded token by the shapes, as a ring moves them: an all_sum
    sends 2(N-1)/N of its buffer, an all_gather (N-1)/N of the gathered result."""
    args = model.args
    layer = model.layers[0]
    hidden = layer.input_layernorm(model.model.embed_tokens(mx.array([[0]])))
    all_sums = 2 * args.num_hidden_layers * args.hidden_size * hidden.dtype.size + 4  # + token
    scores = args.num_attention_heads * context * 4  # float32 [1, H, L], all heads gathered
    return round((2 * all_sums + scores) * (ranks - 1) / ranks)


def main(model_name: str, tokens: int):
    group = world()
    model, tokenizer, _ = load(model_name)
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    config = SamplerConfig(pause_token_id=0)
    steps = stream_generate(
        model, tokenizer, PROMPT_IDS, config=config, max_tokens=tokens + 1, seed=0
    )
    next(steps)  # prefill and the first token
    start_bytes, tic = sent_bytes(), time.perf_counter()
    n = sum(1 for _ in steps)
    seconds = time.perf_counter() - tic
    sent = (sent_bytes() - start_bytes) / n
    if group.rank() == 0:
        print(
            json.dumps(
                {
                    "model": model_name,
                    "ranks": group.size(),
                    "decode_tokens": n,
                    "decode_tps": round(n / seconds, 2),
                    "weight_bytes_per_rank": weights,
                    "active_bytes_per_rank": mx.get_active_memory(),
                    "maxrss_mb_per_rank": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                    ),
                    "sent_bytes_per_token": round(sent),
                    "payload_bytes_per_token": payload_bytes_per_token(
                        model, len(PROMPT_IDS) + tokens // 2, group.size()
                    ),
                }
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=32)
    options = parser.parse_args()
    main(options.model, options.tokens)
