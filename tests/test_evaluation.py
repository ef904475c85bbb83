"""The evaluation: tasks, answer extraction, statistics, the paired runner (tiny model) and the CLI."""

import json
import math

import mlx.core as mx
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from entropix_mlx import cli
from entropix_mlx.evaluation import (
    EvalError,
    EvalRun,
    Item,
    Task,
    arith_items,
    extract_answer,
    format_table,
    item_seed,
    load_task,
    make_arms,
    mcnemar_exact,
    paired_counts,
    parse_seeds,
    plan,
    run_eval,
    same_number,
    summarize,
    wilson_interval,
)
from entropix_mlx.evaluation.arms import Arm
from entropix_mlx.evaluation.choice import score_choices
from entropix_mlx.evaluation.report import SCHEMA
from entropix_mlx.evaluation.tasks import ARITH_SHOTS, gsm8k_prefix
from entropix_mlx.sampling import SamplerConfig

from .helpers import one_line_error

# --- arithmetic items ----------------------------------------------------------------------


def test_arith_items_are_deterministic_per_seed_and_stable_under_limit():
    assert arith_items(30, seed=5) == arith_items(30, seed=5)
    assert arith_items(30, seed=5) != arith_items(30, seed=6)
    assert arith_items(40, seed=5)[:10] == arith_items(10, seed=5)
    assert [item.group for item in arith_items(6)] == ["level-1", "level-2", "level-3"] * 2


def test_arith_answers_are_right():
    items = arith_items(600, seed=3)
    for item in items:
        expression = item.prompt.removesuffix(" =")
        assert eval(expression) == int(item.answer), item  # noqa: S307 - our own digits and + - *
    for shot in ARITH_SHOTS:
        expression, answer = shot.split(" = ")
        assert eval(expression) == int(answer), shot  # noqa: S307
    answers = {
        level: [abs(int(i.answer)) for i in items if i.group == f"level-{level}"]
        for level in (1, 2, 3)
    }
    assert max(answers[1]) <= 18 and max(answers[2]) <= 81 and max(answers[3]) > 100
    assert any(int(i.answer) < 0 for i in items if i.group == "level-3")
    assert not any(int(i.answer) < 0 for i in items if i.group != "level-3")


