"""Answer-level arms (CoT-decoding, self-consistency), look-ahead arms, and tuning for accuracy."""

from collections import Counter

import mlx.core as mx
import pytest

from entropix_mlx.engine.lookahead import Rollout
from entropix_mlx.evaluation import EvalError, load_task, make_arms, run_eval, summarize
from entropix_mlx.evaluation.arms import Arm
from entropix_mlx.evaluation.tuning import (
    Candidate,
    best,
    branching_grid,
    single_path_grid,
)
from entropix_mlx.evaluation.voting import (
    answer_margin,
    cot_decoding_choice,
    majority_vote,
)
from entropix_mlx.sampling import STRATEGIES, SamplerConfig, choose_strategy

from .tiny import tiny_model, write_float_gguf


def test_majority_vote_takes_the_most_common_answer_first_seen_on_ties():
    assert majority_vote(["7", "x 5", "5", "no number"]) == 1
    assert majority_vote(["3", "4", "4", "3"]) == 0
    assert majority_vote(["none", "nothing"]) == 0


def test_answer_margin_covers_the_answer_tokens_only():
    pieces, margins = ["The answer is ", "1", "2", ".\n"], [0.1, 0.9, 0.5, 0.0]
    assert answer_margin(pieces, margins, "12") == pytest.approx(0.7)
    assert answer_margin(pieces, margins, "1000") == pytest.approx(0.375)  # not spelled: all tokens


class Chars:
    """Token i is chr(i)."""

    def decode(self, ids):
        return "".join(map(chr, ids))


def rollout(text, margins):
    from entropix_mlx.engine.batch import RowStep
    from entropix_mlx.engine.decode import TokenStep

    r = Rollout(0, margins=list(margins))
    r.steps = [RowStep(0, TokenStep(ord(c), 0.0, None), None) for c in text]
    return r


def test_cot_decoding_sums_margins_by_answer():
    choose = cot_decoding_choice(stops=("\n",))
    # "7" twice with small margins beats "8" once with a larger one (0.3 + 0.3 > 0.5); of the two
    # "7" paths the more confident wins.
    paths = [
        rollout(" 8\n", [0.0, 0.5, 0.0]),
        rollout(" 7\n", [0.0, 0.25, 0.0]),
        rollout(" 7\n", [0.0, 0.35, 0.0]),
        rollout(" x\n", [1.0, 1.0, 1.0]),
    ]
    assert choose(paths, Chars()) == 2
    assert choose([rollout(" x", [0.5, 0.5]), rollout(" y", [0.1, 0.1])], Chars()) == 0


def test_make_arms_answer_level():
    arms = make_arms(["greedy", "cot-decoding", "self-consistency"], {"pause_token": "."}, paths=3)
    assert [a.name for a in arms] == ["greedy", "cot-decoding@3", "self-consistency@3"]
    assert arms[1].deterministic and not arms[2].deterministic
    assert arms[2].config.temp == 0.7 and arms[2].path_sampler == "standard"
    for paths in (1, 9):
        with pytest.raises(EvalError, match="--paths"):
            make_arms(["cot-decoding"], paths=paths)


