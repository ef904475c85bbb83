"""The benchmark run: load both engines, warm up, interleave the repeats, then the cold runs."""

import dataclasses
import inspect
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Tuple

import mlx.core as mx

from ..engine.decode import default_prefill_step_size
from ..errors import BenchError
from ..loading import DEFAULT_MODEL
from .cold_compile import measure_cold_compile
from .contenders import (
    MLX_LM,
    OURS,
    SAMPLED,
    SEED,
    Contender,
    entropix_config,
    mlx_lm_contenders,
    our_contenders,
)
from .machine import load_average, machine_info
from .measure import measure_generation, measure_step_us
from .report import FIGURES, build_rows, cold_compile_section
from .same_weights import mlx_lm_folder
from .text import benchmark_prompt

SCHEMA = "entropix-mlx-bench/2"
COLD_CONTENDERS = ((MLX_LM, "sampled"), (OURS, "entropix"))
WARMUP_PROMPT, WARMUP_TOKENS = 32, 8


@dataclass(frozen=True)
class BenchSettings:
    """What to run; the defaults are the full benchmark."""

    model: str = DEFAULT_MODEL
    prompt_lengths: Tuple[int, ...] = (64, 512, 2048)
    gen_tokens: int = 128
    repeats: int = 3
    sampler_iterations: int = 30  # sampler calls timed per row and repeat
    pause_token: Optional[str] = None  # text; default: the model's preset
    cold_compile: bool = True
    cpu_dtype: str = "auto"  # our weights on the CPU backend (load's cpu_dtype)

    @classmethod
    def quick(cls, **overrides) -> "BenchSettings":
        """One short prompt, a few tokens, one repeat: a smoke test, not a measurement."""
        return cls(
            **{
                "prompt_lengths": (32,),
                "gen_tokens": 8,
                "repeats": 1,
                "sampler_iterations": 5,
                **overrides,
            }
        )

    def check(self, context_length: Optional[int] = None):
        if not self.prompt_lengths or min(self.prompt_lengths) < 1:
            raise BenchError(f"prompt lengths must be >= 1 token, got {list(self.prompt_lengths)}")
        if self.gen_tokens < 2:
            raise BenchError(
                f"gen_tokens must be >= 2 (decode speed needs two tokens), got {self.gen_tokens}"
            )
        if self.repeats < 1 or self.sampler_iterations < 1:
            raise BenchError(
                f"repeats and sampler_iterations must be >= 1, got {self.repeats}, {self.sampler_iterations}"
            )
        longest = max(self.prompt_lengths) + self.gen_tokens
        if context_length and longest > context_length:
            raise BenchError(
                f"prompt length {max(self.prompt_lengths)} + {self.gen_tokens} generated tokens exceeds the "
                f"model's context window ({context_length}); choose shorter --prompt-lengths"
            )


def run_benchmark(
    settings: BenchSettings, log: Callable[[str], None] = lambda msg: None, progress: bool = True
) -> dict:
    """Measure every contender at every prompt length; the report as a JSON-ready dict."""
    settings.check()
    machine = machine_info()
    ours, tokenizer, info = our_contenders(
        settings.model, settings.pause_token, log, settings.cpu_dtype
    )
    settings.check(info.context_length)
    prompts = {n: benchmark_prompt(tokenizer, n) for n in settings.prompt_lengths}
    contenders = mlx_lm_contenders(settings.model, log)
    if ours[0].weights:  # ours runs dequantized weights: mlx-lm on the same ones too
        contenders += mlx_lm_contenders(settings.model, log, ours[0].weights)
    contenders += ours

    cold_runs = len(COLD_CONTENDERS) if settings.cold_compile else 0
    total = len(contenders) * (1 + len(prompts) * settings.repeats) + cold_runs
    with _progress_bar(total, progress) as bar:
        warm_up(contenders, prompts, settings, bar)
        samples = collect(contenders, prompts, settings, bar)
        cold = None
        if settings.cold_compile:
            cold = cold_compile_runs(settings, min(prompts), ours[0].weights, bar)
    machine["load_average_end"] = load_average()

    rows = build_rows(samples, contenders, settings.prompt_lengths)
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings_record(settings, info, contenders),
        "rows": rows,
        "cold_compile": cold,
    }


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="run", disable=not enabled, dynamic_ncols=True, leave=False)


def warm_up(contenders: List[Contender], prompts: Dict[int, list], settings: BenchSettings, bar):
    """One short untimed run and sampler call each: compiled graphs and allocator warm."""
    prompt = prompts[min(prompts)][:WARMUP_PROMPT]
    for c in contenders:
        bar.set_description(f"warm-up: {c.label}")
        for _ in c.run(prompt, min(settings.gen_tokens, WARMUP_TOKENS)):
            pass
        mx.synchronize()
        mx.eval(c.sampler_step(len(prompt))())
        bar.update()


def collect(contenders: List[Contender], prompts: Dict[int, list], settings: BenchSettings, bar):
    """samples[prompt length, label][figure] -> one value per repeat, contenders interleaved."""
    samples = defaultdict(lambda: defaultdict(list))
    for length, prompt in prompts.items():
        for repeat in range(settings.repeats):
            # Rotate the order each repeat so no contender always runs first or last.
            shift = repeat % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                bar.set_description(f"{length} tok, {repeat + 1}/{settings.repeats}: {c.label}")
                figures = measure_generation(
                    c.run(prompt, settings.gen_tokens), length, c.weights_bytes
                )
                record = dataclasses.asdict(figures)
                # The sampler on the attention length of the middle of the decode.
                step = c.sampler_step(length + settings.gen_tokens // 2)
                record["sampler_step_us"] = measure_step_us(step, settings.sampler_iterations)
                for name in FIGURES:
                    samples[length, c.label][name].append(record[name])
                bar.update()
    return samples


def cold_compile_runs(settings: BenchSettings, prompt_length: int, weights: str, bar) -> dict:
    runs = []
    for engine, sampler in COLD_CONTENDERS:
        bar.set_description(f"cold compile cache: {engine} {sampler}")
        result = measure_cold_compile(
            engine,
            sampler,
            settings.model,
            settings.pause_token,
            prompt_length,
            settings.gen_tokens,
            settings.cpu_dtype,
            weights,
        )
        runs.append({"engine": engine, "sampler": sampler, **result})
        bar.update()
    return cold_compile_section(runs, prompt_length, settings.gen_tokens)


def mlx_lm_prefill_step_size() -> int:
    from mlx_lm.generate import generate_step

    return inspect.signature(generate_step).parameters["prefill_step_size"].default


def settings_record(settings: BenchSettings, info, contenders: List[Contender]) -> dict:
    record = dataclasses.asdict(settings)
    record["prompt_lengths"] = list(settings.prompt_lengths)
    record.update(
        model_path=str(info.path),
        mlx_lm_folder=str(mlx_lm_folder(settings.model)),
        quantization=info.quantization,
        weight_dtype=info.weight_dtype,
        sampled_settings={**SAMPLED, "min_p": 0.0},
        entropix_settings=entropix_config(info.sampler_preset, settings.pause_token).to_dict(),
        prefill_step_size={MLX_LM: mlx_lm_prefill_step_size(), OURS: default_prefill_step_size()},
        seed=SEED,
        contenders=[c.label for c in contenders],
        timing="prefill_tps = prompt tokens / TTFT; decode_tps = (gen_tokens - 1) / (last token - first token)",
    )
    return record
