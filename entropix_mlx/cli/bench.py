"""bench: entropix-mlx against mlx-lm on the same weights."""

import json
from pathlib import Path

import click

from .options import MODEL_HELP, cpu_dtype_option, model_option, model_path
from .output import check_output_file, echo_err, utf8_option, write_output


def parse_prompt_lengths(ctx, param, value):
    try:
        lengths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        lengths = ()
    if not lengths or min(lengths) < 1:
        raise click.BadParameter(
            f"expected positive token counts separated by commas (e.g. 64,512), got {value!r}"
        )
    return lengths


@click.command()
@model_option(MODEL_HELP + "; mlx-lm runs the same weights.")
@click.option(
    "--prompt-lengths",
    default="64,512,2048",
    show_default=True,
    callback=parse_prompt_lengths,
    help="Prompt lengths in tokens, comma-separated.",
)
@click.option(
    "--gen-tokens",
    type=click.IntRange(min=2),
    default=128,
    show_default=True,
    help="Tokens generated per run (never stopped early at EOS).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Timed runs per row, interleaved across rows; figures are medians.",
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the report as JSON (schema in entropix_mlx/bench/__init__.py).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Smoke test: one 32-token prompt, 8 tokens, 1 repeat (flags you give still win).",
)
@click.option(
    "--pause-token",
    callback=utf8_option,
    help="Text of Entropix's pause token (default: the model's preset).",
)
@click.option(
    "--no-cold", is_flag=True, help="Skip the first-use runs with an empty MLX compile cache."
)
@cpu_dtype_option
@click.pass_context
def bench(
    ctx,
    model,
    prompt_lengths,
    gen_tokens,
    repeats,
    json_file,
    quick,
    pause_token,
    no_cold,
    cpu_dtype,
):
    """Benchmark entropix-mlx against mlx-lm on the same weights: speed, memory, sampler cost."""
    from ..bench import BenchSettings, format_report, run_benchmark

    given = {"prompt_lengths": prompt_lengths, "gen_tokens": gen_tokens, "repeats": repeats}
    if quick:
        given = {
            k: v
            for k, v in given.items()
            if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT
        }
    if json_file:
        check_output_file(json_file, "--json", [("the model", model_path(model))])
    make = BenchSettings.quick if quick else BenchSettings
    settings = make(
        model=model, pause_token=pause_token, cold_compile=not no_cold, cpu_dtype=cpu_dtype, **given
    )
    result = run_benchmark(settings, log=echo_err)
    click.echo(format_report(result))
    if json_file:
        write_output(json_file, json.dumps(result, indent=2) + "\n", "--json")
        echo_err(f"Wrote {json_file}")