def test_answer_level_and_branching_arms_run_and_count_their_compute(tiny):
    model, tokenizer, _ = tiny
    task = load_task("arith", limit=3)
    config = SamplerConfig(pause_token=".")
    branchy = config.replace(
        low_ent=0.0,
        low_vent=0.0,
        med_ent=50.0,
        high_ent=60.0,
        high_vent=0.001,
        branch_k=2,
        branch_horizon=2,
        max_branch_points=2,
    )
    arms = [
        Arm("standard", "standard", config.replace(temp=0.7)),
        *make_arms(["cot-decoding", "self-consistency"], {"pause_token": "."}, paths=3),
        Arm("entropix:branchy", "entropix", branchy),
    ]
    run = run_eval(
        model, tokenizer, task, arms, seeds=(1,), max_tokens=5, batch_size=4, progress=False
    )
    by_arm = {}
    for r in run.records:
        by_arm.setdefault(r["arm"], []).append(r)
    assert all(len(records) == 3 for records in by_arm.values())
    for r in by_arm["self-consistency@3"]:
        assert r["paths"] == 3 and len(r["path_answers"]) == 3 and r["row_tokens"] >= r["tokens"]
        counts = Counter(a for a in r["path_answers"] if a is not None)
        if counts:
            assert counts[r["answer"]] == max(counts.values())
    standard = {r["item"]: r for r in by_arm["standard"]}
    for r in by_arm["self-consistency@3"]:  # path 0 has the standard arm's seed: same text
        if r["path_answers"][0] == r["answer"]:
            assert standard[r["item"]]["answer"] == r["answer"]
    for r in by_arm["cot-decoding@3"]:
        assert r["seed"] is None and r["forks"] == 1 and r["row_tokens"] > r["tokens"]
    assert any(r["forks"] for r in by_arm["entropix:branchy"])
    assert all(r["forks"] <= 2 for r in by_arm["entropix:branchy"])
    summary = summarize(task, run, arms, model="tiny", seeds=(1,), max_tokens=5)
    rows = {a["name"]: a for a in summary["arms"]}
    assert (
        rows["self-consistency@3"]["row_tokens_per_answer"]
        > rows["standard"]["row_tokens_per_answer"]
    )


def test_single_path_grid_switches_really_switch_off():
    base = SamplerConfig()
    grid = dict(single_path_grid(base, vocab_size=49152))
    assert len(grid) == 9 and grid["as-is, argmax x1"] == base
    ent = mx.linspace(0, 15.59, 200)  # up to log2(49152)
    for vent in (0.0, 0.05, 3.0, 30.0):
        metrics = {"logits_entropy": ent, "logits_varentropy": mx.full(ent.shape, vent)}
        off = set(choose_strategy(metrics, grid["no pause, no resample, argmax x1"]).tolist())
        assert STRATEGIES.index("pause") not in off and STRATEGIES.index("resample") not in off
        no_resample = set(choose_strategy(metrics, grid["no resample, argmax x1"]).tolist())
        assert STRATEGIES.index("resample") not in no_resample
    widened = grid["as-is, argmax x2.5"]
    assert widened.low_ent < widened.med_ent and widened.low_vent < widened.high_vent


def test_branching_grid_and_the_tie_rule():
    grid = branching_grid(SamplerConfig())
    assert len(grid) == 8 and all(c.branch_k in (2, 3) for _, c in grid)
    a, b, c = (
        Candidate(n, SamplerConfig(), correct, 10) for n, correct in (("a", 5), ("b", 6), ("c", 6))
    )
    assert best([a, b, c]) is b  # the earlier of equals
    paused, clean = (
        Candidate(n, SamplerConfig(), 6, 10, pause_tokens=p) for n, p in (("p", 3), ("q", 0))
    )
    assert best([a, paused, clean]) is clean  # of equals, the fewest pause tokens
    assert best([Candidate("r", SamplerConfig(), 7, 10, pause_tokens=9), clean]).name == "r"


def test_cli_calibrate_for_accuracy_writes_a_preset_with_its_evidence(tmp_path):
    from click.testing import CliRunner

    from entropix_mlx.cli import main

    model = write_float_gguf(tmp_path / "tiny.gguf", tiny_model(seed=7))
    base = tmp_path / "base.toml"
    base.write_text('pause_token = "."\n')
    out = tmp_path / "tuned.toml"
    result = CliRunner().invoke(
        main,
        [
            "calibrate",
            "--objective",
            "accuracy",
            "--task",
            "arith",
            "--limit",
            "2",
            "-m",
            str(model),
            "--config",
            str(base),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "no pause, no resample, argmax x2.5" in result.output and "<- chosen" in result.output
    text = out.read_text()
    assert "development arithmetic items (seed 1" in text and "Chosen:" in text
    tuned = SamplerConfig.from_toml(out)
    assert tuned.pause_token == "." and tuned.branch_k == 0
