"""The command line's dispatcher: one error boundary, the entry points, click kept in the CLI."""

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.errors import ModelLoadError
from entropix_mlx.loading import catalog

from .conftest import REPO


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.mark.parametrize(
    "args, message, command",
    [
        (["generate", "--colr"], "No such option '--colr'. (Did you mean one of: ", "generate"),
        (["generate"], "Missing option '--prompt' / '-p'", "generate"),
        (["generate", "-p", "hi", "-n", "0"], "Invalid value for '-n': 0 is not in", "generate"),
        (["models", "fetch", "a", "b"], "Got unexpected extra argument (b)", "models fetch"),
        (["bench", "--prompt-lengths", "x"], "Invalid value for '--prompt-lengths': ", "bench"),
        (["genrate"], "No such command 'genrate'", ""),
        (["--bogus"], "No such option '--bogus'", ""),
    ],
)
def test_usage_errors_are_one_line_naming_the_help_with_exit_code_2(args, message, command):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"Error: {message}")
    assert result.output.endswith(f"; see '{' '.join(['entropix-mlx', command]).strip()} --help'\n")


def test_a_group_without_its_command_prints_its_help():
    for args in ([], ["models"]):
        result = run(*args)
        assert result.exit_code == 2 and "Usage:" in result.output and "Commands:" in result.output


def test_package_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch):
    def fails_with(error):
        def fetch(*args, **kwargs):
            raise error

        return fetch

    monkeypatch.setattr(catalog, "fetch", fails_with(ModelLoadError("the model is odd")))
    result = run("models", "fetch")
    assert result.exit_code == 1 and result.output == "Error: the model is odd\n"
    monkeypatch.setattr(catalog, "fetch", fails_with(ValueError("[matmul] shapes differ")))
    result = run("models", "fetch")
    assert isinstance(result.exception, ValueError) and "Error:" not in result.output


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "entropix_mlx", "generate", "--no-such"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "Error: No such option '--no-such'; see 'python -m entropix_mlx generate --help'\n"
    )


def test_only_the_cli_imports_click():
    package = REPO / "entropix_mlx"
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            if any(name.split(".")[0] == "click" for name in names):
                importers.add(path.relative_to(package).parts[0])
    assert importers == {"cli"}


@pytest.mark.real_model
def test_installed_console_script_generates(default_model, tmp_path):
    script = shutil.which("entropix-mlx")
    if script is None:
        pytest.skip("the entropix-mlx console script is not installed (pip install -e .)")
    trace = tmp_path / "t.jsonl"
    done = subprocess.run(
        [
            script,
            "generate",
            "-p",
            "Name a colour.",
            "--max-tokens",
            "6",
            "--seed",
            "0",
            "--trace",
            str(trace),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert 1 <= len(records) <= 6
    assert done.stdout.strip() == "".join(r["text"] for r in records).strip()
