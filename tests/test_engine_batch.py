"""Batched generation: each row equals its single run; rows never see each other's padding."""

import mlx.core as mx
import pytest

from entropix_mlx.engine.batch import MAX_BATCH_SIZE, BatchGenerator
from entropix_mlx.engine.text import EOS, MAX_TOKENS
from entropix_mlx.errors import GenerationError
from entropix_mlx.generate import batch_generate, stream_batch_generate, stream_generate
from entropix_mlx.sampling import SamplerConfig, make_sampler

CONFIG = SamplerConfig(pause_token=".")  # the tiny byte-level vocabulary has no "..." token
PROMPTS = ["hello", "the tiny test is a longer prompt", "a", "some other words"]


def single_runs(model, tokenizer, prompts, seed=None, **kwargs):
    return [
        list(
            stream_generate(model, tokenizer, p, seed=None if seed is None else seed + i, **kwargs)
        )
        for i, p in enumerate(prompts)
    ]


def batch_rows(model, tokenizer, prompts, **kwargs):
    rows = [[] for _ in prompts]
    for response in stream_batch_generate(model, tokenizer, prompts, **kwargs):
        rows[response.index].append(response)
    return rows


def test_greedy_batch_equals_single_runs(tiny):
    model, tokenizer, _ = tiny
    single = single_runs(model, tokenizer, PROMPTS, sampler="greedy", max_tokens=16)
    batched = batch_rows(model, tokenizer, PROMPTS, sampler="greedy", max_tokens=16)
    assert [[r.token for r in row] for row in batched] == [[r.token for r in row] for row in single]
    for b_row, s_row in zip(batched, single):
        assert [r.logprob for r in b_row] == pytest.approx([r.logprob for r in s_row], abs=1e-4)


def test_entropix_rows_have_their_single_run_metrics_and_strategies(tiny):
    model, tokenizer, _ = tiny
    single = single_runs(model, tokenizer, PROMPTS, seed=5, config=CONFIG, max_tokens=12)
    batched = batch_rows(model, tokenizer, PROMPTS, seed=5, config=CONFIG, max_tokens=12)
    for b_row, s_row in zip(batched, single):
        assert [r.token for r in b_row] == [r.token for r in s_row]
        assert [r.strategy for r in b_row] == [r.strategy for r in s_row]
        for b, s in zip(b_row, s_row):
            assert set(b.metrics) == set(s.metrics) and len(s.metrics) == 6
            for name in s.metrics:
                assert b.metrics[name] == pytest.approx(s.metrics[name], abs=1e-4), name


def test_rows_are_left_padded_and_scores_mask_the_padding(tiny):
    model, tokenizer, _ = tiny
    batch = BatchGenerator(model)
    long_ids, short_ids = tokenizer.encode(PROMPTS[1]), tokenizer.encode(PROMPTS[2])
    for ids in (long_ids, short_ids):
        batch.insert(ids, make_sampler("entropix", CONFIG, tokenizer))
    batch.next()
    padding = batch.cache[0].left_padding.tolist()
    assert padding[1] == len(long_ids) - len(short_ids) > 0
    # The short row's newest query: -inf exactly over its padding, finite over its own tokens.
    out, scores = model(batch.outputs[0][:, None], batch.cache, return_scores=True, last_only=True)
    finite = mx.isfinite(scores[1, 0]).tolist()
    assert finite == [False] * padding[1] + [True] * (len(finite) - padding[1])


def test_a_row_that_stops_early_changes_nothing_in_the_others(tiny):
    model, tokenizer, _ = tiny
    full = batch_rows(model, tokenizer, PROMPTS, seed=3, config=CONFIG, max_tokens=12)
    greedy = [
        r.token
        for r in single_runs(model, tokenizer, PROMPTS[:1], sampler="greedy", max_tokens=12)[0]
    ]
    first_new = next(i for i, t in enumerate(greedy) if t not in greedy[:i] and i > 0)
    batch = BatchGenerator(model)
    entropix = make_sampler("entropix", CONFIG, tokenizer)
    uids = [
        batch.insert(tokenizer.encode(p), entropix, seed=3 + i, max_tokens=12)
        for i, p in enumerate(PROMPTS)
    ]
    short = batch.insert(tokenizer.encode(PROMPTS[0]), make_sampler("greedy"), max_tokens=2)
    eos = batch.insert(
        tokenizer.encode(PROMPTS[0]), make_sampler("greedy"), eos_ids=[greedy[first_new]]
    )
    rows = {uid: [] for uid in uids + [short, eos]}
    while len(batch):
        for row in batch.next():
            rows[row.uid].append(row)
    assert [r.step.token for r in rows[short]] == greedy[:2]
    assert rows[short][-1].end == MAX_TOKENS
    assert [r.step.token for r in rows[eos]] == greedy[: first_new + 1]
    assert rows[eos][-1].end == EOS
    for uid, expected in zip(uids, full):
        assert [r.step.token for r in rows[uid]] == [r.token for r in expected]
    # A stop string ends its row only: the text stops before it.
    texts = batch_generate(
        model,
        tokenizer,
        [PROMPTS[0], PROMPTS[1]],
        sampler="greedy",
        max_tokens=12,
        stop=[tokenizer.decode(greedy[first_new : first_new + 1])],
    )
    assert texts[0] == tokenizer.decode(greedy[:first_new])
    assert (
        texts[1]
        == batch_generate(model, tokenizer, [PROMPTS[1]], sampler="greedy", max_tokens=12)[0]
    )


