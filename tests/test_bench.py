"""`entropix-mlx bench`: runs end to end on a tiny GGUF and writes the documented JSON (no speed is asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from entropix_mlx.bench.report import build_rows, describe_samples
from entropix_mlx.bench.text import benchmark_prompt
from entropix_mlx.cli import main

from .tiny import tiny_model, write_quantized_gguf

FIGURES = {
    "prefill_tps",
    "decode_tps",
    "ttft_s",
    "peak_memory_mb",
    "working_memory_mb",
    "prefill_cpu_ms",
    "decode_cpu_ms",
    "sampler_step_us",
}
RUN_FIGURES = FIGURES - {"sampler_step_us"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The mlx-lm copy of the weights goes here, not into the checkout's models/."""
    monkeypatch.setenv("ENTROPIX_MLX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_quick_bench_writes_documented_json(tiny_gguf, home, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--quick", "--model", str(tiny_gguf), "--pause-token", ".", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "entropix-mlx entropix" in result.output and "Goals" not in result.output

    report = json.loads(out.read_text())
    assert report["schema"] == "entropix-mlx-bench/2"
    assert {"os", "cpu", "mlx", "mlx_lm", "device"} <= set(report["machine"])
    assert report["settings"]["prompt_lengths"] == [32] and report["settings"]["repeats"] == 1
    labels = [row["label"] for row in report["rows"]]
    assert labels == [
        "mlx-lm greedy",
        "mlx-lm sampled",
        "entropix-mlx greedy",
        "entropix-mlx standard",
        "entropix-mlx entropix",
    ]
    for row in report["rows"]:
        assert set(row["figures"]) == FIGURES
        assert all(
            stats["median"] > 0 and len(stats["samples"]) == 1 for stats in row["figures"].values()
        )
        assert set(row["ratios"]) == (FIGURES if row["baseline"] else set())
        assert row["sampler_share"] > 0
    cold = report["cold_compile"]
    assert [(r["engine"], r["sampler"]) for r in cold["runs"]] == [
        ("mlx-lm", "sampled"),
        ("entropix-mlx", "entropix"),
    ]
    for run in cold["runs"]:
        assert set(run["cold"]) == set(run["warm"]) == RUN_FIGURES
        assert run["compiled_after_cold"] >= run["compiled_before"]
    assert cold["entropix_over_mlx_lm_cold_decode"] > 0
    assert "goals" not in report  # the project's targets: benchmarks/bench_goals.py
    bench_goals().main([str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [str(out), "Goals (ours / mlx-lm on the same weights):"]
    cold_goal = "first-use (cold compile cache) entropix decode / mlx-lm sampled decode >= 0.95"
    assert len(printed) == 2 + 6 and cold_goal in printed[-1]
    assert any(home.glob("mlx-lm/tiny-*/config.json"))  # the converted copy is cached


def test_float32_weights_run_against_mlx_lm_on_both_forms(home, tmp_path):
    from gguf import GGMLQuantizationType

    q4 = tmp_path / "tiny-q4.gguf"
    write_quantized_gguf(q4, tiny_model(seed=5), GGMLQuantizationType.Q4_1)
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--quick",
        "--no-cold",
        "--cpu-dtype",
        "float32",
        "--model",
        str(q4),
        "--pause-token",
        ".",
        "--json",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert settings["weight_dtype"] == "float32" and settings["cpu_dtype"] == "float32"
    rows = {row["label"]: row for row in report["rows"]}
    assert list(rows) == [
        "mlx-lm greedy",
        "mlx-lm sampled",
        "mlx-lm float32 greedy",
        "mlx-lm float32 sampled",
        "entropix-mlx float32 greedy",
        "entropix-mlx float32 standard",
        "entropix-mlx float32 entropix",
    ]
    ours = rows["entropix-mlx float32 greedy"]
    assert ours["baseline"] == "mlx-lm float32 greedy" and ours["reference"] == "mlx-lm greedy"
    assert set(ours["reference_ratios"]) == FIGURES
    assert not rows["mlx-lm float32 greedy"]["reference_ratios"]
    # float32 weights take more memory than the 4-bit ones, and as much as mlx-lm's float32 copy
    assert (
        rows["mlx-lm float32 greedy"]["figures"]["peak_memory_mb"]["median"]
        > rows["mlx-lm greedy"]["figures"]["peak_memory_mb"]["median"]
    )
    goals = bench_goals().evaluate_goals(report["rows"])
    assert "float32 prefill / mlx-lm prefill on the stored weights" in [g["goal"] for g in goals]
    assert "Ours on float32 weights / mlx-lm on the stored weights" in result.output


def test_prompt_longer_than_context_is_one_clear_line(tiny_gguf, home):
    args = [
        "bench",
        "--model",
        str(tiny_gguf),
        "--prompt-lengths",
        "300",
        "--pause-token",
        ".",
        "--no-cold",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "context window (256)" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("lengths", ["abc", "64,,-1", ""])
def test_bad_prompt_lengths_are_rejected(lengths):
    result = CliRunner().invoke(main, ["bench", "--prompt-lengths", lengths])
    assert result.exit_code == 2 and "--prompt-lengths" in result.output


def test_prompt_is_real_text_cut_to_length(tiny_gguf):
    from entropix_mlx.bench import BenchError
    from entropix_mlx.loading import load

    _, tokenizer, _ = load(str(tiny_gguf))
    ids = benchmark_prompt(tokenizer, 200)
    assert len(ids) == 200 and len(set(ids)) > 20  # letters, spaces, punctuation
    with pytest.raises(BenchError, match="longer than the benchmark text"):
        benchmark_prompt(tokenizer, 10**6)


def bench_goals():
    """benchmarks/bench_goals.py, a script outside the package."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_goals.py"
    spec = importlib.util.spec_from_file_location("bench_goals", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_goals_of_a_file_that_is_no_report_is_one_line(tmp_path):
    missing, other = tmp_path / "missing.json", tmp_path / "other.json"
    other.write_text('{"schema": "something else"}')
    for path, cause in ((missing, "FileNotFoundError"), (other, "KeyError('rows')")):
        with pytest.raises(SystemExit) as exit:
            bench_goals().main([str(path)])
        message = str(exit.value)
        assert message.startswith(f"{path}: not a readable `entropix-mlx bench --json` report (")
        assert cause in message and "\n" not in message


def test_ratios_and_goals_from_samples():
    class Row:
        def __init__(self, engine, sampler, baseline):
            self.engine, self.sampler, self.baseline = engine, sampler, baseline
            self.reference = None
            self.label = f"{engine} {sampler}"

    contenders = [Row("mlx-lm", "sampled", None), Row("entropix-mlx", "entropix", "mlx-lm sampled")]
    figures = dict.fromkeys(FIGURES, [1.0, 2.0, 3.0])
    samples = {
        (64, "mlx-lm sampled"): {
            **figures,
            "decode_tps": [10.0, 10.0, 11.0],
            "sampler_step_us": [1000.0] * 3,
        },
        (64, "entropix-mlx entropix"): {
            **figures,
            "decode_tps": [9.0, 9.0, 12.0],
            "sampler_step_us": [5000.0] * 3,
        },
    }
    ours = build_rows(samples, contenders, [64])[1]
    assert describe_samples([3.0, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "samples": [3.0, 1.0, 2.0],
    }
    assert (
        ours["ratios"]["decode_tps"] == pytest.approx(0.9) and ours["ratios"]["prefill_tps"] == 1.0
    )
    assert ours["sampler_share"] == pytest.approx(5000e-6 * 9.0)
    goals = {g["goal"]: g for g in bench_goals().evaluate_goals([ours])}
    assert not goals["entropix decode / mlx-lm sampled decode"]["met"]
    assert goals["peak memory / mlx-lm peak memory"]["met"]


def test_json_into_a_missing_folder_fails_before_any_run(tmp_path):
    out = tmp_path / "no-such-folder" / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", str(out)])
    assert result.exit_code == 1
    assert f"cannot write --json {out}: its folder does not exist" in result.output
    assert "Traceback" not in result.output and not out.parent.exists()
