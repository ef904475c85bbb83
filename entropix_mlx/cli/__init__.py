"""The `entropix-mlx` command line: a thin front over the library, one module per command group."""

import contextlib
import os
import sys

import click

from ..errors import EntropixError
from . import bench, calibrate, evaluation, generation, models, plot, serve
from .output import is_rank0


class UsageError(click.UsageError):
    """A usage error as one line that names the command's help, rather than click's three."""

    def show(self, file=None):
        hint = f"; see '{self.ctx.command_path} --help'" if self.ctx else ""
        click.echo(f"Error: {self.format_message().removesuffix('.')}{hint}", file=file, err=True)


@contextlib.contextmanager
def one_line_usage_errors():
    try:
        yield
    except (UsageError, click.exceptions.NoArgsIsHelpError):  # one line already; or the help
        raise
    except click.UsageError as e:
        raise UsageError(e.format_message(), e.ctx) from None


class Commands(click.Group):
    """The one place where errors become one `Error: ...` line: the package's (exit code 1) and
    usage errors (exit code 2, as click has it); any other exception is a bug and keeps its
    traceback."""

    def make_context(self, *args, **kwargs):
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with one_line_usage_errors():
            try:
                return super().invoke(ctx)
            except EntropixError as e:
                raise click.ClickException(str(e)) from None


@click.group("entropix-mlx", cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="entropix-mlx")
def main():
    """Entropy-aware text generation with MLX."""
    if not is_rank0():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)


for command in (
    generation.generate,
    generation.chat,
    models.models,
    models.convert,
    serve.serve,
    bench.bench,
    plot.plot,
    calibrate.calibrate,
    evaluation.eval_command,
):
    main.add_command(command)