def test_same_seed_same_tokens_and_seeds_differ(tiny):
    model, tokenizer, _ = tiny

    def run(seed):
        return batch_generate(model, tokenizer, PROMPTS, config=CONFIG, max_tokens=16, seed=seed)

    first = run(7)
    assert run(7) == first
    same_prompt = batch_generate(
        model, tokenizer, ["hello"] * 3, config=CONFIG, max_tokens=16, seed=7
    )
    assert len(set(same_prompt)) > 1


def test_choice_rows_equal_single_runs_of_the_prompt(tiny):
    model, tokenizer, _ = tiny
    ids = tokenizer.encode(PROMPTS[1])
    single = single_runs(model, tokenizer, [ids] * 3, seed=20, config=CONFIG, max_tokens=10)
    batch = BatchGenerator(model)
    uids = batch.insert_choices(
        ids, [20, 21, 22], make_sampler("entropix", CONFIG, tokenizer), max_tokens=10
    )
    rows = {uid: [] for uid in uids}
    while len(batch):
        for row in batch.next():
            rows[row.uid].append(row.step.token)
    assert [rows[uid] for uid in uids] == [[r.token for r in run] for run in single]


def test_rows_join_a_running_batch(tiny):
    model, tokenizer, _ = tiny
    single = single_runs(model, tokenizer, PROMPTS[:2], sampler="greedy", max_tokens=8)
    batch = BatchGenerator(model)
    first = batch.insert(tokenizer.encode(PROMPTS[0]), max_tokens=8)
    rows = {first: []}
    for step in range(8):
        if step == 3:
            rows[batch.insert(tokenizer.encode(PROMPTS[1]), max_tokens=8)] = []
        for row in batch.next():
            rows[row.uid].append(row.step.token)
    while len(batch):
        for row in batch.next():
            rows[row.uid].append(row.step.token)
    assert list(rows.values()) == [[r.token for r in run] for run in single]


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([], "no prompts given; pass at least one"),
        (["fine", ""], "prompt 1: the prompt is empty; give some text to continue"),
        (
            ["fine", "x" * 300],
            "prompt 1: the prompt has 300 tokens but the model's context window is 256; "
            "shorten the prompt",
        ),
        (
            ["a"] * (MAX_BATCH_SIZE + 1),
            f"{MAX_BATCH_SIZE + 1} prompts are more than one batch holds "
            f"({MAX_BATCH_SIZE}); split them into smaller batches",
        ),
    ],
)
def test_bad_batches_get_one_clear_error(tiny, prompts, message):
    model, tokenizer, _ = tiny
    with pytest.raises(GenerationError) as error:
        batch_generate(model, tokenizer, prompts, max_tokens=4)
    assert str(error.value) == message


def test_a_full_batch_refuses_another_row(tiny):
    model, _, _ = tiny
    batch = BatchGenerator(model, max_batch_size=2)
    batch.insert([5, 6])
    batch.insert([7])
    with pytest.raises(
        GenerationError, match=r"^the batch is full \(2 rows\); wait for a row to finish$"
    ):
        batch.insert([8])


@pytest.mark.real_model
def test_default_model_greedy_batch_equals_single_runs(default_model):
    model, tokenizer, _ = default_model
    prompts = [
        [{"role": "user", "content": "What is 2+3?"}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    single = single_runs(model, tokenizer, prompts, sampler="greedy", max_tokens=8)
    batched = batch_rows(model, tokenizer, prompts, sampler="greedy", max_tokens=8)
    assert [[r.token for r in row] for row in batched] == [[r.token for r in row] for row in single]
