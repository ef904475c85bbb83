"""models list/fetch and convert: the catalog's models and MLX folders."""

from pathlib import Path

import click

from .. import cpu_blas
from ..errors import ModelLoadError
from ..loading import CATALOG, DEFAULT_MODEL
from ..loading import catalog as catalog_lib
from .output import echo_err


@click.group()
def models():
    """List, fetch and verify the catalog's models."""


@models.command("list")
def models_list():
    """Show the catalog and whether each model is fetched."""
    folder = catalog_lib.models_dir()
    for name, entry in CATALOG.items():
        mark = catalog_lib.status(name)
        default = " (default)" if name == DEFAULT_MODEL else ""
        fix = f" (replace it: entropix-mlx models fetch {name})" if mark == "corrupt" else ""
        click.echo(f"{name}{default}  [{mark}]{fix}\n    {entry.description}")
    click.echo(
        f"\nModels folder: {folder}\n"
        "fetched: unchanged in size and time since its sha256 last matched "
        "(`entropix-mlx models verify` hashes it again)\n"
        f"{cpu_blas.STATUS.describe()}"
    )


@models.command("fetch")
@click.argument("name", default=DEFAULT_MODEL)
def models_fetch(name):
    """Download a catalog model (default: the embedded one), or hash the kept copy in full and
    download it again if it is corrupt."""
    path = catalog_lib.fetch(name, log=echo_err, repair=True)
    click.echo(f"{name}: {path} (sha256 verified)")


@models.command("verify")
@click.argument("name", required=False)
def models_verify(name):
    """Hash the fetched catalog models (or only NAME) in full and name any that are corrupt."""
    corrupt = []
    for each in [name] if name else CATALOG:
        mark = catalog_lib.status(each, rehash=True)
        if mark == "not fetched" and name:
            raise ModelLoadError(f"{name} is not fetched; run `entropix-mlx models fetch {name}`")
        path = catalog_lib.models_dir() / CATALOG[each].filename
        said = {"fetched": f"{path}: sha256 verified", "corrupt": f"{path}: CORRUPT"}
        click.echo(f"{each}: {said.get(mark, mark)}")
        corrupt += [each] if mark == "corrupt" else []
    if corrupt:
        raise ModelLoadError(
            f"{', '.join(corrupt)} {'is' if len(corrupt) == 1 else 'are'} corrupt (sha256 does "
            "not match the catalog's); download again with "
            + " and ".join(f"`entropix-mlx models fetch {each}`" for each in corrupt)
        )


@click.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--bits",
    type=click.Choice(["4", "8", "none"]),
    default="4",
    show_default=True,
    help="Quantize a float model to this many bits (a quantized one is written as loaded).",
)
@click.option(
    "--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True
)
def convert(src, dst, bits, group_size):
    """Convert SRC (a GGUF file, a float folder, a Hub id or a catalog name) to an MLX folder DST."""
    from ..loading.convert import convert as convert_model

    out = convert_model(
        src, dst, None if bits == "none" else int(bits), int(group_size), log=echo_err
    )
    click.echo(f"Wrote {out} (opens with entropix-mlx and with mlx_lm.load)")
