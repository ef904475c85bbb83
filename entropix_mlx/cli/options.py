"""The options several commands share, and what they turn into: a loaded model, a sampler config."""

import functools
from pathlib import Path

import click

from ..engine.batch import MAX_BATCH_SIZE
from ..errors import ConfigError
from ..loading import CATALOG, CPU_DTYPES, DEFAULT_MODEL, load
from ..loading.catalog import models_dir
from ..sampling import SAMPLERS, SamplerConfig
from .output import echo_err, utf8_option

MODEL_HELP = "Catalog name, .gguf file, MLX/HF folder or Hub repo id"
CPU_DTYPE_HELP = (
    "CPU backend weights: auto = float32 when the system OpenBLAS is loaded and "
    "they fit the memory budget (docs/models.md, 'Linux CPU'); or float32, or quantized."
)
BATCH_ROWS = click.IntRange(1, MAX_BATCH_SIZE)  # rows decoded together as one batch


def model_option(help: str = MODEL_HELP + "."):
    return click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help=help)


cpu_dtype_option = click.option(
    "--cpu-dtype",
    type=click.Choice(CPU_DTYPES),
    default="auto",
    show_default=True,
    help=CPU_DTYPE_HELP,
)


def sampler_options(command):
    """The model and sampler options that generate and chat share."""
    options = [
        model_option(),
        click.option(
            "--system", callback=utf8_option, help="A system message for the chat template."
        ),
        click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True),
        click.option("--seed", type=int, help="Random seed (same seed, same text)."),
        click.option(
            "--sampler", type=click.Choice(SAMPLERS), default="entropix", show_default=True
        ),
        click.option("--temp", type=float, help="Base temperature (default 0.666)."),
        click.option("--top-p", type=float, help="Base top-p (default 0.9)."),
        click.option("--top-k", type=int, help="Base top-k (default 27)."),
        click.option("--min-p", type=float, help="Base min-p (default 0.03)."),
        click.option(
            "--config",
            "config_file",
            type=click.Path(exists=True, dir_okay=False),
            help="A TOML file of SamplerConfig settings (overrides the model's preset).",
        ),
        click.option(
            "--pause-token", callback=utf8_option, help='Text of the pause token (default "...").'
        ),
        click.option(
            "--verbose", "-v", is_flag=True, help="Speed, peak memory and strategy histogram."
        ),
        cpu_dtype_option,
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def model_path(name: str) -> Path:
    """Where a model name loads from, as far as is known before loading (a Hub id: nowhere)."""
    return models_dir() / CATALOG[name].filename if name in CATALOG else Path(name).expanduser()


def load_model(name: str, cpu_dtype: str = "auto"):
    return load(name, log=echo_err, cpu_dtype=cpu_dtype)


def sampler_config(preset: dict, config_file, overrides):
    """The model's preset, then --config, then flags (`SamplerConfig.merged`), errors naming them."""
    try:
        return SamplerConfig.merged(preset, config_file, overrides)
    except ConfigError as e:
        source = f"--config {config_file} / flags" if config_file else "sampler flags"
        raise ConfigError(f"invalid sampler settings ({source}): {e}") from None


def preset_config(model, config_file, overrides=None):
    """The sampler config a catalog model's preset gives (other models: the defaults), under --config and flags."""
    entry = CATALOG.get(model)
    return sampler_config(entry.sampler_preset if entry else {}, config_file, overrides or {})
