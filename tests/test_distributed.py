"""Tensor parallelism: 2 ranks over 127.0.0.1 against one process, and the sharding rules."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlx.nn as nn
import numpy as np
import pytest

from entropix_mlx.distributed import ShardingError, check_shardable, shard_problems
from entropix_mlx.loading import DEFAULT_MODEL
from entropix_mlx.loading.convert import convert

from .conftest import testdata_path as shared_file
from .tiny import tiny_args, tiny_model, write_float_gguf, write_quantized_gguf

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
METRIC_TOLERANCE = 1e-4


def launcher() -> str:
    path = Path(sys.executable).with_name("mlx.launch")
    found = str(path) if path.is_file() else shutil.which("mlx.launch")
    if found is None:
        pytest.skip("mlx.launch is not installed beside this Python: cannot start ranks")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(model, out: Path, max_tokens: int, ranks: int, timeout: int) -> list:
    """Rank results of the worker: `ranks` ranks under mlx.launch, or 0 for a plain process."""
    out.mkdir()
    worker = [str(WORKER), str(model), str(out), str(max_tokens), "."]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if ranks:
        command = [
            launcher(),
            "--backend",
            "ring",
            "--hosts",
            "127.0.0.1",
            "-n",
            str(ranks),
            "--starting-port",
            str(free_port()),
            "--env",
            f"PYTHONPATH={REPO}",
            "--python",
            sys.executable,
            *worker,
        ]
    else:
        command = [sys.executable, *worker]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(max(ranks, 1))]


def assert_same_generation(single: dict, ranks: list):
    for rank in ranks:  # the gathered heads in the single process's order
        np.testing.assert_allclose(rank["scores"], single["scores"], atol=METRIC_TOLERANCE)
    for sampler in ("greedy", "entropix"):
        expected = single[sampler]
        for rank in ranks:
            assert rank[sampler]["tokens"] == expected["tokens"], sampler
            assert rank[sampler]["strategies"] == expected["strategies"], sampler
            for mine, theirs in zip(rank[sampler]["metrics"], expected["metrics"]):
                assert mine.keys() == theirs.keys()
                for name in mine:
                    assert mine[name] == pytest.approx(theirs[name], abs=METRIC_TOLERANCE), name


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_model(seed=3)
    float_gguf = write_float_gguf(folder / "tiny_f32.gguf", model)
    return {
        "gguf_q8": write_quantized_gguf(folder / "tiny_q8.gguf", model),
        "mlx_folder_q4": convert(str(float_gguf), folder / "mlx_q4", bits=4, group_size=32),
    }


@pytest.mark.parametrize("kind", ["gguf_q8", "mlx_folder_q4"])
def test_two_ranks_generate_what_one_process_does(tiny_files, kind, tmp_path):
    model = tiny_files[kind]
    [single] = run_worker(model, tmp_path / "one", 16, ranks=0, timeout=120)
    ranks = run_worker(model, tmp_path / "two", 16, ranks=2, timeout=180)
    assert [r["size"] for r in ranks] == [2, 2]
    assert_same_generation(single, ranks)
    # Each rank holds half of every layer's projections; only the norms are whole on both.
    norms = 2 * tiny_args().hidden_size * 4 * tiny_args().num_hidden_layers
    for rank in ranks:
        assert rank["memory"]["layer_bytes"] == pytest.approx(
            (single["memory"]["layer_bytes"] + norms) / 2, abs=8
        )
        assert rank["memory"]["active_bytes"] < single["memory"]["active_bytes"]


def test_two_ranks_run_a_k_quant_file_whose_16_value_groups_they_cannot_shard(tmp_path):
    """llama.cpp's Q4_K_M fixture: its Q6_K projections become float32 before sharding."""
    model = shared_file("kquant/tiny-llama31-kquant-A.Q4_K_M.gguf")
    [single] = run_worker(model, tmp_path / "one", 8, ranks=0, timeout=120)
    assert_same_generation(single, run_worker(model, tmp_path / "two", 8, ranks=2, timeout=180))


@pytest.mark.real_model
def test_default_model_refuses_two_ranks_clearly(tmp_path):
    """SmolLM2-135M has 9 heads and 3 KV heads: it cannot be split in two, and says so."""
    ranks = run_worker(DEFAULT_MODEL, tmp_path / "two", 1, ranks=2, timeout=180)
    for rank in ranks:
        assert "does not divide across 2 ranks (9 attention heads; 3 KV heads)" in rank["error"]
        assert "launch a number of ranks it divides by (1, 3)" in rank["error"]


@pytest.mark.real_model
def test_default_model_on_three_ranks_generates_what_one_process_does(tmp_path):
    [single] = run_worker(DEFAULT_MODEL, tmp_path / "one", 4, ranks=0, timeout=180)
    ranks = run_worker(DEFAULT_MODEL, tmp_path / "three", 4, ranks=3, timeout=300)
    assert_same_generation(single, ranks)


def test_shard_problems_name_every_width_that_does_not_divide():
    args = tiny_args(num_attention_heads=6, num_key_value_heads=3, intermediate_size=129)
    assert shard_problems(args, 2) == ["3 KV heads", "129 MLP columns (intermediate_size)"]
    assert shard_problems(args, 3) == []


def test_quantized_groups_must_stay_whole_on_each_rank():
    model = tiny_model()  # attention width 64: 32 per rank, half a group of 64
    nn.quantize(model, group_size=64, bits=4)
    message = r"attention width 64 / 2 ranks \(not whole groups of 64\)"
    with pytest.raises(ShardingError, match=message):
        check_shardable(model, 2)
    check_shardable(model, 1)


@pytest.mark.parametrize("name,fmt", [("qwen2", "qwen2.gguf"), ("qwen3", "folder")])
def test_two_ranks_shard_the_family_switches(name, fmt, tmp_path):
    """Qwen2's q/k/v biases and Qwen3's per-head q/k norms across 2 ranks (tests/references)."""
    model = REPO / "tests" / "references" / name / fmt
    [single] = run_worker(model, tmp_path / "one", 8, ranks=0, timeout=120)
    ranks = run_worker(model, tmp_path / "two", 8, ranks=2, timeout=180)
    assert [r["size"] for r in ranks] == [2, 2]
    assert_same_generation(single, ranks)
