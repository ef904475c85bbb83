"""First use versus warm: one contender decoding in a fresh process with an empty MLX compile cache.

MLX's CPU backend compiles each `mx.compile`d graph to a shared library per input shape and
keeps it under `$TMPDIR/mlx`; a sampler that recompiles as the context grows is slow only on
first use. The parent starts `python -m entropix_mlx.bench.cold_compile SETTINGS_JSON` with a
fresh `TMPDIR` (MLX reads it when it starts), and the child prints one JSON object.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import BenchError

MODULE = "entropix_mlx.bench.cold_compile"


def compiled_libraries() -> int:
    """How many compiled kernels MLX has written under this process's `$TMPDIR/mlx`."""
    return sum(1 for _ in (Path(tempfile.gettempdir()) / "mlx").rglob("*.so"))


def measure_cold_compile(
    engine: str,
    sampler: str,
    model: str,
    pause_token,
    prompt_length: int,
    gen_tokens: int,
    cpu_dtype: str = "auto",
    weights: str = "",
) -> dict:
    """Run one contender cold, then warm, in a child process with an empty compile cache.

    `cpu_dtype` is ours (load's argument); `weights` is mlx-lm's (contenders.FLOAT32 or "")."""
    settings = dict(
        engine=engine,
        sampler=sampler,
        model=model,
        pause_token=pause_token,
        prompt_length=prompt_length,
        gen_tokens=gen_tokens,
        cpu_dtype=cpu_dtype,
        weights=weights,
    )
    with empty_compile_cache() as env:
        args = [sys.executable, "-m", MODULE, json.dumps(settings)]
        return json_child(args, env, f"the cold-compile run of {engine} {sampler}")


@contextmanager
def empty_compile_cache() -> Iterator[dict]:
    """An environment for child processes whose MLX compile cache starts empty (and is shared
    by every child started with it, so a second run finds what the first compiled)."""
    with tempfile.TemporaryDirectory(prefix="entropix-bench-cold-") as fresh:
        yield {**os.environ, "TMPDIR": fresh}


def json_child(args: Sequence[str], env: dict, what: str) -> dict:
    """Run a child process that prints one JSON object last; that object."""
    child = subprocess.run(args, env=env, capture_output=True, text=True)
    lines = child.stdout.strip().splitlines()
    if child.returncode or not lines:
        detail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{what} failed: {detail}")
    return json.loads(lines[-1])


def _child(settings: dict) -> dict:
    from .contenders import MLX_LM, mlx_lm_contenders, our_contenders
    from .measure import measure_generation
    from .text import benchmark_prompt

    model = settings["model"]
    ours, tokenizer, _ = our_contenders(
        model, settings["pause_token"], cpu_dtype=settings["cpu_dtype"]
    )
    theirs = settings["engine"] == MLX_LM
    contenders = mlx_lm_contenders(model, weights=settings["weights"]) if theirs else ours
    contender = next(c for c in contenders if c.sampler == settings["sampler"])
    prompt = benchmark_prompt(tokenizer, settings["prompt_length"])
    result = {"compiled_before": compiled_libraries()}
    for phase in ("cold", "warm"):
        figures = measure_generation(
            contender.run(prompt, settings["gen_tokens"]), len(prompt), contender.weights_bytes
        )
        result[phase] = dataclasses.asdict(figures)
        result[f"compiled_after_{phase}"] = compiled_libraries()
    return result


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
