"""calibrate: the sampler's thresholds fitted to a model (a strategy mix, or accuracy)."""

from pathlib import Path

import click

from .options import BATCH_ROWS, load_model, model_option, model_path, sampler_config
from .output import check_output_file, echo_err, utf8_option, write_output


@click.command()
@model_option()
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The preset TOML file to write.",
)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A text file, one prompt per line (default: 20 built-in prompts).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    help="Tokens generated per prompt (default: 48 for mix, 96 for writing).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--target",
    callback=utf8_option,
    help="Target mix in percent, e.g. 'argmax=40,pause=2,branch=10,resample=5' "
    "(adaptive takes the rest; default as shown).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A TOML file of base settings (temp, top_p, ...) to generate with.",
)
@click.option(
    "--pause-token",
    callback=utf8_option,
    help="Text of the pause token to write into the preset (default: the model's).",
)
@click.option(
    "--objective",
    type=click.Choice(["mix", "accuracy", "writing"]),
    default="mix",
    show_default=True,
    help="mix: match a target strategy mix; accuracy: the best of a grid on dev items; "
    "writing: the fewest loops on dev writing prompts, keeping arithmetic and junk.",
)
@click.option(
    "--task",
    type=click.Choice(["arith"]),
    default="arith",
    show_default=True,
    help="Dev items for --objective accuracy and writing (arithmetic, seed 1; eval uses seed 0).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=90,
    show_default=True,
    help="Dev arithmetic items for --objective accuracy and writing.",
)
@click.option(
    "--writing-prompts",
    type=click.IntRange(min=1),
    default=48,
    show_default=True,
    help="--objective writing: the first N dev writing prompts.",
)
@click.option(
    "--seeds",
    "dev_seeds",
    default="0",
    show_default=True,
    help="Sampling seeds for --objective accuracy and writing, comma-separated.",
)
@click.option(
    "--branching", is_flag=True, help="--objective accuracy: also search look-ahead branching."
)
@click.option(
    "--batch-size",
    type=BATCH_ROWS,
    default=16,
    show_default=True,
    help="--objective accuracy and writing: answers decoded together.",
)
def calibrate(
    model,
    output,
    prompts_file,
    max_tokens,
    seed,
    target,
    config_file,
    pause_token,
    objective,
    task,
    limit,
    writing_prompts,
    dev_seeds,
    branching,
    batch_size,
):
    """Fit the sampler's thresholds to a model: match a strategy mix, or tune for accuracy."""
    from .. import calibrate as calibration

    inputs = [("the model", model_path(model)), ("--prompts", prompts_file)]
    check_output_file(output, "--output", inputs + [("--config", config_file)])
    if objective == "accuracy":
        tune_for_accuracy(
            model, output, config_file, pause_token, limit, dev_seeds, branching, batch_size
        )
        return
    if objective == "writing":
        tune_for_writing(
            model,
            output,
            config_file,
            pause_token,
            limit,
            writing_prompts,
            max_tokens or 96,
            dev_seeds,
            batch_size,
        )
        return
    max_tokens = max_tokens or 48
    try:
        prompts = (
            calibration.read_prompts(prompts_file) if prompts_file else calibration.DEFAULT_PROMPTS
        )
        target_mix = calibration.parse_target(target) if target else calibration.TARGET_MIX
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"cannot read --prompts {prompts_file}: {e}") from None
    loaded, tokenizer, info = load_model(model)
    config = sampler_config(info.sampler_preset, config_file, {"pause_token": pause_token})
    fit_n, held_n = map(len, calibration.split_prompts(prompts))
    echo_err(
        f"Calibrating {model} on {fit_n} prompts, checking on {held_n}, up to {max_tokens} tokens each"
    )
    result = calibration.calibrate(
        loaded,
        tokenizer,
        prompts,
        max_tokens=max_tokens,
        seed=seed,
        config=config,
        target=target_mix,
    )
    source = (
        f"the prompts in {Path(prompts_file).name}" if prompts_file else "the built-in prompt set"
    )
    write_output(output, calibration.mix_preset_toml(result, model, source), "--output")
    click.echo(calibration.format_mix_table(result))
    thresholds = "  ".join(f"{name} {value:.4g}" for name, value in result.thresholds.items())
    click.echo(f"\nThresholds: {thresholds}\nWrote {output}")


def tune_for_accuracy(
    model, output, config_file, pause_token, limit, dev_seeds, branching, batch_size
):
    from ..evaluation import parse_seeds, tuning

    seeds = parse_seeds(dev_seeds)
    loaded, tokenizer, info = load_model(model)
    base = sampler_config(info.sampler_preset, config_file, {"pause_token": pause_token})
    chosen, tried = tuning.tune(
        loaded,
        tokenizer,
        base,
        items=limit,
        seeds=seeds,
        batch_size=batch_size,
        branching=branching,
        log=echo_err,
    )
    source = f"{Path(config_file).name}" if config_file else "the model's preset"
    write_output(
        output, tuning.accuracy_preset_toml(chosen, tried, model, source, limit, seeds), "--output"
    )
    click.echo(tuning.format_candidates(tried, chosen))
    click.echo(f"\nWrote {output}")


def tune_for_writing(
    model, output, config_file, pause_token, limit, prompts, max_tokens, dev_seeds, batch_size
):
    from ..evaluation import parse_seeds, writing_tuning
    from ..evaluation.text_metrics import require_wordfreq

    require_wordfreq()
    seeds = parse_seeds(dev_seeds)
    loaded, tokenizer, info = load_model(model)
    base = sampler_config(info.sampler_preset, config_file, {"pause_token": pause_token})
    chosen, tried, baselines, greedy = writing_tuning.tune_writing(
        loaded,
        tokenizer,
        base,
        items=limit,
        prompts=prompts,
        max_tokens=max_tokens,
        seeds=seeds,
        batch_size=batch_size,
        log=echo_err,
    )
    source = f"{Path(config_file).name}" if config_file else "the model's preset"
    toml = writing_tuning.writing_preset_toml(
        chosen, tried, baselines, greedy, base, model, source, limit, prompts, max_tokens, seeds
    )
    write_output(output, toml, "--output")
    click.echo(writing_tuning.format_writing_candidates(tried, baselines, chosen, greedy))
    click.echo(f"\nWrote {output}")
