"""eval --task writing: the open-ended writing task and the standard sampler's sweeps."""

import functools
from pathlib import Path

import click

from ..errors import EvalError
from .options import load_model, model_path, sampler_config
from .output import check_output_folder, echo_err


def writing_options(command):
    """The writing task's split and the standard sampler's sweeps (its frontier)."""
    options = [
        click.option(
            "--split",
            type=click.Choice(["dev", "test"]),
            default="dev",
            show_default=True,
            help="writing: the prompt split (tune on dev only).",
        ),
        click.option(
            "--temps",
            help="writing: the standard sampler at these temperatures, comma-separated "
            "(the frontier's curve; the preset's top-p/top-k/min-p).",
        ),
        click.option(
            "--min-ps", help="writing: min-p sampling (temperature 1) at these min-p values."
        ),
        click.option(
            "--repetition-penalties",
            help="writing: greedy with mlx-lm's repetition penalty at these values.",
        ),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def check_writing_options(task: str, writing: dict):
    if task != "writing" and (
        writing["split"] != "dev" or any(v for k, v in writing.items() if k != "split")
    ):
        raise EvalError(
            "--split, --temps, --min-ps and --repetition-penalties are for --task writing"
        )


def eval_writing(
    samplers,
    seeds,
    limit,
    model,
    out,
    config_files,
    max_tokens,
    quick,
    batch_size,
    split,
    temps,
    min_ps,
    repetition_penalties,
):
    """`eval --task writing`: generate, score each answer as it comes, summarize, print."""
    from datetime import datetime, timezone

    from ..evaluation import (
        ARMS,
        ITEMS_FILE,
        SUMMARY_FILE,
        RecordWriter,
        make_arms,
        parse_seeds,
        plan,
        run_eval,
    )
    from ..evaluation.frontier import families, parse_values, sweep_arms
    from ..evaluation.report import write_summary
    from ..evaluation.text_metrics import require_wordfreq
    from ..evaluation.writing import load_writing_task
    from ..evaluation.writing_report import format_writing_table, summarize_writing
    from ..evaluation.writing_scores import WritingScorer
    from ..sampling import SamplerConfig

    if set(samplers) - set(ARMS):
        raise EvalError("the writing task compares greedy, standard and entropix (and the sweeps)")
    require_wordfreq()
    sweep = (
        parse_values(temps, "--temps", 0.05, 5.0),
        parse_values(min_ps, "--min-ps", 0.001, 0.99),
        parse_values(repetition_penalties, "--repetition-penalties", 1.0, 5.0),
    )
    settings = plan("writing", limit, parse_seeds(seeds), max_tokens, quick)
    if out:
        inputs = [("the model", model_path(model))] + [("--config", f) for f in config_files]
        check_output_folder(out, [ITEMS_FILE, SUMMARY_FILE], "--out", inputs)
    loaded, tokenizer, info = load_model(model)
    task = load_writing_task(tokenizer, split, settings.limit, settings.max_tokens)
    base = SamplerConfig.merged(info.sampler_preset or {})
    presets = [(Path(f).stem, sampler_config(info.sampler_preset, f, {})) for f in config_files]
    arms = make_arms(samplers or ARMS, info.sampler_preset, presets) + sweep_arms(base, *sweep)
    scorer = WritingScorer(loaded, task)
    writer = RecordWriter(out) if out else None
    started = datetime.now(timezone.utc)
    try:
        run = run_eval(
            loaded,
            tokenizer,
            task,
            arms,
            settings.seeds,
            batch_size=batch_size,
            on_record=lambda r: writer.write(scorer.score(r)) if writer else scorer.score(r),
            log=echo_err,
        )
    finally:
        if writer:
            writer.close()
    summary = summarize_writing(
        task,
        run,
        arms,
        scorer.human,
        families(arms, base),
        model=model,
        split=split,
        seeds=settings.seeds,
        quick=quick,
        started=started,
    )
    click.echo(format_writing_table(summary))
    if out:
        echo_err(f"\nWrote {writer.path} and {write_summary(out, summary)}")
