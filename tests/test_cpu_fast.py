"""The CPU fast path: the system OpenBLAS loaded before MLX, and float32 weights where it runs.

Loading must happen before `mlx.core` is imported, and this process has imported it long
ago, so each case about the loader runs in a fresh interpreter.
"""

import json
import os
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from mlx.utils import tree_flatten

from entropix_mlx import cpu_blas
from entropix_mlx.loading import ModelLoadError, load
from entropix_mlx.loading.cpu_weights import (
    BUDGET_ENV,
    dequantize_model,
    float32_bytes,
    wants_float32,
)

from .conftest import REPO
from .tiny import tiny_model, write_quantized_gguf

OPENBLAS = cpu_blas.find_openblas()
needs_openblas = pytest.mark.skipif(
    OPENBLAS is None, reason="no system OpenBLAS (libopenblas0-pthread)"
)
TOKENS = mx.array([[1, 40, 41, 42, 77, 120, 2, 9]])
ACTIVE_BLAS = cpu_blas.BlasStatus(True, "libopenblas.so.0", "a test's stand-in")

# Prints what the fresh process saw: the loader's status, whether OpenBLAS is mapped, whether
# MLX's float32 matmul is bit-identical to OpenBLAS's own sgemm, and the tiny model's dtype.
PROBE = """
import ctypes, json, sys
{imports}
from entropix_mlx import cpu_blas
from entropix_mlx.loading import load
import mlx.core as mx, numpy as np

rng = np.random.default_rng(0)
a, b = rng.standard_normal((64, 300), np.float32), rng.standard_normal((300, 48), np.float32)
theirs = np.array(mx.array(a) @ mx.array(b))
mapped = "libopenblas" in open("/proc/self/maps").read()
c, p = np.zeros((64, 48), np.float32), ctypes.c_void_p
openblas = ctypes.CDLL(sys.argv[1])
openblas.cblas_sgemm(101, 111, 111, 64, 48, 300, ctypes.c_float(1.0), a.ctypes.data_as(p), 300,
                     b.ctypes.data_as(p), 48, ctypes.c_float(0.0), c.ctypes.data_as(p), 48)
_, _, info = load(sys.argv[2])
status = cpu_blas.STATUS
print(json.dumps({{"active": status.active, "detail": status.detail, "mapped": mapped,
                  "same_as_openblas": bool(np.array_equal(theirs, c)),
                  "weight_dtype": info.weight_dtype}}))
"""


@pytest.fixture(scope="module")
def tiny_q4(tmp_path_factory):
    return write_quantized_gguf(
        tmp_path_factory.mktemp("cpu") / "tiny-q4.gguf",
        tiny_model(seed=3),
        GGMLQuantizationType.Q4_1,
    )


def probe(gguf, mlx_first=False, **env):
    """Run PROBE in a fresh interpreter -> (its report, its stderr)."""
    imports = "import mlx.core\nimport entropix_mlx" if mlx_first else "import entropix_mlx"
    environ = {k: v for k, v in os.environ.items() if k != cpu_blas.SWITCH}
    environ.update(PYTHONPATH=str(REPO), **env)
    command = [sys.executable, "-c", PROBE.format(imports=imports), OPENBLAS, str(gguf)]
    child = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.strip().splitlines()[-1]), child.stderr


@needs_openblas
def test_openblas_is_loaded_before_mlx_and_runs_its_matmuls(tiny_q4):
    report, stderr = probe(tiny_q4)
    assert report["active"] and report["mapped"] and "loaded before MLX" in report["detail"]
    assert report["same_as_openblas"]  # bit for bit: MLX's sgemm calls resolve to OpenBLAS
    assert report["weight_dtype"] == "float32"
    assert "Warning" not in stderr


@needs_openblas
def test_switched_off_behaves_as_before(tiny_q4):
    report, stderr = probe(tiny_q4, ENTROPIX_MLX_OPENBLAS="0")
    assert (
        not report["active"]
        and not report["mapped"]
        and "ENTROPIX_MLX_OPENBLAS=0" in report["detail"]
    )
    assert not report["same_as_openblas"]  # MLX's bundled reference BLAS sums in another order
    assert report["weight_dtype"] == "quantized"
    assert "Warning" not in stderr


@needs_openblas
def test_mlx_imported_first_warns_once_and_changes_nothing(tiny_q4):
    report, stderr = probe(tiny_q4, mlx_first=True)
    assert stderr.count("could not apply the system OpenBLAS") == 1, stderr
    assert "mlx was imported before entropix_mlx" in stderr and "ENTROPIX_MLX_OPENBLAS=0" in stderr
    assert not report["active"] and not report["same_as_openblas"]
    assert report["weight_dtype"] == "quantized"


@needs_openblas
def test_switch_silences_the_warning(tiny_q4):
    _, stderr = probe(tiny_q4, mlx_first=True, ENTROPIX_MLX_OPENBLAS="off")
    assert "could not apply" not in stderr


def test_a_path_that_is_not_openblas_is_named(tmp_path):
    bogus = tmp_path / "libnot.so"
    bogus.write_text("not a library")
    code = "from entropix_mlx import cpu_blas; print(cpu_blas.STATUS.describe())"
    child = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "ENTROPIX_MLX_OPENBLAS": str(bogus)},
    )
    assert child.returncode == 0, child.stderr
    assert f"ENTROPIX_MLX_OPENBLAS={bogus} is not an OpenBLAS library" in child.stdout


