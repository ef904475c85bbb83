"""models list/fetch and convert from the command line."""

from click.testing import CliRunner

from entropix_mlx import cli

from .helpers import one_line_error


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_models_list_and_convert_errors(tmp_path):
    result = run("models", "list")
    assert result.exit_code == 0 and "smollm2-135m-instruct (default)" in result.output
    one_line_error(run("models", "fetch", "nope"), "unknown catalog model 'nope'")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("keep me")
    # The destination is checked before the source is read.
    one_line_error(run("convert", tmp_path / "no.gguf", taken), "already exists and is not empty")
