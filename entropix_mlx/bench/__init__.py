"""`entropix-mlx bench`: entropix-mlx against mlx-lm on the same weights, in one process.

Rows: mlx-lm greedy and sampled (`make_sampler(temp=0.666, top_p=0.9, top_k=27)`); ours
greedy, standard (the same settings, min_p 0) and entropix (the model's preset). Where the CPU
weight policy runs ours on float32 weights, labels carry "float32" and mlx-lm also runs on the
same float32 weights (its rows on the stored weights stay, as the reference). Each row is
run at every prompt length over the same real-text prompt, for a fixed number of generated
tokens (never stopped at EOS), after a warm-up, with the rows interleaved in every repeat.

JSON report (`schema` "entropix-mlx-bench/2"; every number is measured in the same run; /1 also
had `goals`, now checked by benchmarks/bench_goals.py):
  schema, created (UTC, ISO 8601)
  machine     os, os_release, platform, arch, cpu, cpu_count, python, mlx, mlx_lm,
              entropix_mlx, device (mx.default_device()), cpu_blas (cpu_blas.STATUS.detail),
              load_average_start/_end
  settings    model, prompt_lengths, gen_tokens, repeats, sampler_iterations, pause_token,
              cold_compile, cpu_dtype, model_path, mlx_lm_folder, quantization, weight_dtype
              (what ours ran: "float32" where the CPU policy dequantized), sampled_settings,
              entropix_settings, prefill_step_size {engine: tokens}, seed, contenders, timing
  rows[]      prompt_tokens, engine ("mlx-lm" | "entropix-mlx"), sampler, label,
              baseline (label of the matching mlx-lm row on the same weights, null for mlx-lm's),
              reference (ours on float32 weights: the mlx-lm row on the stored weights, else null),
              figures {name: {median, min, max, samples[]}} for
                prefill_tps      prompt tokens / time to first token
                decode_tps       (gen_tokens - 1) / (time of last token - time of first)
                ttft_s           time to first token (prefill + first sampling step)
                peak_memory_mb   weights + working_memory_mb
                working_memory_mb  peak active MLX memory in the run - active before it
                prefill_cpu_ms   process CPU time (all threads) per prompt token, to the
                                 first token; steadier than wall time on a busy machine
                decode_cpu_ms    process CPU time per decoded token after the first
                sampler_step_us  one sampler call alone on [1, vocab] logits (entropix:
                                 with [1, heads, prompt + gen/2] scores), median of calls
              sampler_share      sampler_step_us / one decode step (median figures)
              ratios {name: ours median / baseline median} ({} for mlx-lm's rows)
              reference_ratios {name: ours median / reference median} ({} without a reference)
  cold_compile  null with --no-cold, else prompt_tokens, gen_tokens,
              runs[] {engine, sampler, cold, warm (prefill_tps, decode_tps, ttft_s,
                      peak_memory_mb, working_memory_mb, prefill_cpu_ms, decode_cpu_ms),
                      compiled_before,
                      compiled_after_cold, compiled_after_warm (kernel libraries in the
                      fresh $TMPDIR/mlx), cold_over_warm_decode},
              entropix_over_mlx_lm_cold_decode
"""

from ..errors import BenchError
from .runner import SCHEMA, BenchSettings, run_benchmark
from .table import format_report

__all__ = ["BenchError", "BenchSettings", "SCHEMA", "format_report", "run_benchmark"]
