"""Run a task: every arm on every item (and seed), paired, one record per answer.

Records are dicts with the fields documented in `report.py` (items.jsonl).
"""

import dataclasses
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import mlx.core as mx
from tqdm import tqdm

from ..engine.batch import RowStep
from ..engine.decode import prefill
from ..engine.lookahead import LookAheadGenerator, LookAheadRules
from ..engine.prompt import context_length, fit_prompt
from ..engine.prompt_cache import PromptCache
from ..engine.text import RowText
from ..sampling import make_sampler, resolve_pause_token
from .answers import extract_answer, same_number
from .arms import Arm
from .choice import score_choices
from .penalty import with_repetition_penalty
from .tasks import Item
from .voting import cot_decoding_choice, majority_vote

CHOICE_ARMS = ("loglik-sum", "loglik-norm")  # sum of log-probabilities; the same per character
FINISH_REASONS = ("eos", "stop_string", "max_tokens")  # engine.text's ends, as records give them


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
    forks: int = 0
    ids: List[int] = field(default_factory=list)  # the tokens generated, EOS included
    logprobs: List[float] = field(default_factory=list)  # theirs under the untempered model


def item_seed(task: str, index: int, run_seed: int) -> int:
    """The sampling seed of one item in one run: stable across runs, platforms and arms."""
    digest = hashlib.blake2b(f"{task}|{index}|{run_seed}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def arm_sampler(arm: Arm, tokenizer):
    """(sampler step, pause token id or None), built once per arm: the Entropix step is made
    (and on a GPU compiled) here rather than for every answer."""
    step = make_sampler(arm.path_sampler, arm.config, tokenizer)
    if arm.sampler != "entropix":
        return step, None
    return step, resolve_pause_token(arm.config, tokenizer)


class Answer:
    """One answer being generated: its text (cut at the first stop string) and its costs."""

    def __init__(self, tokenizer, stop: Sequence[str], pause_id: Optional[int]):
        self.row_text, self.pause_id = RowText(tokenizer, stop), pause_id
        self.text, self.tokens, self.pauses, self.seconds, self.forks = "", 0, 0, 0.0, 0
        self.strategies: Counter = Counter()
        self.ids: List[int] = []
        self.logprobs: List[float] = []

    def add(self, row: RowStep) -> Optional[Completion]:
        """Take the row's next token; the Completion once done."""
        self.tokens += 1
        self.ids.append(row.step.token)
        self.logprobs.append(row.step.logprob)
        self.forks += row.fork is not None
        self.pauses += row.step.token == self.pause_id
        if row.step.strategy is not None:
            self.strategies[row.step.strategy] += 1
        text, end = self.row_text.add(row.step.token, row.end)
        self.text += text
        if end is None:
            return None
        pauses = self.pauses if self.pause_id is not None else None
        return Completion(
            self.text,
            end,
            self.tokens,
            self.seconds,
            self.strategies,
            pauses,
            self.forks,
            self.ids,
            self.logprobs,
        )


def run_eval(
    model,
    tokenizer,
    task,
    arms: Sequence[Arm] = (),
    seeds: Sequence[int] = (0,),
    *,
    max_tokens: Optional[int] = None,
    batch_size: int = 1,
    progress: bool = True,
    on_record: Callable[[dict], None] = lambda record: None,
    log: Callable[[str], None] = lambda message: None,
) -> EvalRun:
    """Evaluate `task` (from `load_task`): each arm on each item and seed, paired.

    Greedy runs once per item (its seed is null). Answers are generated `batch_size` at a time
    as rows of one batch (records still come in item, seed, arm order). Multiple-choice tasks
    ignore `arms`, `seeds` and `batch_size`: they score each choice's log-likelihood.
    `on_record` sees each record as it is made (for streaming it to a file).
    """
    run = EvalRun()
    tic = time.perf_counter()
    if task.kind == "choice":
        run_choice(model, tokenizer, task, run, progress, on_record)
    else:
        jobs = answer_jobs(
            model, tokenizer, task, arms, seeds, max_tokens or task.max_tokens, run, log
        )
        with tqdm(
            total=len(task.items) * len(list(arm_runs(arms, seeds))),
            desc=f"eval {task.name}",
            unit="answer",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            for record in run_batched(model, tokenizer, task, arms, jobs, batch_size):
                run.records.append(record)
                on_record(record)
                bar.update(1)
                bar.set_postfix_str(running_accuracy(run.records), refresh=False)
    run.wall_seconds = time.perf_counter() - tic
    return run


@dataclass
class AnswerJob:
    """One answer to generate: an item's prompt (its cache holds all but `last`) for one arm and seed."""

    item: Item
    arm: Arm
    run_seed: Optional[int]
    sample_seed: Optional[int]
    cache: List
    last: List[int]
    budget: int
    prompt: Sequence[int] = ()  # the whole prompt (a repetition penalty reads its last tokens)


def answer_jobs(model, tokenizer, task, arms, seeds, max_tokens, run, log) -> Iterator[AnswerJob]:
    """The jobs of every item in order; each item's prompt is prefilled once, when first needed."""
    prefix_ids = list(tokenizer.encode(task.prefix))
    log(f"Prefilling the shared {len(prefix_ids)}-token prefix of {task.name} ...")
    tic = time.perf_counter()
    shared = PromptCache(model, max_bytes=2**62)  # holds the prefix alone
    if prefix_ids:
        shared.store(prefix_ids, prefill(model, mx.array(prefix_ids)[None], model.make_cache()))
    run.prefix_tokens, run.prefill_seconds = len(prefix_ids), time.perf_counter() - tic
    plan = list(arm_runs(arms, seeds))
    for item in task.items:
        ids = list(item.ids) or list(tokenizer.encode(task.prefix + item.prompt))
        budget = fit_prompt(
            ids, context_length(model), min(item.max_tokens or max_tokens, max_tokens)
        )
        tic = time.perf_counter()
        cache, rest = shared.fetch(ids)
        cache, last = prefill(model, mx.array(rest[:-1])[None], cache), rest[-1:]
        run.prefill_seconds += time.perf_counter() - tic
        for arm, run_seed in plan:
            sample_seed = None if run_seed is None else item_seed(task.name, item.index, run_seed)
            yield AnswerJob(item, arm, run_seed, sample_seed, cache, last, budget, ids)


def look_ahead(arm: Arm, task, budget: int) -> Optional[LookAheadRules]:
    """How an arm's rows fork: Entropix by its config (branch_k), CoT-decoding at the start."""
    if arm.sampler == "cot-decoding":
        return LookAheadRules(
            arm.paths,
            budget,
            1,
            trigger="first",
            stops=task.stop,
            choose=cot_decoding_choice(task.stop),
            sentences=False,
        )
    return LookAheadRules.from_config(arm.config, task.stop) if arm.sampler == "entropix" else None


@dataclass
class Group:
    """The paths of one answer (one for all but self-consistency) and what they cost."""

    index: int
    job: AnswerJob
    completions: List[Optional[Completion]]
    row_tokens: int = 0

    def record(self, task) -> dict:
        done = self.completions
        pick = majority_vote([c.text for c in done]) if len(done) > 1 else 0
        chosen = done[pick]
        seconds = sum(c.seconds for c in done)
        chosen = dataclasses.replace(chosen, seconds=seconds)
        job = self.job
        record = generation_record(task, job.item, job.arm, job.run_seed, job.sample_seed, chosen)
        record.update(
            row_tokens=self.row_tokens,
            forks=chosen.forks,
            paths=len(done),
            path_answers=[extract_answer(c.text) for c in done] if len(done) > 1 else None,
        )
        if task.kind == "write":  # no right answer: the writing task measures the tokens
            record.update(
                answer=None,
                correct=None,
                extracted=None,
                token_ids=chosen.ids,
                token_logprobs=[round(lp, 6) for lp in chosen.logprobs],
            )
        return record


def run_batched(
    model, tokenizer, task, arms, jobs: Iterator[AnswerJob], batch_size: int
) -> Iterator[dict]:
    """Generate the jobs' answers as rows of one batch, kept full; their records in job order.

    A row's step time is shared by the rows of that step; a forking answer pays for its rollouts
    and a self-consistency answer for all its paths (`row_tokens`, `seconds`)."""
    samplers = {arm.name: arm_sampler(arm, tokenizer) for arm in arms}
    batch = LookAheadGenerator(model, tokenizer)
    live: Dict[int, tuple] = {}
    finished: Dict[int, dict] = {}
    queued = emitted = 0
    while True:
        while len(batch) < batch_size and (job := next(jobs, None)) is not None:
            step, pause_id = samplers[job.arm.name]
            if job.arm.repetition_penalty:  # a step of the row's own: it keeps the row's tokens
                step = with_repetition_penalty(step, job.arm.repetition_penalty, job.prompt)
            paths = job.arm.paths if job.arm.sampler == "self-consistency" else 1
            group = Group(queued, job, [None] * paths)
            for path in range(paths):
                seed = None if job.sample_seed is None else job.sample_seed + path
                uid = batch.insert(
                    job.last,
                    step,
                    seed=seed,
                    max_tokens=job.budget,
                    eos_ids=tokenizer.eos_token_ids,
                    prompt_cache=job.cache,
                    look_ahead=look_ahead(job.arm, task, job.budget),
                )
                live[uid] = (group, path, Answer(tokenizer, task.stop, pause_id))
            queued += 1
        if not len(batch):
            return
        spent = dict(batch.spent)
        tic = time.perf_counter()
        rows = batch.next()
        rows_run = sum(batch.spent[u] - n for u, n in spent.items())
        share = (time.perf_counter() - tic) / max(rows_run, 1)
        for uid, before in spent.items():
            group, path, answer = live[uid]
            group.row_tokens += batch.spent[uid] - before
            answer.seconds += share * (batch.spent[uid] - before)
        for row in rows:
            if row.uid not in live:  # a later token of an answer already done
                continue
            group, path, answer = live[row.uid]
            done = answer.add(row)
            if done is not None:
                batch.remove([row.uid])
                del live[row.uid]
                group.completions[path] = done
                if all(group.completions):
                    finished[group.index] = group.record(task)
        while emitted in finished:
            yield finished.pop(emitted)
            emitted += 1


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
        "task": task.name,
        "item": item.index,
        "id": item.id,
        "group": item.group,
        "arm": arm.name,
        "sampler": arm.sampler,
        "seed": run_seed,
        "sample_seed": sample_seed,
        "gold": item.answer,
        "answer": answer,
        "correct": same_number(answer, item.answer),
        "extracted": answer is not None,
        "completion": done.text,
        "finish": done.finish,
        "tokens": done.tokens,
        "seconds": round(done.seconds, 4),
        "strategies": dict(done.strategies),
        "pause_tokens": done.pause_tokens,
        "scores": None,
    }


def run_choice(model, tokenizer, task, run, progress, on_record):
    with tqdm(
        task.items, desc=f"eval {task.name}", unit="item", disable=not progress, dynamic_ncols=True
    ) as bar:
        for item in bar:
            tic = time.perf_counter()
            context = task.prefix + item.prompt
            scores = score_choices(model, tokenizer, context, item.choices)
            seconds = time.perf_counter() - tic
            tokens = len(tokenizer.encode(context)) + sum(s.tokens for s in scores)
            for arm, values in zip(
                CHOICE_ARMS, ([s.logprob for s in scores], [s.per_char for s in scores])
            ):
                record = choice_record(task, item, arm, values, tokens, seconds)
                run.records.append(record)
                on_record(record)
            bar.set_postfix_str(running_accuracy(run.records), refresh=False)


def choice_record(task, item, arm: str, scores: List[float], tokens: int, seconds: float) -> dict:
    pick = max(range(len(scores)), key=scores.__getitem__)
    gold = int(item.answer)
    return {
        "task": task.name,
        "item": item.index,
        "id": item.id,
        "group": item.group,
        "arm": arm,
        "sampler": None,
        "seed": None,
        "sample_seed": None,
        "gold": gold,
        "answer": pick,
        "correct": pick == gold,
        "extracted": True,
        "completion": None,
        "finish": None,
        "tokens": tokens,
        "seconds": round(seconds, 4),
        "strategies": {},
        "pause_tokens": None,
        "scores": [round(s, 6) for s in scores],
        "row_tokens": tokens,
        "forks": 0,
        "paths": 1,
        "path_answers": None,
    }


def running_accuracy(records: List[dict]) -> str:
    totals: Dict[str, List[int]] = {}
    for record in records:
        if record["correct"] is None:  # a task without right answers (writing)
            continue
        right_and_n = totals.setdefault(record["arm"], [0, 0])
        right_and_n[0] += record["correct"]
        right_and_n[1] += 1
    return " ".join(f"{arm} {right / n:.0%}" for arm, (right, n) in totals.items())