# --- answer extraction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is 42.", "42"),
        ("#### 42", "42"),
        ("= 1,234", "1234"),
        (" -27", "-27"),
        ("52 - 79 = -27\n", "-27"),
        ("So the answer is -5 degrees.", "-5"),
        ("3.5", "3.5"),
        ("It costs $12.50 in all.", "12.5"),
        ("2.0", "2"),
        ("She pays $1,000.50.", "1000.5"),
        ("42 apples, and then 7 more were eaten", "7"),
        ("So the answer is 18. Then she left with 3 friends.", "18"),
        ("the answer is: $25", "25"),
        ("#### 5\nand 9 more", "5"),
        ("3 + 2 = 5. So the answer is 5.", "5"),
        ("1, 2, 3", "3"),
        ("5-3", "3"),
        ("temperatures fell to \u22124", "-4"),
        (" 12", "12"),
        ("no number here", None),
        ("", None),
        ("So the answer is unclear.", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_same_number():
    assert same_number("18", "18") and same_number("18", "18.00") and same_number("1234", "1,234")
    assert (
        not same_number("17", "18") and not same_number(None, "18") and not same_number("-5", "5")
    )


# --- statistics ----------------------------------------------------------------------------


def test_wilson_interval_matches_hand_computation():
    # 8/10, z = 1.96: z^2 = 3.8416, denominator 1 + 0.38416 = 1.38416,
    # centre (0.8 + 0.19208) / 1.38416 = 0.716738,
    # half-width 1.96 / 1.38416 * sqrt(0.8 * 0.2 / 10 + 3.8416 / 400) = 1.416022 * 0.160012 = 0.226581.
    low, high = wilson_interval(8, 10, z=1.96)
    assert low == pytest.approx(0.716738 - 0.226581, abs=1e-5)
    assert high == pytest.approx(0.716738 + 0.226581, abs=1e-5)
    # 0/10: centre 0.19208 / 1.38416 = 0.138771, half-width 1.416022 * sqrt(0.009604) = 0.138771: [0, 0.277542].
    low, high = wilson_interval(0, 10, z=1.96)
    assert low == pytest.approx(0.0, abs=1e-6) and high == pytest.approx(0.277542, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("correct, n", [(0, 5), (3, 7), (50, 100), (199, 200), (200, 200)])
def test_wilson_interval_matches_scipy(correct, n):
    expected = scipy_stats.binomtest(correct, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(correct, n) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_mcnemar_matches_hand_computation():
    # b=1, c=5: n=6, 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * 7 / 64.
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    # b=0, c=5: 2 * 1 / 32.
    assert mcnemar_exact(0, 5) == pytest.approx(1 / 16)
    # b=2, c=10: 2 * (1 + 12 + 66) / 4096.
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    # Balanced or empty: no evidence either way.
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


@pytest.mark.parametrize("b, c", [(0, 1), (4, 9), (7, 7), (12, 30), (100, 130)])
def test_mcnemar_matches_scipy_binomial_test(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(
        scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9
    )


def test_paired_counts():
    a = {1: True, 2: True, 3: False, 4: False, 5: True}
    b = {1: True, 2: False, 3: True, 4: False, 6: True}  # 5 and 6 have no partner
    counts = paired_counts(a, b)
    assert (counts.both, counts.only_a, counts.only_b, counts.neither, counts.pairs) == (
        1,
        1,
        1,
        1,
        4,
    )
    assert counts.p_value == 1.0


# --- tasks, seeds and bad input ------------------------------------------------------------


def test_parse_seeds_and_bad_seeds():
    assert parse_seeds("1,2,3") == (1, 2, 3) and parse_seeds(" 7 ") == (7,)
    for bad, message in [
        ("a,b", "comma-separated integers"),
        ("1,,2", "comma-separated integers"),
        ("", "comma-separated integers"),
        ("1,1", "lists 1 twice"),
        ("-1", ">= 0"),
    ]:
        with pytest.raises(EvalError, match=message):
            parse_seeds(bad)


def test_quick_plan_is_small():
    quick = plan("gsm8k", None, (4, 5, 6), None, quick=True)
    assert (quick.limit, quick.seeds, quick.max_tokens, quick.shots) == (2, (4,), 16, 1)
    assert plan("arith", 50, (1, 2), None, quick=False) == plan("arith", 50, (1, 2), None, False)
    assert plan("arc-easy", None, (0,), None, quick=True).limit == 3


def test_load_task_errors(tmp_path):
    with pytest.raises(
        EvalError, match="unknown task 'nope'; choose one of arith, gsm8k, arc-easy, arc-challenge"
    ):
        load_task("nope")
    with pytest.raises(EvalError, match=f"missing data file {tmp_path / 'gsm8k_dev.jsonl'}"):
        load_task("gsm8k", data=tmp_path)
    bad = tmp_path / "arc_easy_dev.jsonl"
    bad.write_text('{"id": "x", "question": "q", "choices": ["a", "b"]}\n')
    with pytest.raises(EvalError, match=r"arc_easy_dev.jsonl:1 is not an item \(missing gold\)"):
        load_task("arc-easy", data=tmp_path)
    bad.write_text("not json\n")
    with pytest.raises(EvalError, match="arc_easy_dev.jsonl:1 is not JSON"):
        load_task("arc-easy", data=bad)
    with pytest.raises(EvalError, match="shots must be in 1..2"):
        gsm8k_prefix("Question: a\nAnswer: 1\n\nQuestion: b\nAnswer: 2\n\n", 3)


def write_eval_data(folder):
    """A made-up evaluation folder in the dev files' format (no real items are copied)."""
    folder.mkdir(exist_ok=True)
    (folder / "gsm8k_8shot_cot_prefix.txt").write_text(
        "Question: Ann has 2 pens and buys 3. How many?\nAnswer: 2 + 3 = 5. So the answer is 5.\n\n"
        "Question: Bo has 9 cups and breaks 4. How many?\nAnswer: 9 - 4 = 5. So the answer is 5.\n\n"
    )
    rows = [
        {
            "id": f"g{i}",
            "question": f"Cy has {i} eggs and gets {i} more. How many?",
            "answer": "...",
            "short_answer": str(2 * i),
        }
        for i in range(1, 4)
    ]
    (folder / "gsm8k_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    arc = [
        {
            "id": f"a{i}",
            "question": f"Which is number {i}?",
            "choices": ["one", "two", "three"],
            "gold": i % 3,
        }
        for i in range(4)
    ]
    for name in ("arc_easy_dev.jsonl", "arc_challenge_dev.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in arc))
    return folder


def test_load_task_reads_the_data_folder(tmp_path):
    folder = write_eval_data(tmp_path / "data")
    gsm8k = load_task("gsm8k", data=folder, limit=2, shots=1)
    assert gsm8k.prefix.endswith("So the answer is 5.\n\n") and gsm8k.prefix.count("Question:") == 1
    assert [i.answer for i in gsm8k.items] == ["2", "4"]
    assert gsm8k.items[0].prompt == "Question: Cy has 1 eggs and gets 1 more. How many?\nAnswer:"
    arc = load_task("arc-challenge", data=folder / "arc_challenge_dev.jsonl")
    assert (
        len(arc.items) == 4
        and arc.items[1].choices == ("one", "two", "three")
        and arc.items[1].answer == "1"
    )
    assert arc.kind == "choice" and arc.licence == "CC BY-SA 4.0"


def test_item_seed_is_stable_and_distinct():
    assert item_seed("arith", 3, 1) == item_seed("arith", 3, 1)
    seeds = {item_seed("arith", i, s) for i in range(50) for s in range(3)}
    assert len(seeds) == 150 and all(0 <= s < 2**31 for s in seeds)


def test_make_arms():
    arms = make_arms(
        preset={"pause_token": "."}, presets=[("hot", SamplerConfig(temp=1.0, pause_token="."))]
    )
    assert [a.name for a in arms] == ["greedy", "standard", "entropix", "entropix:hot"]
    standard = arms[1]
    assert standard.config.temp == 0.7 and standard.config.top_p == SamplerConfig().top_p
    assert arms[2].config == SamplerConfig(pause_token=".") and arms[0].deterministic
    with pytest.raises(EvalError, match="unknown sampler 'beam'"):
        make_arms(["beam"])
    with pytest.raises(EvalError, match="two arms are named 'entropix:a'"):
        make_arms(["greedy"], presets=[("a", SamplerConfig()), ("a", SamplerConfig())])


# --- summary -------------------------------------------------------------------------------


def record(arm, item, seed, correct, **extra):
    base = {
        "task": "t",
        "item": item,
        "id": str(item),
        "group": None,
        "arm": arm,
        "sampler": arm.split(":")[0],
        "seed": seed,
        "sample_seed": None,
        "gold": "1",
        "answer": "1" if correct else "2",
        "correct": correct,
        "extracted": True,
        "completion": "",
        "finish": "stop_string",
        "tokens": 2,
        "seconds": 0.5,
        "strategies": {},
        "pause_tokens": None,
        "scores": None,
    }
    return {**base, **extra}


def test_summary_pairs_greedy_with_every_seed():
    items = tuple(Item(i, str(i), "", "1") for i in range(4))
    task = Task("t", "generate", "", items, stop=("\n",), max_tokens=4)
    greedy = [record("greedy", i, None, c) for i, c in enumerate([True, True, False, False])]
    standard = [
        record("standard", i, s, c)
        for s in (0, 1)
        for i, c in enumerate(
            [True, False, True, False] if s == 0 else [False, False, False, False]
        )
    ]
    entropix = [
        record("entropix", i, s, c, strategies={"argmax": 1, "adaptive": 1}, pause_tokens=1)
        for s in (0, 1)
        for i, c in enumerate([True, True, False, False])
    ]
    arms = make_arms(preset={"pause_token": "."})
    summary = summarize(
        task, EvalRun(greedy + standard + entropix), arms, model="m", seeds=(0, 1), max_tokens=4
    )
    by_name = {a["name"]: a for a in summary["arms"]}
    assert by_name["greedy"]["answers"] == 4 and by_name["greedy"]["accuracy"] == 0.5
    assert by_name["standard"]["accuracy"] == 0.25  # 2 of 8
    assert by_name["entropix"]["strategies"]["adaptive"] == 0.5
    assert by_name["entropix"]["pause_per_100_tokens"] == 50.0
    assert by_name["standard"]["strategies"] is None
    assert by_name["greedy"]["finish"] == {"eos": 0, "stop_string": 4, "max_tokens": 0}
    rows = {(c["arm"], c["baseline"]): c for c in summary["comparisons"]}
    assert set(rows) == {("standard", "greedy"), ("entropix", "greedy"), ("entropix", "standard")}
    vs_greedy = rows[("standard", "greedy")]  # 8 pairs: greedy's answer stands for both seeds
    assert (vs_greedy["pairs"], vs_greedy["arm_only"], vs_greedy["baseline_only"]) == (8, 1, 3)
    assert vs_greedy["p_value"] == pytest.approx(mcnemar_exact(1, 3))
    assert (
        rows[("entropix", "greedy")]["arm_only"]
        == rows[("entropix", "greedy")]["baseline_only"]
        == 0
    )
    assert summary["schema"] == SCHEMA and json.loads(json.dumps(summary)) == summary
    table = format_table(summary)
    assert "standard vs greedy" in table and "entropix strategies" in table and "25.0%" in table


# --- the runner on a tiny model ------------------------------------------------------------


def test_choice_scores_match_a_full_forward_pass(tiny):
    model, tokenizer, _ = tiny
    context, choices = "Question: tat?\nAnswer:", ["tot", "a b c"]
    scores = score_choices(model, tokenizer, context, choices)
    context_ids = list(tokenizer.encode(context))
    for choice, score in zip(choices, scores):
        ids = list(tokenizer.encode(" " + choice, add_special_tokens=False))
        logits = model(mx.array([context_ids + ids]))[0].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        expected = sum(logprobs[len(context_ids) - 1 + j, t].item() for j, t in enumerate(ids))
        assert score.logprob == pytest.approx(expected, abs=1e-3)
        assert score.tokens == len(ids) and score.chars == len(choice) + 1


def tiny_arms():
    config = SamplerConfig(pause_token=".")
    return [
        Arm("greedy", "greedy", config),
        Arm("standard", "standard", config.replace(temp=0.7)),
        Arm("entropix", "entropix", config),
        Arm("entropix:copy", "entropix", config),
    ]


def test_identical_arms_have_no_discordant_pairs_and_runs_reproduce(tiny):
    model, tokenizer, _ = tiny
    task = load_task("arith", limit=4)
    first = run_eval(
        model, tokenizer, task, tiny_arms(), seeds=(1, 2), max_tokens=5, progress=False
    )
    assert len(first.records) == 4 * (1 + 3 * 2)
    assert all(r["seed"] is None for r in first.records if r["arm"] == "greedy")
    assert all(1 <= r["tokens"] <= 5 for r in first.records)
    assert all(r["finish"] in ("eos", "stop_string", "max_tokens") for r in first.records)
    entropix = [r for r in first.records if r["arm"] == "entropix"]
    assert all(sum(r["strategies"].values()) == r["tokens"] for r in entropix)
    summary = summarize(
        task,
        first,
        tiny_arms(),
        model="tiny",
        seeds=(1, 2),
        max_tokens=5,
        baselines=("greedy", "standard", "entropix"),
    )
    copy = next(
        c
        for c in summary["comparisons"]
        if (c["arm"], c["baseline"]) == ("entropix:copy", "entropix")
    )
    assert copy["pairs"] == 8 and copy["arm_only"] == copy["baseline_only"] == 0
    texts = {(r["arm"], r["item"], r["seed"]): r["completion"] for r in first.records}
    assert all(
        texts[("entropix:copy", i, s)] == texts[("entropix", i, s)]
        for i in range(4)
        for s in (1, 2)
    )
    again = run_eval(
        model, tokenizer, task, tiny_arms(), seeds=(1, 2), max_tokens=5, progress=False
    )
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(again.records) == strip(first.records)


def test_batched_answers_equal_unbatched_ones(tiny):
    model, tokenizer, _ = tiny
    task = load_task("arith", limit=5)
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    runs = [
        run_eval(
            model,
            tokenizer,
            task,
            tiny_arms(),
            seeds=(1, 2),
            max_tokens=5,
            batch_size=size,
            progress=False,
        ).records
        for size in (1, 4, 4)
    ]
    assert strip(runs[1]) == strip(runs[2])  # same seed and batch size: the same answers
    assert strip(runs[1]) == strip(runs[0])  # and the same as one answer at a time
    assert len(runs[0]) == 5 * (1 + 3 * 2)


def test_stop_strings_cut_the_completion(tiny):
    model, tokenizer, _ = tiny
    # Whatever comes first ends the answer: any byte's character, or a partial UTF-8 sequence.
    every_byte = tuple(chr(c) for c in range(1, 256)) + ("\ufffd",)
    task = Task(
        "t", "generate", "tat tot\n", (Item(0, "x", "1 + 1 =", "2"),), stop=every_byte, max_tokens=6
    )
    records = run_eval(model, tokenizer, task, tiny_arms()[:2], seeds=(0,), progress=False).records
    for r in records:
        assert r["finish"] in ("stop_string", "eos") and r["completion"].strip() == ""
    task = Task("t", "generate", "tat tot\n", task.items, stop=(), max_tokens=3)
    records = run_eval(model, tokenizer, task, tiny_arms()[:1], seeds=(0,), progress=False).records
    assert records[0]["finish"] in ("max_tokens", "eos") and records[0]["tokens"] <= 3


# --- the command line (tiny model) ---------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli.main, ["eval", *map(str, args)])


def test_cli_bad_input(tiny_gguf, tmp_path):
    one_line_error(
        invoke("-t", "nope", "-m", tiny_gguf), "unknown task 'nope'; choose one of arith"
    )
    one_line_error(invoke("-t", "gsm8k", "-m", tiny_gguf, "--data", tmp_path), "missing data file")
    one_line_error(
        invoke("-t", "arith", "-m", tiny_gguf, "--seeds", "1,x"), "--seeds takes comma-separated"
    )
    one_line_error(
        invoke("-t", "arith", "-m", tiny_gguf, "--seeds", "2,2"), "--seeds lists 2 twice"
    )
    # The tiny vocabulary has no single "..." token: the entropix arm says so in one line.
    one_line_error(
        invoke("-t", "arith", "-m", tiny_gguf, "--quick", "-s", "entropix"), "pause_token"
    )


def read_outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    return summary, records


def test_cli_arith_quick_with_a_preset_writes_the_documented_files(tiny_gguf, tmp_path):
    preset = tmp_path / "tinydot.toml"
    preset.write_text('pause_token = "."\ntemp = 0.9\n')
    out = tmp_path / "out"
    args = ["-t", "arith", "-m", tiny_gguf, "--quick", "-s", "greedy", "-s", "standard"]
    args += ["--config", preset, "--seeds", "3,4"]
    result = invoke(*args, "--out", out)
    assert result.exit_code == 0, result.output
    summary, records = read_outputs(out)
    assert [a["name"] for a in summary["arms"]] == ["greedy", "standard", "entropix:tinydot"]
    assert summary["arms"][2]["settings"]["temp"] == 0.9 and summary["seeds"] == [3]
    assert summary["items"] == 3 and summary["quick"] and len(records) == 3 * 3
    assert {(c["arm"], c["baseline"]) for c in summary["comparisons"]} == {
        ("standard", "greedy"),
        ("entropix:tinydot", "greedy"),
        ("entropix:tinydot", "standard"),
    }
    for arm in summary["arms"]:
        assert sum(arm["finish"].values()) == arm["answers"] == 3
        low, high = arm["ci95"]
        assert 0 <= low <= arm["accuracy"] <= high <= 1
    assert "paired comparison" in result.output and "entropix:tinydot strategies" in result.output
    batched = invoke(*args, "--out", tmp_path / "batched", "--batch-size", 4)
    assert batched.exit_code == 0, batched.output
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(read_outputs(tmp_path / "batched")[1]) == strip(records)


@pytest.mark.parametrize("task", ["gsm8k", "arc-easy"])
def test_cli_data_tasks_on_made_up_data(tiny_gguf, tmp_path, task):
    data = write_eval_data(tmp_path / "data")
    out = tmp_path / "out"
    result = invoke(
        "-t", task, "-m", tiny_gguf, "--quick", "-s", "greedy", "--data", data, "--out", out
    )
    assert result.exit_code == 0, result.output
    summary, records = read_outputs(out)
    assert summary["data"]["file"] == str(data / f"{task.replace('-', '_')}_dev.jsonl")
    if task == "arc-easy":
        assert [a["name"] for a in summary["arms"]] == ["loglik-sum", "loglik-norm"]
        assert summary["chance"] == pytest.approx(1 / 3) and len(records) == 2 * 3
        assert all(
            len(r["scores"]) == 3 and all(math.isfinite(s) and s < 0 for s in r["scores"])
            for r in records
        )
        assert summary["comparisons"][0]["arm"] == "loglik-norm"
    else:
        assert len(records) == 2 and all(r["tokens"] <= 16 for r in records)
        assert summary["arms"][0]["answers"] == 2


def test_an_installed_package_asks_for_data(monkeypatch, tmp_path):
    from entropix_mlx.evaluation import tasks

    monkeypatch.setattr(tasks, "CHECKOUT", tmp_path / "site-packages")
    with pytest.raises(
        EvalError,
        match=r"^the gsm8k data has no default outside a source checkout; pass --data FOLDER "
        r"\(docs/evaluation.md says where to get it\)$",
    ):
        load_task("gsm8k", limit=1)