@pytest.mark.parametrize(
    "flags,core",
    [
        ("fma avx2 avx512f avx512bw avx512vl avx512_bf16", "Cooperlake"),
        ("fma avx2 avx512f avx512bw avx512vl", "SkylakeX"),
        ("sse4_2 fma avx2", "Haswell"),
        ("sse4_2 avx", None),
    ],
)
def test_openblas_core_from_cpu_flags(tmp_path, flags, core):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t: {flags}\n")
    assert cpu_blas.core_from_flags(str(cpuinfo)) == core
    assert cpu_blas.core_from_flags(str(tmp_path / "missing")) is None


def test_cli_names_the_blas_and_the_weights(tiny_q4):
    from click.testing import CliRunner

    from entropix_mlx.cli import main

    listed = CliRunner().invoke(main, ["models", "list"])
    assert listed.exit_code == 0 and cpu_blas.STATUS.describe() in listed.output
    args = [
        "generate",
        "-m",
        str(tiny_q4),
        "-p",
        "hi",
        "--max-tokens",
        "2",
        "--sampler",
        "greedy",
        "--cpu-dtype",
        "float32",
        "-v",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("CPU BLAS: ") == 1
    assert "Weights: float32 (stored as Q4_1)" in result.output


def test_dequantized_model_equals_the_quantized_one(tiny_q4):
    quantized, _, _ = load(str(tiny_q4), cpu_dtype="quantized")
    quantized.set_dtype(mx.float32)  # float32 activations: then only the matmul kernels differ
    expected_bytes = float32_bytes(quantized)
    model, _, info = load(str(tiny_q4), cpu_dtype="float32")
    assert info.weight_dtype == "float32" and info.quantization == "Q4_1"
    assert type(model.model.embed_tokens) is nn.Embedding  # tied: its as_linear is the head
    assert type(model.layers[0].self_attn.q_proj) is nn.Linear
    params = tree_flatten(model.parameters())
    assert {v.dtype for _, v in params} == {mx.float32}
    assert sum(v.nbytes for _, v in params) == expected_bytes
    np.testing.assert_allclose(np.array(model(TOKENS)), np.array(quantized(TOKENS)), atol=1e-4)


def test_dequantize_is_exact_against_float32_scales():
    layer = nn.QuantizedLinear(64, 32, bias=True, group_size=32, bits=4)
    layer.scales, layer.biases = layer.scales.astype(mx.float16), layer.biases.astype(mx.float16)
    exact = mx.dequantize(
        layer.weight, layer.scales.astype(mx.float32), layer.biases.astype(mx.float32), 32, 4
    )
    model = nn.Sequential(layer)
    dequantize_model(model)
    assert mx.array_equal(model.layers[0].weight, exact)


@pytest.mark.parametrize(
    "cpu_dtype,on_cpu,blas,needed,budget,expected",
    [
        ("auto", True, True, 10, 100, True),
        ("auto", True, True, 101, 100, False),  # over the budget: as stored
        ("auto", True, False, 10, 100, False),  # no OpenBLAS: float32 would be slower
        ("auto", False, True, 10, 100, False),  # GPU: untouched
        ("float32", True, False, 10**12, 0, True),
        ("float32", False, True, 10, 100, False),
        ("quantized", True, True, 10, 100, False),
    ],
)
def test_weight_policy(cpu_dtype, on_cpu, blas, needed, budget, expected):
    assert wants_float32(cpu_dtype, on_cpu, blas, needed, budget) is expected


def test_memory_budget_fallback(tiny_q4, monkeypatch):
    monkeypatch.setattr(cpu_blas, "STATUS", ACTIVE_BLAS)
    logged = []
    monkeypatch.setenv(BUDGET_ENV, "0.01")
    model, _, info = load(str(tiny_q4), log=logged.append)
    assert info.weight_dtype == "quantized" and model.layers[0].self_attn.q_proj.bits == 4
    assert any("over the 0 MB budget" in line and BUDGET_ENV in line for line in logged), logged
    monkeypatch.setenv(BUDGET_ENV, "100")
    _, _, info = load(str(tiny_q4))
    assert info.weight_dtype == "float32"
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(ModelLoadError, match=f"{BUDGET_ENV} must be a number of megabytes"):
        load(str(tiny_q4))


def test_bad_cpu_dtype_is_named(tiny_q4):
    with pytest.raises(ModelLoadError, match="cpu_dtype must be one of auto, float32, quantized"):
        load(str(tiny_q4), cpu_dtype="float16")


@pytest.mark.real_model
def test_float32_default_model_matches_quantized_and_reference(smollm2_reference):
    """Same weights, exactly dequantized: logits within 1e-3 of the quantized kernels (float32)."""
    quantized, _, _ = load(cpu_dtype="quantized")
    quantized.set_dtype(mx.float32)
    model, _, info = load(cpu_dtype="float32")
    assert info.weight_dtype == "float32"
    ref = smollm2_reference
    for i in range(int(ref["n"])):
        ids = mx.array(ref[f"ids_{i}"])[None]
        logits = np.array(model(ids)[0])
        np.testing.assert_allclose(
            logits, np.array(quantized(ids)[0]), atol=1e-3, err_msg=f"prompt {i}"
        )
        # transformers ran float32 on the dequantized GGUF too.
        np.testing.assert_allclose(
            logits[-1], ref[f"last_logits_{i}"], atol=0.02, err_msg=f"prompt {i}"
        )
        np.testing.assert_array_equal(
            logits.argmax(-1), ref[f"top5_ids_{i}"][:, 0], err_msg=f"prompt {i}"
        )
