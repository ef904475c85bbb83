"""`entropix-mlx eval --quick` end to end on the embedded default model, one smoke run per task."""

import json
import math

import pytest
from click.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.evaluation import SCHEMA, TASKS
from entropix_mlx.evaluation.tasks import DEFAULT_DATA_DIR

pytestmark = pytest.mark.real_model

SUMMARY_KEYS = [
    "schema",
    "task",
    "kind",
    "model",
    "data",
    "items",
    "seeds",
    "max_tokens",
    "stop",
    "quick",
    "started",
    "wall_seconds",
    "prefix_tokens",
    "prefill_seconds",
    "chance",
    "arms",
    "comparisons",
]
ARM_KEYS = [
    "name",
    "sampler",
    "settings",
    "answers",
    "correct",
    "accuracy",
    "ci95",
    "extraction_failures",
    "finish",
    "tokens_per_answer",
    "row_tokens_per_answer",
    "forks_per_answer",
    "seconds_per_answer",
    "by_group",
    "strategies",
    "pause_per_100_tokens",
]
RECORD_KEYS = [
    "task",
    "item",
    "id",
    "group",
    "arm",
    "sampler",
    "seed",
    "sample_seed",
    "gold",
    "answer",
    "correct",
    "extracted",
    "completion",
    "finish",
    "tokens",
    "seconds",
    "strategies",
    "pause_tokens",
    "scores",
    "row_tokens",
    "forks",
    "paths",
    "path_answers",
]
COMPARISON_KEYS = [
    "arm",
    "baseline",
    "pairs",
    "both",
    "arm_only",
    "baseline_only",
    "neither",
    "accuracy_delta",
    "p_value",
]


@pytest.fixture(scope="module", autouse=True)
def needs_data_and_model(default_model):
    if not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(
            f"{DEFAULT_DATA_DIR} is absent: the shared evaluation data must sit beside the checkout"
        )


@pytest.mark.parametrize("task", TASKS)
def test_quick_eval_writes_the_documented_files(task, tmp_path):
    out = tmp_path / task
    result = CliRunner().invoke(cli.main, ["eval", "--task", task, "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert list(summary) == SUMMARY_KEYS and summary["schema"] == SCHEMA and summary["quick"]
    assert all(list(arm) == ARM_KEYS for arm in summary["arms"])
    assert all(list(c) == COMPARISON_KEYS for c in summary["comparisons"])
    assert all(list(r) == RECORD_KEYS for r in records)
    assert sum(arm["answers"] for arm in summary["arms"]) == len(records)
    assert summary["data"]["licence"] and summary["data"]["source"]
    check = {"arith": check_arith, "gsm8k": check_gsm8k}.get(task, check_choice)
    check(summary, records)


def check_arith(summary, records):
    assert [a["name"] for a in summary["arms"]] == ["greedy", "standard", "entropix"]
    assert summary["items"] == 3 and len(records) == 3 * 3
    greedy = [r for r in records if r["arm"] == "greedy"]
    # Few-shot arithmetic: the model answers with a number and stops at the newline.
    assert all(r["extracted"] and r["finish"] == "stop_string" for r in greedy), greedy
    assert sum(r["correct"] for r in greedy) >= 1, greedy
    entropix = next(a for a in summary["arms"] if a["name"] == "entropix")
    assert math.isclose(sum(entropix["strategies"].values()), 1.0, abs_tol=1e-5)
    assert entropix["pause_per_100_tokens"] is not None


def check_gsm8k(summary, records):
    assert summary["items"] == 2 and summary["max_tokens"] == 16 and len(records) == 2 * 3
    assert summary["prefix_tokens"] > 50  # the one-shot CoT prefix, prefilled once
    for r in records:  # an answer may be empty: the model can end it (EOS) at once
        assert 1 <= r["tokens"] <= 16 and (r["finish"] != "max_tokens" or r["tokens"] == 16), r
        assert "\n\n" not in r["completion"] and "Question:" not in r["completion"], r


def check_choice(summary, records):
    assert [a["name"] for a in summary["arms"]] == ["loglik-sum", "loglik-norm"]
    assert summary["items"] == 3 and len(records) == 2 * 3
    assert 0.2 <= summary["chance"] <= 0.34
    for r in records:
        assert all(math.isfinite(s) and s < 0 for s in r["scores"])
        assert r["answer"] == max(range(len(r["scores"])), key=r["scores"].__getitem__)
