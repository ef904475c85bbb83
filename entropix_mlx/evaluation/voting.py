"""Answer-level choices over several paths: CoT-decoding's margin weighting and majority vote."""

from collections import defaultdict
from typing import List, Optional, Sequence

from ..engine.text import StopMatcher
from .answers import extract_answer


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    matcher = StopMatcher(stops)
    kept, stopped = matcher.feed(text)
    return kept if stopped else kept + matcher.flush()


def answer_margin(pieces: List[str], margins: List[float], answer: str) -> float:
    """Mean margin of the tokens that spell the answer's last occurrence in the text (all scored
    tokens when the canonical answer is not spelled as such, e.g. "1,000")."""
    text = "".join(pieces)
    start = text.rfind(answer)
    if start < 0:
        return sum(margins) / len(margins)
    end, offset, chosen = start + len(answer), 0, []
    for piece, margin in zip(pieces, margins):
        if offset < end and offset + len(piece) > start:
            chosen.append(margin)
        offset += len(piece)
    return sum(chosen) / len(chosen) if chosen else sum(margins) / len(margins)


def cot_decoding_choice(stops: Sequence[str]):
    """`choose(rollouts, tokenizer)` for BranchRules: CoT-decoding (Wang & Zhou, 2024). Each
    path's confidence is the mean margin p(top1) - p(top2) over its answer's tokens; paths with
    the same answer add up; the answer with the largest total wins, and of its paths the most
    confident. Paths without an answer only win when no path has one. The forced first token
    counts with its own margin, p(token) - max p(other): p(top1) - p(top2) for the top path (the
    paper's value), negative for the others (the paper gives every path p(top1) - p(top2))."""

    def choose(rollouts, tokenizer) -> int:
        totals, best = defaultdict(float), {}
        for j, rollout in enumerate(rollouts):
            tokens = rollout.tokens[: len(rollout.margins)]
            pieces = [
                tokenizer.decode(tokens[: i + 1])[len(tokenizer.decode(tokens[:i])) :]
                for i in range(len(tokens))
            ]
            answer = extract_answer(cut_at_stop("".join(pieces), stops))
            if answer is None:
                continue
            margin = answer_margin(pieces, rollout.margins, answer)
            totals[answer] += margin
            if answer not in best or margin > best[answer][0]:
                best[answer] = (margin, j)
        if not totals:
            return 0
        return best[max(totals, key=totals.get)][1]

    return choose


def majority_vote(texts: Sequence[str]) -> int:
    """The index of the first path whose answer is the most common (ties: the answer seen first)."""
    answers: List[Optional[str]] = [extract_answer(t) for t in texts]
    counts = defaultdict(int)
    for a in answers:
        if a is not None:
            counts[a] += 1
    if not counts:
        return 0
    top = max(counts.values())
    return next(j for j, a in enumerate(answers) if a is not None and counts[a] == top)
