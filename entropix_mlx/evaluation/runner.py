"""Run a task: every arm on every item (and seed), paired, one record per answer.

Records are dicts with the fields documented in `report.py` (items.jsonl).
"""

import hashlib
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

from ..generate import check_prompt, make_sampler, stream_generate
from ..sampling import resolve_pause_token
from .answers import extract_answer, same_number
from .arms import Arm
from .choice import score_choices
from .prefix import SharedPrefix, fork

CHOICE_ARMS = ("loglik-sum", "loglik-norm")  # sum of log-probabilities; the same per character
FINISH_REASONS = ("eos", "stop_string", "max_tokens")


@dataclass
class EvalRun:
    """What `run_eval` returns: the records and where the time went."""

    records: List[dict] = field(default_factory=list)
    prefix_tokens: int = 0
    prefill_seconds: float = 0.0  # the shared prefix and each item's prompt, once each
    wall_seconds: float = 0.0


@dataclass
class Completion:
    """One generated answer, cut at the first stop string."""

    text: str
    finish: str  # one of FINISH_REASONS
    tokens: int
    seconds: float
    strategies: Counter
    pause_tokens: Optional[int]


def item_seed(task: str, index: int, run_seed: int) -> int:
    """The sampling seed of one item in one run: stable across runs, platforms and arms."""
    digest = hashlib.blake2b(f"{task}|{index}|{run_seed}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def first_stop(text: str, stop: Sequence[str]) -> Optional[int]:
    """Where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(found) if found else None


def arm_sampler(arm: Arm, tokenizer):
    """(sampler, pause token id) for stream_generate, built once per arm: the Entropix step is made
    (and on a GPU compiled) here rather than for every answer; the plain samplers go by name, so
    that they skip the attention scores."""
    if arm.sampler != "entropix":
        return arm.sampler, None
    return make_sampler("entropix", arm.config, tokenizer), resolve_pause_token(arm.config, tokenizer)


def complete(model, tokenizer, cache, ids, arm: Arm, sampler, seed: Optional[int], max_tokens: int,
             stop: Sequence[str]) -> Completion:
    """Generate after `ids` (the cache holds what came before) until EOS, a stop string or max_tokens;
    `sampler` is `arm_sampler(arm, tokenizer)`."""
    sampler, pause_id = sampler
    text, finish, tokens, pauses, strategies = "", "max_tokens", 0, 0, Counter()
    tic = time.perf_counter()
    responses = stream_generate(model, tokenizer, ids, sampler=sampler, config=arm.config,
                                max_tokens=max_tokens, seed=seed, prompt_cache=cache)
    with closing(responses):
        for response in responses:
            tokens += 1
            pauses += response.token == pause_id
            if response.strategy is not None:
                strategies[response.strategy] += 1
            text += response.text
            cut = first_stop(text, stop)
            if cut is not None:
                text, finish = text[:cut], "stop_string"
                break
            if response.finish_reason == "stop":
                finish = "eos"
    seconds = time.perf_counter() - tic
    return Completion(text, finish, tokens, seconds, strategies, pauses if pause_id is not None else None)


def run_eval(model, tokenizer, task, arms: Sequence[Arm] = (), seeds: Sequence[int] = (0,), *,
             max_tokens: Optional[int] = None, progress: bool = True,
             on_record: Callable[[dict], None] = lambda record: None,
             log: Callable[[str], None] = lambda message: None) -> EvalRun:
    """Evaluate `task` (from `load_task`): each arm on each item and seed, paired.

    Greedy runs once per item (its seed is null). Multiple-choice tasks ignore `arms`
    and `seeds`: they score each choice's log-likelihood. `on_record` sees each record
    as it is made (for streaming it to a file).
    """
    run = EvalRun()
    tic = time.perf_counter()
    if task.kind == "choice":
        run_choice(model, tokenizer, task, run, progress, on_record)
    else:
        run_generate(model, tokenizer, task, arms, seeds, max_tokens or task.max_tokens, run, progress,
                     on_record, log)
    run.wall_seconds = time.perf_counter() - tic
    return run


def run_generate(model, tokenizer, task, arms, seeds, max_tokens, run, progress, on_record, log):
    prefix_ids = list(tokenizer.encode(task.prefix))
    log(f"Prefilling the shared {len(prefix_ids)}-token prefix of {task.name} ...")
    tic = time.perf_counter()
    shared = SharedPrefix(model, prefix_ids)
    run.prefix_tokens, run.prefill_seconds = len(prefix_ids), time.perf_counter() - tic
    plan = list(arm_runs(arms, seeds))
    samplers = {arm.name: arm_sampler(arm, tokenizer) for arm in arms}
    with tqdm(total=len(task.items) * len(plan), desc=f"eval {task.name}", unit="answer",
              disable=not progress, dynamic_ncols=True) as bar:
        for item in task.items:
            ids = list(tokenizer.encode(task.prefix + item.prompt))
            budget = check_prompt(ids, getattr(model.args, "max_position_embeddings", None), max_tokens)
            tic = time.perf_counter()
            item_cache, last = shared.extend(ids)
            run.prefill_seconds += time.perf_counter() - tic
            for arm, run_seed in plan:
                sample_seed = None if run_seed is None else item_seed(task.name, item.index, run_seed)
                cache = fork(item_cache, len(ids) - 1)
                done = complete(model, tokenizer, cache, last, arm, samplers[arm.name], sample_seed, budget,
                                task.stop)
                record = generation_record(task, item, arm, run_seed, sample_seed, done)
                run.records.append(record)
                on_record(record)
                bar.update(1)
                bar.set_postfix_str(running_accuracy(run.records), refresh=False)


def arm_runs(arms: Sequence[Arm], seeds: Sequence[int]):
    """(arm, run seed) pairs that answer each item: greedy once (seed None), the others per seed."""
    for seed in seeds:
        for arm in arms:
            if not arm.deterministic:
                yield arm, seed
            elif seed == seeds[0]:
                yield arm, None


def generation_record(task, item, arm: Arm, run_seed, sample_seed, done: Completion) -> dict:
    answer = extract_answer(done.text)
    return {
        "task": task.name, "item": item.index, "id": item.id, "group": item.group,
        "arm": arm.name, "sampler": arm.sampler, "seed": run_seed, "sample_seed": sample_seed,
        "gold": item.answer, "answer": answer, "correct": same_number(answer, item.answer),
        "extracted": answer is not None, "completion": done.text, "finish": done.finish,
        "tokens": done.tokens, "seconds": round(done.seconds, 4),
        "strategies": dict(done.strategies), "pause_tokens": done.pause_tokens, "scores": None,
    }  # fmt: skip


def run_choice(model, tokenizer, task, run, progress, on_record):
    with tqdm(task.items, desc=f"eval {task.name}", unit="item", disable=not progress,
              dynamic_ncols=True) as bar:
        for item in bar:
            tic = time.perf_counter()
            context = task.prefix + item.prompt
            scores = score_choices(model, tokenizer, context, item.choices)
            seconds = time.perf_counter() - tic
            tokens = len(tokenizer.encode(context)) + sum(s.tokens for s in scores)
            for arm, values in zip(CHOICE_ARMS, ([s.logprob for s in scores], [s.per_char for s in scores])):
                record = choice_record(task, item, arm, values, tokens, seconds)
                run.records.append(record)
                on_record(record)
            bar.set_postfix_str(running_accuracy(run.records), refresh=False)


def choice_record(task, item, arm: str, scores: List[float], tokens: int, seconds: float) -> dict:
    pick = max(range(len(scores)), key=scores.__getitem__)
    gold = int(item.answer)
    return {
        "task": task.name, "item": item.index, "id": item.id, "group": item.group,
        "arm": arm, "sampler": None, "seed": None, "sample_seed": None,
        "gold": gold, "answer": pick, "correct": pick == gold,
        "extracted": True, "completion": None, "finish": None,
        "tokens": tokens, "seconds": round(seconds, 4),
        "strategies": {}, "pause_tokens": None, "scores": [round(s, 6) for s in scores],
    }  # fmt: skip


def running_accuracy(records: List[dict]) -> str:
    totals: Dict[str, List[int]] = {}
    for record in records:
        right_and_n = totals.setdefault(record["arm"], [0, 0])
        right_and_n[0] += record["correct"]
        right_and_n[1] += 1
    return " ".join(f"{arm} {right / n:.0%}" for arm, (right, n) in totals.items())
