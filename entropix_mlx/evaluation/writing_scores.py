"""Per-answer measures of the writing task, added to each record as it is made.

The model-based ones (surprisal, relevance) read the untempered model, whatever sampler wrote the
answer: log p(answer | prompt) comes with the answer (each step's log-probability under the
plain softmax), log p(answer | neutral context) from one forward pass. The EOS token that ends an
answer is not measured (it is `ended`).
"""

import time
from typing import Dict, List, Optional, Sequence

import mlx.core as mx

from .text_metrics import is_loop, seq_rep, unknown_words

SCORE_FIELDS = (
    "kind",
    "ended",
    "loop",
    "seq_rep_4",
    "surprisal",
    "relevance",
    "words",
    "unknown_words",
    "junk",
    "scoring_seconds",
)


def continuation_logprobs(
    model, context: Sequence[int], continuation: Sequence[int]
) -> List[float]:
    """log p(continuation[j] | context, continuation[:j]) under the model's plain softmax."""
    ids = mx.array([*context, *continuation])[None]
    logits = model(ids)[0, len(context) - 1 : -1].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logprobs, mx.array(continuation)[:, None], axis=-1)
    return picked[:, 0].tolist()


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class WritingScorer:
    """Scores the answers of one writing task (`score`, one record at a time) and, once per
    continuation prompt, the human reference (`human`: item index -> its measures)."""

    def __init__(self, model, task):
        self.model = model
        self.items = {item.index: item for item in task.items}
        self.human: Dict[int, dict] = {}

    def score(self, record: dict) -> dict:
        """Add SCORE_FIELDS to `record` (in place; returned for chaining)."""
        tic = time.perf_counter()
        item = self.items[record["item"]]
        ended = record["finish"] == "eos"
        keep = len(record["token_ids"]) - ended
        ids, logprobs = record["token_ids"][:keep], record["token_logprobs"][:keep]
        record.update(
            kind=item.group, ended=ended, **self.measure(item, ids, record["completion"], logprobs)
        )
        record["loop"] = is_loop(ids, ended)
        if item.reference and item.index not in self.human:
            reference = list(item.reference)
            self.human[item.index] = {
                "token_ids": reference,
                "loop": is_loop(reference, False),
                **self.measure(item, reference, item.answer),
            }
        record["scoring_seconds"] = round(time.perf_counter() - tic, 4)
        return record

    def measure(
        self, item, ids: List[int], text: str, logprobs: Optional[List[float]] = None
    ) -> dict:
        """seq-rep-4, surprisal (mean NLL per token, nats), relevance (mean log p given the prompt
        minus given the neutral context; not for loop-escape prompts, whose repeats reward
        copying) and the unknown-word share. `logprobs`: the tokens' log p given the prompt, when
        known."""
        unknown, words = unknown_words(text)
        surprisal = relevance = None
        if ids:
            if logprobs is None:
                logprobs = continuation_logprobs(self.model, item.ids, ids)
            given_prompt = mean(logprobs)
            surprisal = -given_prompt
            if item.group != "loop-escape":
                relevance = given_prompt - mean(
                    continuation_logprobs(self.model, item.neutral, ids)
                )
        return {
            "seq_rep_4": seq_rep(ids, 4),
            "surprisal": surprisal,
            "relevance": relevance,
            "words": words,
            "unknown_words": unknown,
            "junk": unknown / words if words else None,
        }
