"""The benchmark's prompt: plain English prose written for this project (prose.txt), cut to a
token count.

Real, varied text (not a repeated token) so that the attention pattern, and with it the
Entropix attention metrics, look like those of a real prompt.
"""

from importlib import resources
from typing import List

from ..errors import BenchError

# Paragraphs separated by blank lines; package data, read once at import.
TEXT = resources.files(__package__).joinpath("prose.txt").read_text(encoding="utf-8").strip()
PARAGRAPHS = tuple(TEXT.split("\n\n"))


def benchmark_prompt(tokenizer, length: int) -> List[int]:
    """The first `length` token ids of the benchmark text (raw text, no chat template)."""
    ids = list(tokenizer.encode(TEXT))
    if length > len(ids):
        raise BenchError(
            f"prompt length {length} is longer than the benchmark text ({len(ids)} tokens "
            "with this tokenizer); choose --prompt-lengths up to that"
        )
    return ids[:length]
