"""Measures of generated text on its token ids (repetition, loops, diversity) and its words (junk).

n-grams are counted over the model's token ids, not words: a loop is a loop in any script.
"""

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import EvalError

LOOP_PHRASE = 3  # a loop's repeated phrase has at least this many tokens
LOOP_SEQ_REP_4 = 0.3  # an answer cut at max_tokens above this seq-rep-4 counts as a loop
DIVERSITY_N = (2, 3, 4)  # Su et al. 2022: diversity = prod over n of (1 - rep-n)
WORDFREQ_FIX = "pip install 'entropix-mlx[eval]'"

NgramCounts = Dict[int, Tuple[int, int]]  # n -> (distinct n-grams, n-grams) of one answer


def ngrams(ids: Sequence[int], n: int) -> List[tuple]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def seq_rep(ids: Sequence[int], n: int = 4) -> float:
    """seq-rep-n (Welleck et al. 2019): the share of an answer's n-grams that repeat an earlier
    one, 1 - distinct/all; 0 when it has no n-gram."""
    grams = ngrams(ids, n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def repeats_at_end(ids: Sequence[int], min_phrase: int = LOOP_PHRASE) -> bool:
    """Whether the answer ends in two back-to-back copies of a phrase of >= `min_phrase` tokens
    (a loop cut mid-phrase still ends in two copies of a rotation of it)."""
    return any(
        list(ids[-length:]) == list(ids[-2 * length : -length])
        for length in range(min_phrase, len(ids) // 2 + 1)
    )


def is_loop(ids: Sequence[int], ended: bool) -> bool:
    """The loop flag: the tail repeats a phrase of >= 3 tokens, or the answer did not end (no
    EOS) and its seq-rep-4 exceeds 0.3."""
    return repeats_at_end(ids) or (not ended and seq_rep(ids, 4) > LOOP_SEQ_REP_4)


def ngram_counts(ids: Sequence[int], ns: Iterable[int] = DIVERSITY_N) -> NgramCounts:
    counts = {}
    for n in ns:
        grams = ngrams(ids, n)
        counts[n] = (len(set(grams)), len(grams))
    return counts


def corpus_rep(counts: Sequence[NgramCounts], n: int) -> Optional[float]:
    """rep-n over a set of answers as Su et al. 2022 count it: 1 - (sum of each answer's distinct
    n-grams) / (sum of its n-grams); None without any n-gram."""
    distinct = sum(c[n][0] for c in counts)
    total = sum(c[n][1] for c in counts)
    return 1 - distinct / total if total else None


def diversity(counts: Sequence[NgramCounts]) -> Optional[float]:
    """Su et al. 2022's diversity: the product over n = 2, 3, 4 of (1 - rep-n)."""
    value = 1.0
    for n in DIVERSITY_N:
        rep = corpus_rep(counts, n)
        if rep is None:
            return None
        value *= 1 - rep
    return value


def distinct_n(answers: Sequence[Sequence[int]], n: int) -> Optional[float]:
    """distinct-n (Li et al. 2016): distinct n-grams across the answers / all their n-grams."""
    grams = [g for ids in answers for g in ngrams(ids, n)]
    return len(set(grams)) / len(grams) if grams else None


def unknown_words(text: str) -> Tuple[int, int]:
    """(words that English wordfreq does not know, words): the words are wordfreq's tokens made of
    letters (apostrophes allowed); numbers, code and punctuation are left out."""
    try:
        import wordfreq
    except ImportError:
        raise EvalError(
            f"the writing task needs the wordfreq package for its junk-word share; run: {WORDFREQ_FIX}"
        ) from None
    words = [w for w in wordfreq.tokenize(text, "en") if w.replace("'", "").isalpha()]
    unknown = sum(wordfreq.zipf_frequency(w, "en", wordlist="large") == 0 for w in words)
    return unknown, len(words)


def require_wordfreq():
    """Fail at once (not after an hour of generation) when wordfreq is missing."""
    unknown_words("")
