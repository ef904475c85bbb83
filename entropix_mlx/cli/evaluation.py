"""eval: samplers compared on the same items, paired."""

from pathlib import Path

import click

from .options import BATCH_ROWS, load_model, model_option, model_path, sampler_config
from .output import check_output_folder, echo_err
from .writing import check_writing_options, eval_writing, writing_options


@click.command("eval")
@click.option(
    "--task", "-t", required=True, help="arith, gsm8k, arc-easy, arc-challenge or writing."
)
@click.option(
    "--sampler",
    "-s",
    "samplers",
    multiple=True,
    type=click.Choice(["greedy", "standard", "entropix", "cot-decoding", "self-consistency"]),
    help="An arm to compare (repeatable; default: greedy, standard and entropix).",
)
@click.option(
    "--paths",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Paths per answer of cot-decoding and self-consistency.",
)
@click.option(
    "--seeds", default="0", show_default=True, help="Run seeds, comma-separated (e.g. 1,2,3)."
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Only the first N items (arith: default 200)."
)
@model_option()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write items.jsonl (one record per answer) and summary.json here.",
)
@click.option(
    "--config",
    "config_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A SamplerConfig TOML preset: adds an entropix arm named after the file (repeatable).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="The evaluation data folder or the task's JSONL file (default: ../shared/evaldata).",
)
@click.option(
    "--max-tokens", type=click.IntRange(min=1), help="Tokens per answer (default: the task's)."
)
@click.option(
    "--quick", is_flag=True, help="Smoke run: 2-3 items, the first seed, few tokens, 1-shot GSM8K."
)
@click.option(
    "--batch-size",
    type=BATCH_ROWS,
    default=1,
    show_default=True,
    help="Answers generated together as rows of one batch.",
)
@writing_options
def eval_command(
    task,
    samplers,
    paths,
    seeds,
    limit,
    model,
    out,
    config_files,
    data,
    max_tokens,
    quick,
    batch_size,
    **writing,
):
    """Compare samplers on the same items, paired: accuracy, Wilson CIs, exact McNemar tests
    (writing: loops, repetition, surprisal, junk and relevance, and the temperature frontier)."""
    from datetime import datetime, timezone

    check_writing_options(task, writing)
    if task == "writing":
        args = (samplers, seeds, limit, model, out, config_files, max_tokens, quick, batch_size)
        eval_writing(*args, **writing)
        return

    from ..evaluation import (
        ARMS,
        ITEMS_FILE,
        SUMMARY_FILE,
        RecordWriter,
        format_table,
        load_task,
        make_arms,
        parse_seeds,
        plan,
        run_eval,
        summarize,
        write_summary,
    )

    settings = plan(task, limit, parse_seeds(seeds), max_tokens, quick)
    task_obj = load_task(task, data, settings.limit, settings.shots)
    if out:
        inputs = [("the model", model_path(model)), ("--data", data)]
        inputs += [("--config", f) for f in config_files]
        check_output_folder(out, [ITEMS_FILE, SUMMARY_FILE], "--out", inputs)
    if task_obj.kind == "choice" and (samplers or config_files or seeds != "0"):
        echo_err(
            f"{task} is log-likelihood multiple choice: --sampler, --config and --seeds do not apply."
        )
    loaded, tokenizer, info = load_model(model)
    presets = [(Path(f).stem, sampler_config(info.sampler_preset, f, {})) for f in config_files]
    writer = RecordWriter(out) if out else None
    started = datetime.now(timezone.utc)
    try:
        arms = make_arms(samplers or ARMS, info.sampler_preset, presets, paths)
        run = run_eval(
            loaded,
            tokenizer,
            task_obj,
            arms,
            settings.seeds,
            max_tokens=settings.max_tokens,
            batch_size=batch_size,
            on_record=writer.write if writer else lambda record: None,
            log=echo_err,
        )
    finally:
        if writer:
            writer.close()
    summary = summarize(
        task_obj,
        run,
        arms,
        model=model,
        seeds=settings.seeds,
        max_tokens=settings.max_tokens,
        quick=quick,
        started=started,
    )
    click.echo(format_table(summary))
    if out:
        echo_err(f"\nWrote {writer.path} and {write_summary(out, summary)}")
