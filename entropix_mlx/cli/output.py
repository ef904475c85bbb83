"""Where the commands' notes and files go: notes on stderr (rank 0 only), files checked early."""

import functools
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import click

PathLike = Union[str, Path]


@functools.cache
def is_rank0() -> bool:
    """False on the follower ranks of an `mlx.launch` job, which print nothing but errors."""
    from ..distributed import world

    return world().rank() == 0


def echo_err(message: str, color=None):
    if is_rank0():
        click.echo(message, err=True, color=color)


Inputs = Sequence[Tuple[str, Optional[PathLike]]]  # what each input is, and its path


def check_output_file(path: Path, option: str, inputs: Inputs = ()):
    """Fail before any long work if `path` cannot be written, or if writing it would overwrite
    one of the run's `inputs`; `path` is left as it was."""
    path = Path(path)
    for what, source in inputs:
        if source is not None and overwrites(path, Path(source)):
            raise click.ClickException(
                f"{option} {path} would overwrite {what} ({source}); write it elsewhere"
            )
    try:
        folder = path.resolve().parent
    except RuntimeError:  # Python < 3.13 reports a symbolic link loop so
        raise click.ClickException(f"cannot write {option} {path}: a symbolic link loop") from None
    if not folder.is_dir():
        raise click.ClickException(f"cannot write {option} {path}: its folder does not exist")
    try:  # the one honest test of writing (permissions, read-only or special file systems)
        if path.exists():
            open(path, "r+b").close()
        else:
            open(path, "xb").close()
            path.unlink()
    except OSError as e:
        raise click.ClickException(f"cannot write {option} {path}: {e.strerror or e}") from None


def check_output_folder(folder: Path, names: Sequence[str], option: str, inputs: Inputs = ()):
    """Make `folder` (if missing) and check each file `names` in it as `check_output_file` does."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"cannot write {option} {folder}: {e.strerror or e}") from None
    for name in names:
        check_output_file(folder / name, option, inputs)


def overwrites(output: Path, source: Path) -> bool:
    """True when writing the file `output` would change `source`: the same file, or a file
    inside the folder `source` (a model folder)."""
    try:
        if not (output.exists() and source.exists()):
            return False
        if os.path.samefile(output, source):
            return True
        return source.is_dir() and output.resolve().is_relative_to(source.resolve())
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return False


def check_utf8(text: Optional[str], option: str) -> Optional[str]:
    """`text` as given, if it is UTF-8: undecodable bytes in argv or a terminal arrive as lone
    surrogates, which the tokenizer cannot encode."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise click.ClickException(
            f"{option} is not UTF-8 (byte 0x{ord(text[e.start]) - 0xDC00:02x} at character "
            f"{e.start}); pass UTF-8 text"
        ) from None
    return text


def utf8_option(ctx, param, value):
    """A click callback: the option's text, checked to be UTF-8 (see `check_utf8`)."""
    return check_utf8(value, param.opts[0])


def write_output(path: Path, text: str, option: str):
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot write {option} {path}: {e.strerror or e}") from None
