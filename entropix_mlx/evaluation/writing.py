"""The writing task: open-ended text, where greedy decoding loops and samplers differ most.

Three kinds of prompt, each split into development and test halves by a fixed rule:
- request: an open-ended request from writing_requests.txt (stories, explanations, advice,
  letters, descriptions) through the model's chat template;
- continuation: the first 40 tokens of a prose passage of Python's reference manual
  (`pydoc_data.topics`, shipped with Python, PSF licence); the model writes the next tokens and
  the passage's own next tokens are the human reference;
- loop-escape: 24 tokens of another passage whose last few tokens are then repeated three more
  times (after Holtzman et al. 2020 and Hewitt et al. 2022): does the sampler leave the loop?
"""

import re
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Dict, List, Optional, Sequence, Tuple

from ..engine.prompt import chat_prompt_ids
from ..errors import EvalError
from .tasks import Item, Task

SPLITS = ("dev", "test")
KINDS = ("request", "continuation", "loop-escape")
ORDER = ("request", "continuation", "request", "loop-escape")  # how the kinds interleave
MAX_TOKENS = {"request": 192, "continuation": 96, "loop-escape": 96}
PASSAGES_PER_KIND = 64  # per kind, both splits together
CONTINUATION_PREFIX = 40
LOOP_BASE = 24
LOOP_PHRASES = (3, 4, 6, 8)  # the repeated phrase's tokens, in turn
LOOP_REPEATS = 3  # copies added after the phrase's own
# What relevance compares the prompt with: the same kind of context, saying nothing in particular.
NEUTRAL_REQUEST = "Write a short text about anything you like."
NEUTRAL_TEXT = "Here is a passage of text.\n\n"
SOURCE = (
    "open-ended requests written for this project (Apache-2.0); prose passages of Python's "
    "reference manual, pydoc_data.topics (PSF licence)"
)


@dataclass(frozen=True)
class WritingItem(Item):
    """A writing prompt: `group` is its kind; `neutral` the context relevance compares with;
    `reference` the human continuation's ids (continuation prompts)."""

    neutral: Tuple[int, ...] = ()
    reference: Tuple[int, ...] = ()


def load_writing_task(
    tokenizer, split: str = "dev", limit: Optional[int] = None, max_tokens: Optional[int] = None
) -> Task:
    """The writing prompts of `split`, kinds interleaved (so the first `limit` hold a mix);
    `max_tokens` caps every kind's answer length (default: MAX_TOKENS)."""
    if split not in SPLITS:
        raise EvalError(f"unknown split {split!r}; choose dev or test")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, not {limit}")
    if max_tokens is not None and max_tokens < 1:
        raise EvalError(f"--max-tokens must be >= 1, not {max_tokens}")
    budget = {k: min(v, max_tokens or v) for k, v in MAX_TOKENS.items()}
    half = SPLITS.index(split)
    neutral_chat = tuple(chat_prompt_ids(tokenizer, NEUTRAL_REQUEST))
    neutral_text = tuple(tokenizer.encode(NEUTRAL_TEXT))
    continuations, loops = passages(tokenizer, budget["continuation"])
    made = {
        "request": [
            (f"request-{kind}-{i}", tuple(chat_prompt_ids(tokenizer, text)), text, "", neutral_chat)
            for kind, i, text in request_order(read_requests(), half)
        ],
        "continuation": [
            (f"continuation-{name}", ids[:CONTINUATION_PREFIX], None, ids[CONTINUATION_PREFIX:], ())
            for name, ids in continuations[half::2]
        ],
        "loop-escape": [
            (f"loop-{name}-x{phrase}", loop_prompt(ids, phrase), None, (), ())
            for j, (name, ids) in enumerate(loops[half::2])
            for phrase in [LOOP_PHRASES[j % len(LOOP_PHRASES)]]
        ],
    }
    items = []
    for kind, (id_, ids, text, reference, neutral) in interleave(made, limit):
        reference = tuple(reference[: budget[kind]])
        items.append(
            WritingItem(
                len(items),
                f"{split}:{id_}",
                text if text is not None else tokenizer.decode(list(ids)),
                tokenizer.decode(list(reference)) if reference else "",
                group=kind,
                ids=tuple(ids),
                max_tokens=budget[kind],
                neutral=neutral or neutral_text,
                reference=reference,
            )
        )
    return Task(
        "writing",
        "write",
        "",
        tuple(items),
        max_tokens=max(budget.values()),
        source=SOURCE + f" (Python {sys.version_info.major}.{sys.version_info.minor})",
        licence="Apache-2.0 (requests); PSF-2.0 (passages)",
    )


