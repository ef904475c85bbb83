"""plot: a --trace file drawn as a PNG."""

from pathlib import Path

import click

from .options import model_option, preset_config
from .output import check_output_file, echo_err, utf8_option


@click.command()
@click.argument("trace_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG file to write.",
)
@model_option("Draw this catalog model's preset thresholds (other names: the defaults).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A TOML file of SamplerConfig settings whose thresholds to draw (overrides the preset).",
)
@click.option(
    "--title",
    callback=utf8_option,
    help="A title for the figure (default: the trace's file name).",
)
def plot(trace_file, output, model, config_file, title):
    """Draw a --trace file: the entropy-varentropy plane and a per-token timeline, as a PNG; or
    the frontier of an `eval --task writing` summary.json."""
    from ..frontier_plot import plot_frontier, read_writing_summary
    from ..plot import pixel_size, plot_trace, strategy_mismatches
    from ..trace import read_trace

    if output.suffix.lower() != ".png":
        raise click.ClickException(f"--output {output} must be a .png file")
    check_output_file(output, "--output", [("the trace", trace_file), ("--config", config_file)])
    writing = read_writing_summary(trace_file)
    if writing is not None:
        plot_frontier(writing, output, title)
        click.echo(f"Wrote {output} (the frontier of {len(writing['arms'])} arms)")
        return
    config = preset_config(model, config_file)
    try:
        records = read_trace(trace_file)
        plot_trace(records, output, config, title=title or Path(trace_file).name)
    except OSError as e:
        raise click.ClickException(f"cannot write --output {output}: {e.strerror or e}") from None
    width, height = pixel_size(len(records))
    click.echo(f"Wrote {output} ({width}x{height} px, {len(records)} tokens)")
    mismatched = strategy_mismatches(records, config)
    if mismatched:
        echo_err(
            f"Note: {mismatched} of {len(records)} tokens' strategies do not match the drawn thresholds; "
            "pass the --model or --config the trace was made with."
        )
