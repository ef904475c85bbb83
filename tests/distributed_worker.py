"""One rank of the 2-rank parity test (run under `mlx.launch`, or alone for the reference).

`python distributed_worker.py MODEL OUT_DIR MAX_TOKENS [PAUSE_TOKEN]` writes `rank<r>.json`:
greedy and Entropix tokens, strategies and metrics of a fixed prompt, the final layer's
attention scores of the prompt, and this rank's memory.
"""

import json
import resource
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from entropix_mlx.distributed import world
from entropix_mlx.generate import stream_generate
from entropix_mlx.loading import ModelLoadError, load
from entropix_mlx.sampling import SamplerConfig

PROMPT_IDS = [1, 40, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 2, 1, 50]


def run(model, tokenizer, sampler: str, max_tokens: int, config: SamplerConfig) -> dict:
    responses = list(
        stream_generate(
            model,
            tokenizer,
            PROMPT_IDS,
            sampler=sampler,
            config=config,
            max_tokens=max_tokens,
            seed=7,
        )
    )
    return {
        "tokens": [r.token for r in responses],
        "strategies": [r.strategy for r in responses],
        "metrics": [r.metrics for r in responses],
    }


def main(model_path: str, out_dir: str, max_tokens: int, pause_token: str = "..."):
    group = world()
    out = Path(out_dir) / f"rank{group.rank()}.json"
    try:
        model, tokenizer, _ = load(model_path)
    except ModelLoadError as e:
        out.write_text(json.dumps({"error": str(e)}))
        return
    layers = [layer.parameters() for layer in model.layers]
    layer_bytes = sum(v.nbytes for _, v in tree_flatten(layers))
    all_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    memory = {
        "layer_bytes": layer_bytes,
        "weight_bytes": all_bytes,
        "active_bytes": mx.get_active_memory(),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    _, scores = model(mx.array([PROMPT_IDS]), return_scores=True)  # all heads, in head order
    config = SamplerConfig(pause_token=pause_token)
    result = {s: run(model, tokenizer, s, max_tokens, config) for s in ("greedy", "entropix")}
    result["scores"] = scores.tolist()
    out.write_text(json.dumps({"size": group.size(), "memory": memory, **result}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
