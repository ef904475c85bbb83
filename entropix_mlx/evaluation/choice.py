"""Multiple choice by log-likelihood: how likely the model finds each answer after the question."""

from dataclasses import dataclass
from typing import List, Sequence

import mlx.core as mx

from ..engine.decode import prefill
from ..engine.prompt_cache import PromptCache


@dataclass(frozen=True)
class ChoiceScore:
    """Summed log-probability of one choice's tokens, and the lengths it is normalised by."""

    logprob: float
    tokens: int
    chars: int

    @property
    def per_char(self) -> float:
        return self.logprob / max(self.chars, 1)


def continuation_logprob(
    model, cache: List, last_context_id: int, continuation: Sequence[int]
) -> float:
    """log p(continuation | context) where `cache` holds the context except its last token."""
    tokens = mx.array([last_context_id, *continuation])[None]
    logits = model(tokens, cache)[0, :-1].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logprobs, mx.array(continuation)[:, None], axis=-1)
    return picked.sum().item()


def score_choices(model, tokenizer, context: str, choices: Sequence[str]) -> List[ChoiceScore]:
    """Score " choice" after `context` for each choice; the context is prefilled once.

    Context and continuation are encoded apart (as lm-evaluation-harness does), so every
    choice is scored against the same context tokens.
    """
    context_ids = list(tokenizer.encode(context))
    contexts = PromptCache(model, max_bytes=2**62)  # holds this context alone
    contexts.store(
        context_ids[:-1], prefill(model, mx.array(context_ids[:-1])[None], model.make_cache())
    )
    scores = []
    for choice in choices:
        continuation = " " + choice
        ids = list(tokenizer.encode(continuation, add_special_tokens=False))
        cache, last = contexts.fetch(context_ids)
        logprob = continuation_logprob(model, cache, last[-1], ids)
        scores.append(ChoiceScore(logprob, len(ids), len(continuation)))
    return scores
