"""The writing task (issue 26): text measures on hand-made tokens, the statistics, the prompts, the
scorer and the runner on a tiny model, the summary, the frontier, the CLI and its plot."""

import itertools
import json
import struct
import sys

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from entropix_mlx import cli
from entropix_mlx.engine.prompt import chat_prompt_ids
from entropix_mlx.errors import EvalError
from entropix_mlx.evaluation import EvalRun, Item, Task, run_eval
from entropix_mlx.evaluation.arms import Arm
from entropix_mlx.evaluation.bootstrap import Resamples, paired_mean_difference, weighted_means
from entropix_mlx.evaluation.frontier import (
    against_curve,
    curve_at,
    families,
    parse_values,
    sweep_arms,
)
from entropix_mlx.evaluation.penalty import PENALTY_CONTEXT
from entropix_mlx.evaluation.stats import wilcoxon_signed_rank
from entropix_mlx.evaluation.text_metrics import (
    corpus_rep,
    distinct_n,
    diversity,
    is_loop,
    ngram_counts,
    repeats_at_end,
    seq_rep,
    unknown_words,
)
from entropix_mlx.evaluation.writing import (
    CONTINUATION_PREFIX,
    LOOP_BASE,
    LOOP_REPEATS,
    MAX_TOKENS,
    NEUTRAL_REQUEST,
    load_writing_task,
    prose_runs,
    read_requests,
)
from entropix_mlx.evaluation.writing_report import format_writing_table, summarize_writing
from entropix_mlx.evaluation.writing_scores import WritingScorer, continuation_logprobs
from entropix_mlx.loading import load
from entropix_mlx.sampling import SamplerConfig

from .helpers import one_line_error
from .tiny import tiny_model, write_float_gguf

# --- text measures on hand-made tokens --------------------------------------------------------


