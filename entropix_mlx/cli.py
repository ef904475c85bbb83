"""The `entropix-mlx` command line: a thin front over the library."""

from pathlib import Path

import click

from .loading import CATALOG, DEFAULT_MODEL, ModelLoadError
from .loading import catalog as catalog_lib


def echo_err(message: str):
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="entropix-mlx")
def main():
    """Entropy-aware text generation with MLX."""


@main.group()
def models():
    """List and fetch the catalog's models."""


@models.command("list")
def models_list():
    """Show the catalog and whether each model is fetched."""
    folder = catalog_lib.models_dir()
    for name, entry in CATALOG.items():
        here = (folder / entry.filename).is_file()
        mark = "fetched" if here else "not fetched"
        default = " (default)" if name == DEFAULT_MODEL else ""
        click.echo(f"{name}{default}  [{mark}]\n    {entry.description}")
    click.echo(f"\nModels folder: {folder}")


@models.command("fetch")
@click.argument("name", default=DEFAULT_MODEL)
def models_fetch(name):
    """Download and verify a catalog model (default: the embedded one)."""
    try:
        path = catalog_lib.fetch(name, log=echo_err)
        if not catalog_lib.verify(name):
            raise ModelLoadError(f"{path} does not match its recorded sha256; delete it and fetch again")
    except ModelLoadError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{name}: {path} (sha256 verified)")


@main.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--bits", type=click.Choice(["4", "8", "none"]), default="4", show_default=True,
              help="Quantize float layers to this many bits (already quantized layers are kept).")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True)
def convert(src, dst, bits, group_size):
    """Convert SRC (a GGUF file, a float folder, a Hub id or a catalog name) to an MLX folder DST."""
    from .loading.convert import convert as convert_model

    try:
        out = convert_model(src, dst, None if bits == "none" else int(bits), int(group_size), log=echo_err)
    except ModelLoadError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Wrote {out} (opens with entropix-mlx and with mlx_lm.load)")
