"""Shared fixtures: the reference data beside the checkout and the real default model (once)."""

from pathlib import Path

import numpy as np
import pytest

import entropix_mlx  # noqa: F401  before mlx: loads the system OpenBLAS (cpu_blas) if present

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata"


def testdata_path(name: str) -> Path:
    path = TESTDATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared test data must sit beside the checkout")
    return path


@pytest.fixture(scope="session")
def smollm2_reference():
    return np.load(testdata_path("smollm2_reference.npz"))


@pytest.fixture(scope="session")
def default_model():
    """(model, tokenizer, info) of the embedded default model, loaded once per session."""
    from entropix_mlx.loading import DEFAULT_MODEL, load

    return load(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random Llama (tests/tiny.py, seed 11) written as a float GGUF with a byte-level
    tokenizer and a chat template: the one tiny model the generation tests share."""
    from .tiny import tiny_model, write_float_gguf

    return write_float_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", tiny_model(seed=11))


@pytest.fixture(scope="session")
def tiny_folder(tiny_gguf, tmp_path_factory) -> Path:
    """`tiny_gguf` converted to a float MLX folder (config.json, safetensors, tokenizer files)."""
    from entropix_mlx.loading.convert import convert

    return convert(str(tiny_gguf), tmp_path_factory.mktemp("tiny-folder") / "folder", bits=None)


@pytest.fixture(scope="session")
def tiny(tiny_gguf):
    """(model, tokenizer, info) of `tiny_gguf`."""
    from entropix_mlx.loading import load

    return load(str(tiny_gguf))


@pytest.fixture(scope="session")
def tiny_served(tiny_gguf):
    """`tiny_gguf` loaded with a pause token its byte-level vocabulary has ("..." is three tokens
    there) as the model's preset: what the server and its worker serve."""
    import dataclasses

    from entropix_mlx.loading import load

    model, tokenizer, info = load(str(tiny_gguf))
    return model, tokenizer, dataclasses.replace(info, sampler_preset={"pause_token_id": 16})


def pytest_terminal_summary(terminalreporter):
    """Say once, even under -q, why tests were skipped (most often: no ../shared beside the
    checkout, whose reference data a clone does not have)."""
    reasons: dict = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.write_sep("-", "why tests were skipped")
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{count:4d}  {reason}")