def test_seq_rep_counts_repeated_ngrams():
    # 4-grams of 1 2 3 4 1 2 3 4: 1234 2341 3412 4123 1234 -> 4 distinct of 5
    assert seq_rep([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(0.2)
    assert seq_rep([1, 2, 3], 4) == 0.0 and seq_rep([5, 6, 7, 8], 4) == 0.0
    assert seq_rep([7] * 6, 2) == pytest.approx(1 - 1 / 5)


def test_loop_flag():
    assert repeats_at_end([9, 1, 2, 3, 1, 2, 3])  # two copies of a 3-token phrase
    assert not repeats_at_end([9, 1, 2, 1, 2])  # a 2-token phrase is too short ...
    assert not repeats_at_end([1, 2] * 3)  # ... until two copies of "1 2 1 2" fit
    assert repeats_at_end([1, 2] * 4)
    assert repeats_at_end([5, 6, 7, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2])  # cut mid-phrase
    assert not repeats_at_end([1, 2, 3, 4, 1, 2, 3, 5]) and not repeats_at_end([])
    # No repeated tail, but 10 4-grams of which 5 distinct: seq-rep-4 = 0.5 > 0.3
    ids = [1, 2, 3, 4] * 3 + [5]
    assert not repeats_at_end(ids) and seq_rep(ids, 4) == pytest.approx(0.5)
    assert is_loop(ids, ended=False) and not is_loop(ids, ended=True)
    assert is_loop([9, 1, 2, 3, 1, 2, 3], ended=True)


def test_corpus_rep_diversity_and_distinct():
    a, b = [1, 2, 1, 2, 1], [3, 4, 5]
    counts = [ngram_counts(a), ngram_counts(b)]
    # 2-grams: a 12 21 12 21 (2 distinct of 4), b 34 45 (2 of 2) -> 1 - 4/6
    assert corpus_rep(counts, 2) == pytest.approx(1 / 3)
    assert corpus_rep(counts, 3) == pytest.approx(1 / 4)  # a 121 212 121, b 345 -> 1 - 3/4
    assert corpus_rep(counts, 4) == pytest.approx(0.0)  # a 1212 2121, b none
    assert diversity(counts) == pytest.approx((2 / 3) * (3 / 4) * 1)
    assert diversity([ngram_counts([1, 2])]) is None  # no 3-gram: undefined
    # distinct-2 over answers: 12 21 12 | 12 23 -> 3 distinct of 5
    assert distinct_n([[1, 2, 1, 2], [1, 2, 3]], 2) == pytest.approx(0.6)
    assert distinct_n([[1]], 2) is None


def test_unknown_words_and_a_missing_wordfreq(monkeypatch):
    # Numbers, dotted names and punctuation are not words; "isn't" is.
    assert unknown_words("The asdfgh is qwzxvb, sys.stdout 42 isn't cold.") == (2, 6)
    assert unknown_words("") == (0, 0)
    monkeypatch.setitem(sys.modules, "wordfreq", None)
    with pytest.raises(EvalError, match=r"pip install 'entropix-mlx\[eval\]'"):
        unknown_words("hello")


# --- statistics ---------------------------------------------------------------------------


def test_wilcoxon_by_hand_and_against_scipy():
    # W+ = 1 + 2 + 3: one sign pattern of 8 reaches it on each side -> p = 2/8
    result = wilcoxon_signed_rank([1.0, 2.0, 3.0, 0.0])
    assert (result.statistic, result.n, result.p_value, result.exact) == (6, 3, 0.25, True)
    assert wilcoxon_signed_rank([0.0, 0.0]).p_value == 1.0
    rng = np.random.default_rng(1)
    for n in (6, 20, 50):
        d = rng.normal(0.4, 1, n)
        ours = wilcoxon_signed_rank(list(d))
        assert ours.p_value == pytest.approx(scipy_stats.wilcoxon(d, method="exact").pvalue)
    d = rng.integers(-4, 5, 120).astype(float)  # ties and zeros: the normal approximation
    ours = wilcoxon_signed_rank(list(d))
    theirs = scipy_stats.wilcoxon(d, method="approx", correction=False)
    assert not ours.exact and ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)


def test_wilcoxon_with_ties_is_the_exact_sign_flip_distribution():
    d = [1, 1, 2, -1, 3, 3, -2, 0, 4, 1, 2]
    nonzero = [x for x in d if x]
    ranks = scipy_stats.rankdata([abs(x) for x in nonzero])
    observed = sum(r for r, x in zip(ranks, nonzero) if x > 0)
    flips = [
        sum(r for r, s in zip(ranks, signs) if s)
        for signs in itertools.product((0, 1), repeat=len(nonzero))
    ]
    low = np.mean([f <= observed + 1e-9 for f in flips])
    high = np.mean([f >= observed - 1e-9 for f in flips])
    assert wilcoxon_signed_rank(d).p_value == pytest.approx(min(1, 2 * min(low, high)))


def test_bootstrap_over_prompts():
    resamples = Resamples.draw(5, count=300)
    assert resamples.weights.shape == (300, 5) and (resamples.weights.sum(axis=1) == 5).all()
    assert (Resamples.draw(5, count=300).weights == resamples.weights).all()  # fixed seed
    values = np.array([1.0, np.nan, 3.0, 5.0, np.nan])
    assert weighted_means(values, np.array([[1, 1, 1, 1, 1], [0, 2, 1, 0, 0], [0, 1, 0, 0, 1]]))[
        :2
    ].tolist() == [3.0, 3.0]
    assert np.isnan(weighted_means(values, np.array([[0, 1, 0, 0, 1]]))[0])
    a, b = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([0.0, 2.0, 1.0, np.nan, 2.0])
    delta, (low, high), n = paired_mean_difference(a, b, resamples)
    assert n == 4 and delta == pytest.approx((1 + 0 + 2 + 3) / 4) and low <= delta <= high
    assert 0 <= low and high <= 3


# --- the frontier ---------------------------------------------------------------------------


def test_curve_interpolation():
    xs, ys = np.array([3.0, 1.0, 2.0]), np.array([0.0, 1.0, 0.5])
    assert curve_at(xs, ys, 1.5) == pytest.approx(0.75)
    assert curve_at(xs, ys, 2.5) == pytest.approx(0.25)
    assert np.isnan(curve_at(xs, ys, 3.5)) and np.isnan(curve_at(xs[:1], ys[:1], 3.0))


def test_an_arm_below_on_and_outside_the_curve():
    n = 40
    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(0, 0.01, n)  # noqa: E731
    # The curve: surprisal 1 -> loop rate 0.8, surprisal 3 -> 0.2, per prompt with a little noise.
    curve_x = np.stack([1 + noise(), 3 + noise()])
    curve_y = np.stack([0.8 + noise(), 0.2 + noise()])
    resamples = Resamples.draw(n, count=500)
    below = against_curve(curve_x, curve_y, 2 + noise(), 0.1 + noise(), resamples, True)
    assert below["curve"] == pytest.approx(0.5, abs=0.02) and below["verdict"].startswith("below")
    assert below["ci95"][1] < 0 and below["verdict"].endswith("(better)")
    on = against_curve(
        curve_x, curve_y, (curve_x[0] + curve_x[1]) / 2, curve_y.mean(0), resamples, True
    )
    assert on["delta"] == pytest.approx(0, abs=1e-9) and on["verdict"] == "on the curve"
    above = against_curve(curve_x, curve_y, 2 + noise(), 0.9 + noise(), resamples, False)
    assert above["verdict"] == "above the curve (better)"  # relevance: higher is better
    outside = against_curve(curve_x, curve_y, 4 + noise(), 0.1 + noise(), resamples, True)
    assert outside["verdict"].startswith("outside") and outside["ci95"] == [None, None]


def test_sweep_arms_and_their_families():
    base = SamplerConfig()
    arms = sweep_arms(base, temps=(0.3, 0.7, 1.1), min_ps=(0.1,), penalties=(1.2,))
    names = [a.name for a in arms]
    assert names == [
        "standard:t=0.3",
        "standard:t=1.1",
        "min-p:0.1",
        "greedy:rp=1.2",
    ]  # 0.7: standard's
    assert arms[0].config.top_p == base.top_p and arms[0].config.temp == 0.3
    assert (arms[2].config.temp, arms[2].config.top_p, arms[2].config.min_p) == (1.0, 1.0, 0.1)
    assert arms[3].deterministic and arms[3].settings() == {"repetition_penalty": 1.2}
    control = Arm("standard", "standard", base.replace(temp=0.7))
    found = families([Arm("greedy", "greedy", base), control, *arms], base)
    assert found == {
        "temperature": ["standard", "standard:t=0.3", "standard:t=1.1"],
        "min-p": ["min-p:0.1"],
        "repetition penalty": ["greedy:rp=1.2"],
    }
    assert (
        parse_values("0.5, 1", "--temps", 0.05, 5) == (0.5, 1.0)
        and parse_values(None, "x", 0, 1) == ()
    )
    for text, message in (("a", "comma-separated"), ("9", "must lie in"), ("1,1", "twice")):
        with pytest.raises(EvalError, match=message):
            parse_values(text, "--temps", 0.05, 5)


# --- the prompts ----------------------------------------------------------------------------


# Its own tiny model (seed 7): the shared one (seed 11) writes control bytes, which the tiny
# byte-level tokenizer's `decode` and its streaming detokenizer spell differently.
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return str(
        write_float_gguf(tmp_path_factory.mktemp("writing") / "tiny.gguf", tiny_model(seed=7))
    )


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    return load(tiny_gguf)


def test_requests_file_and_prose_runs():
    requests = read_requests()
    assert set(requests) == {"story", "explanation", "advice", "letter", "description"}
    assert sum(map(len, requests.values())) == 128
    text = "Title\n*****\n\nOne two\nthree.\n\nFour.\n\n   code()\n\nFive\nsix.\n\n* a list\n"
    assert prose_runs(text) == ["One two three.\n\nFour.", "Five six."]


def test_writing_prompts_split_and_interleave(tiny):
    _, tokenizer, _ = tiny
    dev, test = (load_writing_task(tokenizer, split) for split in ("dev", "test"))
    count = lambda task, kind: sum(i.group == kind for i in task.items)  # noqa: E731
    assert [count(dev, k) for k in ("request", "continuation", "loop-escape")] == [65, 32, 32]
    assert [count(test, k) for k in ("request", "continuation", "loop-escape")] == [63, 32, 32]
    assert not {i.id.split(":")[1] for i in dev.items} & {i.id.split(":")[1] for i in test.items}
    again = load_writing_task(tokenizer, "dev")
    assert [(i.id, i.ids) for i in again.items] == [(i.id, i.ids) for i in dev.items]
    first = load_writing_task(tokenizer, "dev", limit=8, max_tokens=50)
    assert [i.group for i in first.items] == [
        "request",
        "continuation",
        "request",
        "loop-escape",
    ] * 2
    assert [i.id for i in first.items] == [i.id for i in dev.items[:8]]
    request, continuation, _, loop = first.items[:4]
    assert request.ids == tuple(chat_prompt_ids(tokenizer, request.prompt))
    assert request.neutral == tuple(chat_prompt_ids(tokenizer, NEUTRAL_REQUEST))
    assert request.max_tokens == 50 and dev.items[0].max_tokens == MAX_TOKENS["request"]
    assert len(continuation.ids) == CONTINUATION_PREFIX and len(continuation.reference) == 50
    assert len(dev.items[1].reference) == MAX_TOKENS["continuation"]
    assert dev.items[1].ids == continuation.ids and continuation.answer
    phrase = (len(loop.ids) - LOOP_BASE) // LOOP_REPEATS
    assert loop.ids[LOOP_BASE - phrase :] == loop.ids[-phrase:] * (LOOP_REPEATS + 1)
    with pytest.raises(EvalError, match="unknown split"):
        load_writing_task(tokenizer, "train")


# --- scoring, the runner and the summary on the tiny model ----------------------------------


def full_forward_logprobs(model, context, continuation):
    logits = model(mx.array([list(context) + list(continuation)]))[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return [logprobs[len(context) - 1 + j, t].item() for j, t in enumerate(continuation)]


def test_scorer_measures_each_answer(tiny):
    model, tokenizer, _ = tiny
    task = load_writing_task(tokenizer, "dev", limit=4, max_tokens=8)
    request, continuation, _, loop = task.items
    answer = list(tokenizer.encode(" tat tot tat tot"))
    assert continuation_logprobs(model, request.ids, answer) == pytest.approx(
        full_forward_logprobs(model, request.ids, answer), abs=1e-4
    )
    scorer = WritingScorer(model, task)
    eos = tokenizer.eos_token_ids
    given = [-0.25 * (1 + j % 5) for j in range(len(answer))]  # as generation reports them
    record = {
        "item": 0,
        "finish": "eos",
        "token_ids": answer + [min(eos)],
        "token_logprobs": given + [-9.0],  # the EOS is not measured
        "completion": " tat tot tat tot",
    }
    scorer.score(record)
    neutral = full_forward_logprobs(model, request.neutral, answer)
    assert record["ended"] and record["kind"] == "request"
    assert record["surprisal"] == pytest.approx(-np.mean(given), abs=1e-12)
    assert record["relevance"] == pytest.approx(np.mean(given) - np.mean(neutral), abs=1e-4)
    assert record["seq_rep_4"] == seq_rep(answer, 4) and record["words"] == 4
    looped = scorer.score(
        {
            "item": 3,
            "finish": "max_tokens",
            "token_ids": [65, 66, 67] * 3,
            "token_logprobs": [-1.0] * 9,
            "completion": "abcabcabc",
        }
    )
    assert looped["loop"] and looped["relevance"] is None and looped["surprisal"] == 1.0
    empty = scorer.score(
        {
            "item": 1,
            "finish": "eos",
            "token_ids": [min(eos)],
            "token_logprobs": [-1.0],
            "completion": "",
        }
    )
    assert empty["surprisal"] is None and empty["junk"] is None and not empty["loop"]
    human = scorer.human[1]  # the continuation prompt's reference, measured once
    assert human["token_ids"] == list(continuation.reference)
    reference = full_forward_logprobs(model, continuation.ids, continuation.reference)
    assert human["surprisal"] == pytest.approx(-np.mean(reference), abs=1e-4)
    assert loop.index not in scorer.human


def writing_arms():
    config = SamplerConfig(pause_token=".")
    return [
        Arm("greedy", "greedy", config),
        Arm("standard", "standard", config.replace(temp=0.7)),
        Arm("entropix", "entropix", config),
        Arm("standard:t=1.5", "standard", config.replace(temp=1.5)),
        Arm("greedy:rp=3", "greedy", config, repetition_penalty=3.0),
    ]


def run_writing(tiny, batch_size, limit=4, seeds=(0, 1)):
    model, tokenizer, _ = tiny
    task = load_writing_task(tokenizer, "dev", limit=limit, max_tokens=10)
    scorer = WritingScorer(model, task)
    run = run_eval(
        model,
        tokenizer,
        task,
        writing_arms(),
        seeds,
        batch_size=batch_size,
        progress=False,
        on_record=scorer.score,
    )
    return task, run, scorer


def test_writing_runs_paired_and_batching_changes_nothing(tiny):
    _, tokenizer, _ = tiny
    task, one, _ = run_writing(tiny, 1)
    _, batched, _ = run_writing(tiny, 6)
    numeric = ("token_logprobs", "surprisal", "relevance")  # equal up to float rounding
    strip = lambda rs: [  # noqa: E731
        {k: v for k, v in r.items() if "seconds" not in k and k not in numeric} for r in rs
    ]
    assert strip(one.records) == strip(batched.records)
    for a, b in zip(one.records, batched.records):
        assert a["token_logprobs"] == pytest.approx(b["token_logprobs"], abs=1e-3)
        assert a["surprisal"] == pytest.approx(b["surprisal"], abs=1e-3)
    assert len(one.records) == 4 * (2 + 3 * 2)  # two deterministic arms once, three per seed
    for r in one.records:
        assert r["answer"] is r["correct"] is r["extracted"] is None
        assert len(r["token_ids"]) == r["tokens"] <= 10
        assert (
            tokenizer.decode(r["token_ids"][:-1] if r["ended"] else r["token_ids"])
            == r["completion"]
        )
    model = tiny[0]
    for r in one.records[:12]:  # each step's log-probability is the untempered model's
        prompt = task.items[r["item"]].ids
        expected = full_forward_logprobs(model, prompt, r["token_ids"])
        assert r["token_logprobs"] == pytest.approx(expected, abs=2e-3), r["arm"]
    greedy = {r["item"]: r["token_ids"] for r in one.records if r["arm"] == "greedy"}
    penalized = {r["item"]: r["token_ids"] for r in one.records if r["arm"] == "greedy:rp=3"}
    assert greedy != penalized


def test_repetition_penalty_is_mlx_lm_s_on_the_row_s_last_tokens(tiny):
    """Greedy with the penalty, recomputed by hand with full forward passes (numpy)."""
    model, tokenizer, _ = tiny
    task, run, _ = run_writing(tiny, 3, limit=3, seeds=(0,))
    for item in task.items:
        ids = list(item.ids)
        expected = []
        while len(expected) < item.max_tokens:
            logits = np.array(model(mx.array([ids]))[0, -1].astype(mx.float32))
            recent = sorted(set(ids[-PENALTY_CONTEXT:]))
            logits[recent] = np.where(
                logits[recent] < 0, logits[recent] * 3.0, logits[recent] / 3.0
            )
            token = int(np.argmax(logits))
            expected.append(token)
            ids.append(token)
            if token in tokenizer.eos_token_ids:
                break
        got = next(r for r in run.records if r["arm"] == "greedy:rp=3" and r["item"] == item.index)
        assert got["token_ids"] == expected


def test_writing_summary_on_the_tiny_model(tiny):
    task, run, scorer = run_writing(tiny, 6, limit=8)
    arms = writing_arms()
    found = families(arms, SamplerConfig(pause_token="."))
    summary = summarize_writing(
        task,
        run,
        arms,
        scorer.human,
        found,
        model="tiny",
        split="dev",
        seeds=(0, 1),
        resample_count=200,
    )
    assert json.loads(json.dumps(summary)) == summary
    assert summary["items_by_kind"] == {"request": 4, "continuation": 2, "loop-escape": 2}
    assert [a["answers"] for a in summary["arms"]] == [8, 16, 16, 16, 8]
    pairs = {(c["arm"], c["baseline"]) for c in summary["comparisons"]}
    assert pairs == {("standard", "greedy"), ("entropix", "greedy"), ("entropix", "standard")}
    assert {c["arm"] for c in summary["frontier"]["comparisons"]} == {
        "greedy",
        "entropix",
        "greedy:rp=3",
    }
    assert summary["human"]["prompts"] == 2 and summary["human_gaps"]
    table = format_writing_table(summary)
    assert "entropix vs greedy" in table and "against the temperature curve" in table


def writing_record(arm, item, seed, loop, ids, ended=False, **extra):
    return {
        "arm": arm,
        "item": item,
        "seed": seed,
        "loop": loop,
        "ended": ended,
        "finish": "eos" if ended else "max_tokens",
        "token_ids": ids + ([0] if ended else []),
        "seq_rep_4": seq_rep(ids, 4),
        "surprisal": 1.0 + item,
        "junk": 0.0,
        "relevance": None,
        "tokens": len(ids),
        "seconds": 0.1,
        "scoring_seconds": 0.01,
        **extra,
    }


def test_writing_summary_counts_by_hand():
    items = tuple(Item(i, str(i), "", "", group="request", max_tokens=8) for i in range(4))
    task = Task("writing", "write", "", items, max_tokens=8)
    config = SamplerConfig()
    arms = [Arm("greedy", "greedy", config), Arm("entropix", "entropix", config)]
    loop_ids, fresh_ids = [1, 2, 3] * 3, [1, 2, 3, 4, 5, 6]
    records = [
        writing_record("greedy", i, None, i < 3, loop_ids if i < 3 else fresh_ids) for i in range(4)
    ]
    records += [
        writing_record(
            "entropix",
            i,
            s,
            i == 0 and s == 0,
            loop_ids if i == 0 and s == 0 else fresh_ids,
            ended=True,
        )
        for i in range(4)
        for s in (0, 1)
    ]
    run = EvalRun(records=records)
    summary = summarize_writing(
        task,
        run,
        arms,
        {},
        {"temperature": []},
        model="m",
        split="dev",
        seeds=(0, 1),
        resample_count=300,
    )
    greedy, entropix = summary["arms"]
    assert (
        greedy["measures"]["loop"]["mean"] == 0.75 and entropix["measures"]["loop"]["mean"] == 0.125
    )
    assert entropix["measures"]["ended"]["mean"] == 1.0 and entropix["finish"]["eos"] == 8
    # greedy's 2-grams: three answers of 12 23 31 12 23 31 12 23 (3 distinct of 8) and 5 of 5
    assert greedy["corpus"]["rep_2"]["value"] == pytest.approx(1 - (3 * 3 + 5) / (3 * 8 + 5))
    loop = next(c for c in summary["comparisons"] if c["measure"] == "loop")
    # pairs (prompt, seed), greedy standing for both seeds: greedy loops on 6 pairs, entropix on 1 of them
    assert (loop["arm_only"], loop["baseline_only"]) == (0, 5) and loop["delta"] == pytest.approx(
        -0.625
    )
    assert loop["p_value"] == pytest.approx(2 / 2**5) and loop["test"] == "exact McNemar"
    surprisal = next(c for c in summary["comparisons"] if c["measure"] == "surprisal")
    assert surprisal["delta"] == 0 and surprisal["p_value"] == 1.0
    div = next(c for c in summary["comparisons"] if c["measure"] == "diversity")
    assert div["delta"] > 0 and div["ci95"][0] <= div["delta"] <= div["ci95"][1]
    assert summary["human"] is None and summary["frontier"]["comparisons"] == []


# --- the command line -----------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli.main, [*map(str, args)])


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_cli_writing_quick_and_its_plot(tiny_gguf, tmp_path):
    preset = tmp_path / "dot.toml"
    preset.write_text('pause_token = "."\n')
    out = tmp_path / "out"
    args = ["eval", "-t", "writing", "-m", tiny_gguf, "--quick", "-s", "greedy", "-s", "standard"]
    args += [
        "--config",
        preset,
        "--temps",
        "0.3,1.5",
        "--repetition-penalties",
        "1.5",
        "--batch-size",
        4,
    ]
    result = invoke(*args, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    names = [
        "greedy",
        "standard",
        "entropix:dot",
        "standard:t=0.3",
        "standard:t=1.5",
        "greedy:rp=1.5",
    ]
    assert [a["name"] for a in summary["arms"]] == names
    assert (
        summary["items"] == 3 and len(records) == 3 * 6 and all(r["tokens"] <= 16 for r in records)
    )
    assert all("surprisal" in r and "token_ids" in r for r in records)
    assert summary["frontier"]["families"]["temperature"] == [
        "standard",
        "standard:t=0.3",
        "standard:t=1.5",
    ]
    assert "against the temperature curve" in result.output
    pytest.importorskip("matplotlib")
    result = invoke("plot", out / "summary.json", "-o", tmp_path / "frontier.png")
    assert result.exit_code == 0, result.output
    assert png_size(tmp_path / "frontier.png") == (1200, 950)


def test_cli_writing_bad_input(tiny_gguf, monkeypatch):
    one_line_error(
        invoke("eval", "-t", "arith", "-m", tiny_gguf, "--temps", "0.5"), "are for --task writing"
    )
    one_line_error(
        invoke("eval", "-t", "writing", "-m", tiny_gguf, "--temps", "0.5,x"), "--temps takes"
    )
    one_line_error(
        invoke("eval", "-t", "writing", "-m", tiny_gguf, "-s", "self-consistency"),
        "compares greedy",
    )
    monkeypatch.setitem(sys.modules, "wordfreq", None)
    one_line_error(
        invoke("eval", "-t", "writing", "-m", tiny_gguf, "--quick"),
        "pip install 'entropix-mlx[eval]'",
    )


# --- calibrate --objective writing -------------------------------------------------------------


def test_writing_objective_rule():
    from entropix_mlx.evaluation.tuning import Candidate
    from entropix_mlx.evaluation.writing_tuning import (
        WritingCandidate,
        best_standard,
        choose,
        writing_grid,
    )

    base = SamplerConfig(low_ent=3.0, low_vent=9.0, med_ent=17.0, high_ent=18.0, high_vent=13.0)
    grid = writing_grid(base)
    assert len(grid) == 8 and grid[0] == ("loop guard off, argmax x1", base)
    assert {c.loop_attn for _, c in grid} == {1.0, 0.1, 0.15, 0.2}
    assert {(c.low_ent, c.low_vent) for _, c in grid} == {(3.0, 9.0), (2.0, 6.0)}

    def arm(name, loop, junk, surprisal, correct=None):
        arith = None if correct is None else Candidate(name, base, correct, 100)
        return WritingCandidate(name, base, arith, loop, junk, surprisal)

    standard = [
        arm("t=0.7", 0.2, 0.006, 1.0),
        arm("t=1.3", 0.0, 0.008, 2.2),
        arm("t=1.7", 0.0, 0.012, 3.0),
    ]
    assert best_standard(standard).name == "t=1.3"  # fewest loops, then least junk: cap 0.8%
    greedy = 0.40
    tried = [
        arm("as-is", 0.06, 0.008, 1.9, correct=40),
        arm("guard", 0.02, 0.007, 2.0, correct=39),  # 1 point below greedy: kept
        arm("hot", 0.0, 0.007, 2.4, correct=38),  # arithmetic 2 points down: out
        arm("junky", 0.0, 0.009, 2.1, correct=41),  # more junk than the cap: out
        arm("guard, smoother", 0.02, 0.008, 1.95, correct=40),  # ties on loops, lower surprisal
    ]
    assert choose(tried, standard, greedy).name == "guard, smoother"
    assert choose(tried[2:4], standard, greedy) is None


def test_cli_calibrate_for_writing_writes_a_preset_with_its_evidence(tiny_gguf, tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('pause_token = "."\n')
    out = tmp_path / "writing.toml"
    args = ["calibrate", "--objective", "writing", "-m", tiny_gguf, "--config", base]
    args += ["--limit", 2, "--writing-prompts", 2, "--max-tokens", 6, "-o", out]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    table = result.output
    assert "standard:t=0.7" in table and "loop guard 0.15, argmax x0.67" in table
    assert "best standard arm (junk cap)" in table and "greedy arithmetic:" in table
    text = out.read_text()
    header = " ".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    assert "first 2 development writing prompts (6 tokens)" in header and "Chosen:" in text
    tuned = SamplerConfig.from_toml(out)
    assert tuned.pause_token == "."
    chosen = text.split("Chosen: ")[1].split(".\n")[0]
    if chosen.startswith("none"):
        assert "No candidate kept arithmetic" in table
    else:
        assert f"{chosen}" in table.split("<- chosen")[0].splitlines()[-1]
