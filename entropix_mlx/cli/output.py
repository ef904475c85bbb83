"""Where the commands' notes and files go: notes on stderr (rank 0 only), files checked early."""

import functools
from pathlib import Path

import click


@functools.cache
def is_rank0() -> bool:
    """False on the follower ranks of an `mlx.launch` job, which print nothing but errors."""
    from ..distributed import world

    return world().rank() == 0


def echo_err(message: str, color=None):
    if is_rank0():
        click.echo(message, err=True, color=color)


def check_output_folder(path: Path, option: str):
    """Fail before any long work if `path` cannot be written for want of its folder."""
    if not path.resolve().parent.is_dir():
        raise click.ClickException(f"cannot write {option} {path}: its folder does not exist")


def write_output(path: Path, text: str, option: str):
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot write {option} {path}: {e.strerror or e}") from None
