"""Look-ahead: rows that fork where the model is uncertain and keep the best rollout.

(Not the sampler's "branch" strategy, which draws one hotter sample; look-ahead is what
`branch_k > 0` turns on where that strategy is chosen.) Where a row's sampler chose the branch strategy (or, with trigger "first", at its first token),
the row is forked into one row per top-k candidate token, each rolled out with the row's own
sampler for up to `horizon` tokens or to a boundary (a newline, the end of a sentence, a stop
string, EOS). Each rollout gets a score and the winner's rows stay: its tokens are committed as
generated, never recomputed; the losers leave the batch. Scores (over the rollout's tokens up
to and including its boundary, the forced candidate first):

  margin   mean of p(token) - max p(other token): CoT-decoding's confidence (Wang & Zhou, 2024);
           for the model's most probable token it is p(top1) - p(top2), for others negative
  logprob  mean log-probability of the tokens under the untempered model distribution

Ties go to the more probable candidate. A rollout that reached its end keeps decoding (single
path) while its siblings finish; if it wins, those tokens are kept too.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import mlx.core as mx

from ..errors import GenerationError
from ..sampling import STRATEGIES, SamplerConfig, make_greedy_sampler, reads_scores
from ..sampling.config import MAX_BRANCH_K
from ..sampling.draw import top_candidates
from ..sampling.metrics import logsumexp, probability_margin, take_token
from .batch import BatchGenerator, RowStep
from .decode import SamplerStep

BRANCH = STRATEGIES.index("branch")
TRIGGERS = ("branch", "first")
# A newline, or . ! ? after a letter or closing mark (not "3.5", not the "..." pause).
SENTENCE_END = re.compile(r"\n|(?<=[A-Za-z)\]\"'])[.!?](?=\s|$)")


@dataclass
class Rollout:
    """One forked candidate: its row, its tokens so far and whether its look-ahead is over."""

    uid: int
    steps: List[RowStep] = field(default_factory=list)
    margins: List[float] = field(default_factory=list)  # of the scored tokens
    open: bool = True  # still within the horizon and before a boundary
    finished: bool = False  # the row left the batch (EOS or max_tokens)

    @property
    def tokens(self) -> List[int]:
        return [s.step.token for s in self.steps]

    def score(self, rule: str) -> float:
        if rule == "margin":
            return sum(self.margins) / len(self.margins)
        logprobs = [s.step.logprob for s in self.steps[: len(self.margins)]]
        return sum(logprobs) / len(logprobs)


@dataclass(frozen=True)
class LookAheadRules:
    """When and how a row forks. `choose(rollouts, tokenizer)` may replace the score rule
    (the evaluation's CoT-decoding chooses by answer); it returns the winner's index."""

    k: int
    horizon: int
    max_points: int
    score: str = "margin"
    trigger: str = "branch"
    stops: Sequence[str] = ()
    choose: Optional[Callable[[List[Rollout], object], int]] = None
    # A newline or a sentence end closes a rollout (else only a stop string, EOS, the horizon).
    sentences: bool = True

    @classmethod
    def from_config(
        cls, config: SamplerConfig, stops: Sequence[str] = ()
    ) -> Optional["LookAheadRules"]:
        """The config's look-ahead rules; None when branch_k is 0 (the original behaviour)."""
        if not config.branch_k or not config.max_branch_points:
            return None
        return cls(
            config.branch_k,
            config.branch_horizon,
            config.max_branch_points,
            config.branch_score,
            stops=tuple(stops),
        )


@dataclass
class Lane:
    """What the caller sees as one row: one batch row, or a fork's rollouts until it resolves."""

    uid: int
    rules: Optional[LookAheadRules]
    row: int  # the batch row's uid while not forked
    points: int = 0
    rollouts: Optional[List[Rollout]] = None
    candidates: List[dict] = field(default_factory=list)
    at: int = 0  # committed tokens before the fork
    committed: int = 0


def with_candidates(sampler: SamplerStep) -> SamplerStep:
    """The sampler step, its info extended with what a fork needs: the top MAX_BRANCH_K
    candidate ids and log-probabilities ([B, MAX_BRANCH_K]) and the chosen token's margin."""

    def step(logits, scores, prev, key):
        token, strategy, info = sampler(logits, scores, prev, key)
        values, ids = top_candidates(logits, MAX_BRANCH_K)
        logits = logits.astype(mx.float32)
        log_total = logsumexp(logits)
        extra = {
            "candidate_ids": ids,
            "candidate_logprobs": values - log_total,
            "margin": probability_margin(take_token(logits, token), values[:, :2], log_total[:, 0]),
        }
        return token, strategy, {**info, **extra}

    step.reads_scores = reads_scores(sampler)
    return step


def forced_margins(logprobs: Sequence[float]) -> List[float]:
    """Each candidate's margin from the sorted candidate log-probabilities."""
    p = [math.exp(lp) for lp in logprobs]
    return [p[j] - (p[1] if j == 0 else p[0]) for j in range(len(p))]


class LookAheadGenerator(BatchGenerator):
    """A `BatchGenerator` whose rows may fork: `insert(..., look_ahead=LookAheadRules)`.

    Its uids, `next()` and `remove()` are per lane (what the caller inserted); a fork's
    rollouts are rows of the same batch, and a lane's tokens come out when its fork resolves
    (so one `next()` may return several tokens of one lane). `forks` keeps every fork's record,
    which also rides on the first committed token after it (`RowStep.fork`).
    """

    def __init__(self, model, tokenizer, **options):
        super().__init__(model, **options)
        self.tokenizer = tokenizer
        self.lanes: Dict[int, Lane] = {}
        self.owner: Dict[int, Lane] = {}  # batch row uid -> its lane
        self.forks: List[dict] = []
        # lane uid -> tokens generated by all its rows, rollouts included (until removed)
        self.spent: Dict[int, int] = {}
        self._greedy = make_greedy_sampler()
        self._wrapped: Dict[int, tuple] = {}  # id(sampler) -> (sampler, its wrapper)

    def __len__(self) -> int:
        return len(self.lanes)

    def insert(
        self, prompt_ids, sampler=None, *, look_ahead: Optional[LookAheadRules] = None, **options
    ) -> int:
        """As `BatchGenerator.insert`; `look_ahead`: when and how this row forks (None: never)."""
        if look_ahead is not None and look_ahead.trigger not in TRIGGERS:
            raise GenerationError(
                f"look-ahead trigger must be one of {', '.join(TRIGGERS)}, got {look_ahead.trigger!r}"
            )
        sampler = sampler or self._greedy
        if id(sampler) not in self._wrapped:
            self._wrapped[id(sampler)] = (sampler, with_candidates(sampler))
        uid = super().insert(prompt_ids, self._wrapped[id(sampler)][1], **options)
        self.lanes[uid] = self.owner[uid] = Lane(uid, look_ahead, uid)
        self.spent[uid] = 0
        return uid

    def remove(self, uids: Sequence[int]):
        rows = []
        for uid in uids:
            self.spent.pop(uid, None)
            lane = self.lanes.pop(uid, None)
            if lane is not None:
                rows += [r.uid for r in lane.rollouts] if lane.rollouts else [lane.row]
        for row in rows:
            self.owner.pop(row, None)
        super().remove(rows)

    def next(self) -> List[RowStep]:
        if not self.rows:  # else queued rows join the step (a fork waits for their first token)
            self.admit()
        if not self.rows:
            return []
        self._fork_where_due()
        margins = self._queued_margins()
        out: List[RowStep] = []
        for row_step in super().next():
            lane = self.owner.get(row_step.uid)
            if lane is None:
                continue
            self.spent[lane.uid] += 1
            if row_step.end:
                del self.owner[row_step.uid]
            if lane.rollouts is None:
                out.append(self._commit(lane, row_step))
            else:
                self._advance(lane, row_step, margins.get(row_step.uid))
        for lane in [lane for lane in self.lanes.values() if lane.rollouts is not None]:
            if not any(r.open for r in lane.rollouts):
                out += self._resolve(lane)
        return out

    def _fork_where_due(self):
        due = [
            (i, row)
            for i, row in enumerate(self.rows)
            if (lane := self.owner.get(row.uid)) is not None
            and lane.rules is not None
            and lane.rollouts is None
            and lane.points < lane.rules.max_points
        ]
        if not due:
            return
        _, _, strategy, info = self.outputs
        strategy = strategy.tolist()
        ids, logprobs = info["candidate_ids"].tolist(), info["candidate_logprobs"].tolist()
        for i, row in due:
            lane = self.owner[row.uid]
            trigger = lane.rules.trigger
            if (trigger == "branch" and strategy[i] != BRANCH) or (
                trigger == "first" and row.generated
            ):
                continue
            k = lane.rules.k
            candidates, candidate_logprobs = ids[i][:k], logprobs[i][:k]
            uids = self.split_row(row.uid, candidates, candidate_logprobs)
            lane.points += 1
            lane.at = lane.committed
            lane.rollouts = []
            for uid, margin in zip(uids, forced_margins(candidate_logprobs)):
                rollout = Rollout(uid, margins=[margin])
                lane.rollouts.append(rollout)
                self.owner[uid] = lane
            lane.candidates = [
                {"token": t, "logprob": lp} for t, lp in zip(candidates, candidate_logprobs)
            ]

    def _queued_margins(self) -> Dict[int, float]:
        """The margin of each row's queued token, for rows inside a fork's look-ahead."""
        if not any(lane.rollouts for lane in self.lanes.values()):
            return {}
        margins = self.outputs[3]["margin"].tolist()
        return {row.uid: m for row, m in zip(self.rows, margins)}

    def _advance(self, lane: Lane, row_step: RowStep, margin: Optional[float]):
        rollout = next(r for r in lane.rollouts if r.uid == row_step.uid)
        rollout.steps.append(row_step)
        rollout.finished = row_step.end is not None
        if not rollout.open:
            return
        if len(rollout.steps) > 1:  # the forced token's margin was set at the fork
            rollout.margins.append(margin)
        text = self.tokenizer.decode(rollout.tokens)
        at_boundary = (lane.rules.sentences and SENTENCE_END.search(text)) or any(
            s in text for s in lane.rules.stops
        )
        if rollout.finished or at_boundary or len(rollout.steps) >= lane.rules.horizon:
            rollout.open = False

    def _resolve(self, lane: Lane) -> List[RowStep]:
        """Pick the winner, drop the losers' rows, and commit the winner's tokens."""
        rules, rollouts = lane.rules, lane.rollouts
        if rules.choose is not None:
            winner = rules.choose(rollouts, self.tokenizer)
        else:
            scores = [r.score(rules.score) for r in rollouts]
            winner = max(range(len(rollouts)), key=lambda j: (scores[j], -j))
        for j, rollout in enumerate(rollouts):
            candidate = lane.candidates[j]
            candidate["score"] = round(rollout.score(rules.score), 6)
            candidate["scored_tokens"] = len(rollout.margins)
            candidate["text"] = self.tokenizer.decode(rollout.tokens[: len(rollout.margins)])
        record = {
            "at": lane.at,
            "rule": "choose" if rules.choose else rules.score,
            "candidates": lane.candidates,
            "winner": winner,
        }
        self.forks.append(record)
        losers = [r.uid for j, r in enumerate(rollouts) if j != winner and not r.finished]
        for uid in losers:
            self.owner.pop(uid, None)
        BatchGenerator.remove(self, losers)
        chosen = rollouts[winner]
        lane.rollouts, lane.row = None, chosen.uid
        steps = [self._commit(lane, s) for s in chosen.steps]
        steps[0].fork = record
        return steps

    def _commit(self, lane: Lane, row_step: RowStep) -> RowStep:
        lane.committed += 1
        if row_step.end:
            self.lanes.pop(lane.uid, None)
        return RowStep(lane.uid, row_step.step, row_step.end)