def interleave(made: Dict[str, list], limit: Optional[int]) -> List[tuple]:
    """(kind, entry) in ORDER's rhythm, a kind that runs out skipped; the first `limit`."""
    queues = {kind: list(entries) for kind, entries in made.items()}
    out: List[tuple] = []
    while any(queues.values()) and (limit is None or len(out) < limit):
        for kind in ORDER:
            if queues[kind] and (limit is None or len(out) < limit):
                out.append((kind, queues[kind].pop(0)))
    return out


# --- requests --------------------------------------------------------------------------------


def read_requests() -> Dict[str, List[str]]:
    """The requests file: {kind: [request, ...]} in file order."""
    text = resources.files(__package__).joinpath("writing_requests.txt").read_text("utf-8")
    kinds: Dict[str, List[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        heading = re.fullmatch(r"\[(\w+)\]", line)
        if heading:
            current = kinds.setdefault(heading.group(1), [])
        else:
            current.append(line)
    return kinds


def request_order(kinds: Dict[str, List[str]], half: int) -> List[Tuple[str, int, str]]:
    """One split's requests (every other one of each kind), the kinds taking turns."""
    mine = {kind: list(enumerate(texts))[half::2] for kind, texts in kinds.items()}
    longest = max(len(v) for v in mine.values())
    return [
        (kind, i, text)
        for round_ in range(longest)
        for kind, entries in mine.items()
        if round_ < len(entries)
        for i, text in [entries[round_]]
    ]


# --- passages of the reference manual --------------------------------------------------------


def prose_runs(text: str) -> List[str]:
    """Runs of consecutive prose paragraphs of one manual topic, each paragraph unwrapped and the
    paragraphs joined by blank lines; code, grammar, lists, tables and headings end a run."""
    runs, current = [], []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        prose = all(line and not line[0].isspace() for line in lines)
        prose = prose and not any(re.match(r"[*=+|>-]", line) for line in lines)
        prose = prose and not (len(lines) > 1 and re.fullmatch(r"[*=-]+", lines[1]))
        if prose:
            current.append(" ".join(line.strip() for line in lines))
        elif current:
            runs.append("\n\n".join(current))
            current = []
    if current:
        runs.append("\n\n".join(current))
    return runs


def passages(tokenizer, continuation_tokens: int) -> Tuple[List[tuple], List[tuple]]:
    """(continuation passages, loop-escape passages): (name, token ids) each, PASSAGES_PER_KIND
    of each kind spread evenly over the manual; the continuation passages are long enough for
    the prefix and a full-length reference, the loop-escape ones come from other runs."""
    from pydoc_data.topics import topics

    runs = [
        (f"{topic}-{i}", tuple(tokenizer.encode(run)))
        for topic in sorted(topics)
        for i, run in enumerate(prose_runs(topics[topic]))
    ]
    need = CONTINUATION_PREFIX + MAX_TOKENS["continuation"]
    long_runs = [run for run in runs if len(run[1]) >= need]
    continuations = spread(long_runs, PASSAGES_PER_KIND)
    taken = {name for name, _ in continuations}
    others = [run for run in runs if run[0] not in taken and len(run[1]) >= LOOP_BASE]
    if len(continuations) < PASSAGES_PER_KIND or len(others) < PASSAGES_PER_KIND:
        raise EvalError(
            "this Python's pydoc_data.topics has too little prose for the writing task; "
            "run it under CPython 3.11 or later"
        )
    return continuations, spread(others, PASSAGES_PER_KIND)


def spread(entries: Sequence, count: int) -> list:
    """`count` entries spaced evenly through `entries` (all of them if there are fewer)."""
    if len(entries) <= count:
        return list(entries)
    return [entries[i * len(entries) // count] for i in range(count)]


def loop_prompt(ids: Sequence[int], phrase: int) -> Tuple[int, ...]:
    """The first LOOP_BASE tokens, then their last `phrase` tokens LOOP_REPEATS more times."""
    base = tuple(ids[:LOOP_BASE])
    return base + base[-phrase:] * LOOP_REPEATS
