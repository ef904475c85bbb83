"""A Hugging Face tokenizer built from a GGUF file's own metadata (`tokenizer.ggml.*`).

Two vocabularies are supported, as llama.cpp names them in `tokenizer.ggml.model`:
- `gpt2`: byte-level BPE (tokens + merges), split by the regex `tokenizer.ggml.pre` names;
- `llama`: SentencePiece BPE (tokens + scores, `<0xXX>` byte fallback, `▁` for spaces).
The result sits inside mlx-lm's `TokenizerWrapper`: a `transformers.PreTrainedTokenizerFast` over
the `tokenizers` library, except for a SentencePiece vocabulary at run time, which is
`gguf_spm`'s compact tokenizer (a fraction of the memory); `fast=True` builds the `tokenizers`
twin of that one, which `convert` writes as tokenizer.json.
"""

import warnings
from functools import partial
from typing import Any, Dict, List, Optional

from mlx_lm.tokenizer_utils import (
    BPEStreamingDetokenizer,
    SPMStreamingDetokenizer,
    TokenizerWrapper,
)
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import PreTrainedTokenizerFast

from ..errors import ModelLoadError
from .gguf_spm import SentencePieceDetokenizer, SentencePieceTokenizer, SentencePieceVocab

__all__ = ["UnsupportedTokenizerError", "build_backend_tokenizer", "tokenizer_from_gguf_metadata"]

# llama.cpp's token types (gguf.TokenType) that matter here; 2 unknown, 5 unused, 6 byte.
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's split is Llama 3's with one digit per piece.
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# `tokenizer.ggml.pre` -> (split regex, ignore_merges). Any other name gets GPT-2's split
# (ByteLevel's built-in regex), as transformers does: that covers gpt-2 and smollm, whose
# llama.cpp digit pre-split is a no-op for a vocabulary with no multi-digit tokens.
_LLAMA3 = (_LLAMA3_SPLIT, True)
_PRE_SPLITS = {
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral"], _LLAMA3
    ),
    **dict.fromkeys(["dbrx", "smaug-bpe"], (_LLAMA3_SPLIT, False)),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"], (_QWEN2_SPLIT, False)),
}
_GPT2_PRES = {
    "default",
    "gpt2",
    "gpt-2",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva",
    "mpt",
    "olmo",
    "jais",
    "phi-2",
}

_HF_FOLDER_HINT = "load the model from its Hugging Face folder (with tokenizer.json) instead"

# What each key holds, when present: a type, or a list of that type. Anything else is damage.
_KINDS = {
    "tokenizer.ggml.model": str,
    "tokenizer.ggml.pre": str,
    "tokenizer.chat_template": str,
    "tokenizer.ggml.tokens": [str],
    "tokenizer.ggml.merges": [str],
    "tokenizer.ggml.token_type": [int],
    "tokenizer.ggml.scores": [float],
    **dict.fromkeys(
        [
            f"tokenizer.ggml.{flag}"
            for flag in ("add_bos_token", "add_eos_token", "add_space_prefix")
        ],
        bool,
    ),
    **dict.fromkeys(
        [
            f"tokenizer.ggml.{name}_token_id"
            for name in ("bos", "eos", "unknown", "padding", "eot", "eom")
        ],
        int,
    ),
}
_KIND_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


class UnsupportedTokenizerError(ModelLoadError):
    """The GGUF describes no tokenizer this module can build (a `ValueError`)."""


def tokenizer_from_gguf_metadata(metadata: Dict[str, Any], fast: bool = False) -> TokenizerWrapper:
    """Build the tokenizer a GGUF describes, from the file's metadata (key -> value).

    `fast`: a SentencePiece vocabulary as a `tokenizers` BPE too (for writing tokenizer.json).
    Raises `UnsupportedTokenizerError` for a vocabulary type other than `gpt2` or `llama`,
    or when the metadata carries no vocabulary.
    """
    meta = _TokenizerMetadata(metadata)
    special = {
        "bos_token": meta.token("bos"),
        "eos_token": meta.token("eos"),
        "unk_token": meta.token("unknown"),
        "pad_token": meta.token("padding"),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    add_bos = meta.add_bos and meta.id("bos") is not None
    add_eos = meta.add_eos and meta.id("eos") is not None
    if meta.model == "llama" and not fast:
        hf = _sentencepiece_tokenizer(meta, add_bos, add_eos, **special)
        detokenizer = partial(SentencePieceDetokenizer, trim_space=meta.add_space_prefix)
    else:
        # transformers rebuilds the post-processor from the two flags: keep them in step.
        hf = _wrap(_build_backend(meta), add_bos_token=add_bos, add_eos_token=add_eos, **special)
        if meta.model == "gpt2":
            detokenizer = BPEStreamingDetokenizer
        else:
            detokenizer = partial(SPMStreamingDetokenizer, trim_space=meta.add_space_prefix)
    eos_ids = [meta.id(name) for name in ("eos", "eot", "eom")]
    return TokenizerWrapper(hf, detokenizer, eos_token_ids=[i for i in eos_ids if i is not None])


def _wrap(backend: Tokenizer, **kwargs) -> PreTrainedTokenizerFast:
    # Given `tokenizer_object=`, transformers deep-copies the backend (through its JSON form),
    # which doubled the tokenizer's memory (SmolLM2: 50 MB against 21); a backend already in
    # place when `__init__` runs is used as it is, as transformers' own subclasses do.
    hf = PreTrainedTokenizerFast.__new__(PreTrainedTokenizerFast)
    hf._tokenizer = backend
    hf.__init__(**kwargs)
    return hf


def build_backend_tokenizer(metadata: Dict[str, Any]) -> Tokenizer:
    """The bare `tokenizers.Tokenizer` the GGUF metadata describes (see the module docstring)."""
    return _build_backend(_TokenizerMetadata(metadata))


def _build_backend(meta: "_TokenizerMetadata") -> Tokenizer:
    if meta.model == "gpt2":
        tokenizer = _byte_level_bpe(meta)
    elif meta.model == "llama":
        tokenizer = _sentencepiece_bpe(meta)
    else:
        raise UnsupportedTokenizerError(
            f"GGUF tokenizer model {meta.model!r} is not supported (only 'gpt2' byte-level BPE "
            f"and 'llama' SentencePiece are); {_HF_FOLDER_HINT}"
        )
    _add_special_tokens(tokenizer, meta)
    tokenizer.post_processor = _post_processor(meta)
    return tokenizer


class _TokenizerMetadata:
    """Typed access to the `tokenizer.*` keys; MLX arrays become Python values."""

    def __init__(self, metadata: Dict[str, Any]):
        self._metadata = metadata
        self.model = self.get("tokenizer.ggml.model")
        tokens = self.get("tokenizer.ggml.tokens")
        if not tokens:
            raise UnsupportedTokenizerError(
                f"GGUF metadata has no 'tokenizer.ggml.tokens', so it carries no vocabulary; {_HF_FOLDER_HINT}"
            )
        self.tokens = _unique(list(tokens))
        self.types = self.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        if len(self.types) != len(tokens):
            raise ModelLoadError(
                f"GGUF metadata tokenizer.ggml.token_type has {len(self.types)} entries for "
                f"{len(tokens)} tokens; the file is damaged"
            )
        spm = self.model == "llama"
        # llama.cpp's defaults when a flag is absent: SentencePiece adds BOS and a space prefix.
        self.add_bos = bool(self.get("tokenizer.ggml.add_bos_token", spm))
        self.add_eos = bool(self.get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = bool(self.get("tokenizer.ggml.add_space_prefix", spm))

    def get(self, key: str, default: Any = None) -> Any:
        value = self._metadata.get(key, default)
        value = value.tolist() if hasattr(value, "tolist") else value
        problem = None if value is None or key not in _KINDS else _kind_problem(value, _KINDS[key])
        if problem:
            raise ModelLoadError(f"GGUF metadata {key}{problem}; the file is damaged")
        return value

    def id(self, name: str) -> Optional[int]:
        """The id of `tokenizer.ggml.{name}_token_id`, or None if absent or out of range."""
        token_id = self.get(f"tokenizer.ggml.{name}_token_id")
        return token_id if token_id is not None and 0 <= token_id < len(self.tokens) else None

    def token(self, name: str) -> Optional[str]:
        token_id = self.id(name)
        return None if token_id is None else self.tokens[token_id]

    def required(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise UnsupportedTokenizerError(
                f"GGUF tokenizer model {self.model!r} needs '{key}', which the metadata lacks; {_HF_FOLDER_HINT}"
            )
        return value


def _kind_problem(value: Any, kind) -> Optional[str]:
    """What is wrong with a metadata value that should be of `kind` (None if nothing)."""
    if not isinstance(kind, list):
        return None if _holds(value, kind) else f" is {_shown(value)}, not {_KIND_NAMES[kind]}"
    if not isinstance(value, list):
        return f" is {_shown(value)}, not a list"
    bad = next((i for i, item in enumerate(value) if not _holds(item, kind[0])), None)
    return None if bad is None else f"[{bad}] is {_shown(value[bad])}, not {_KIND_NAMES[kind[0]]}"


def _holds(value: Any, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + " ..."


def _unique(tokens: List[str]) -> List[str]:
    # A vocabulary maps strings to ids, so a repeated string would leave an id with no token.
    seen = set()
    for i, token in enumerate(tokens):
        if token in seen:
            tokens[i] = f"{token}[duplicate {i}]"
        seen.add(tokens[i])
    return tokens


def _byte_level_bpe(meta: _TokenizerMetadata) -> Tokenizer:
    merges = [tuple(merge.split(" ", 1)) for merge in meta.required("tokenizer.ggml.merges")]
    split, ignore_merges = _split_for_pre(meta.get("tokenizer.ggml.pre", "default"))
    vocab = {token: i for i, token in enumerate(meta.tokens)}
    tokenizer = _bpe(vocab=vocab, merges=merges, ignore_merges=ignore_merges)
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _bpe(**settings) -> Tokenizer:
    try:
        return Tokenizer(models.BPE(**settings))
    except Exception as e:  # tokenizers rejects a vocabulary or merges with a bare Exception
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(
            f"the GGUF vocabulary cannot be built ({reason}); the file is damaged"
        ) from None


def _split_for_pre(pre: str):
    """(split regex or None for GPT-2's, ignore_merges) for a `tokenizer.ggml.pre` name."""
    if pre in _PRE_SPLITS:
        return _PRE_SPLITS[pre]
    if pre not in _GPT2_PRES:
        warnings.warn(
            f"unknown GGUF pre-tokenizer {pre!r}: using GPT-2's split; tokens may differ from llama.cpp's"
        )
    return None, False


def _scores(meta: _TokenizerMetadata) -> List[float]:
    # Without scores, earlier tokens rank higher (the order SentencePiece writes them in).
    scores = meta.get("tokenizer.ggml.scores") or [-float(i) for i in range(len(meta.tokens))]
    if len(scores) != len(meta.tokens):
        raise ModelLoadError(
            f"GGUF metadata tokenizer.ggml.scores has {len(scores)} entries for "
            f"{len(meta.tokens)} tokens; the file is damaged"
        )
    return scores


def _sentencepiece_tokenizer(
    meta: _TokenizerMetadata, add_bos: bool, add_eos: bool, **special
) -> SentencePieceTokenizer:
    # Like llama.cpp, the pieces' scores decide; merges a file may carry are not read.
    pieces = SentencePieceVocab(meta.tokens, _scores(meta), meta.id("unknown"))
    added = {
        i: AddedToken(meta.tokens[i], special=is_special, normalized=False)
        for i, is_special in _added_token_ids(meta).items()
    }
    named = {value for key, value in special.items() if key.endswith("_token")}
    extra = [t.content for t in added.values() if t.special and t.content not in named]
    pattern = {(True, True): "bos_eos", (True, False): "bos", (False, True): "eos"}
    return SentencePieceTokenizer(
        pieces,
        meta.add_space_prefix,
        added_tokens_decoder=added,
        extra_special_tokens=extra,  # so that skip_special_tokens drops them
        special_tokens_pattern=pattern.get((add_bos, add_eos), "none"),
        **special,
    )


def _sentencepiece_bpe(meta: _TokenizerMetadata) -> Tokenizer:
    merges = meta.get("tokenizer.ggml.merges")
    if merges:
        merges = [tuple(merge.split(" ", 1)) for merge in merges]
    else:
        merges = _merges_from_scores(meta.tokens, _scores(meta), meta.types)
    vocab = {token: i for i, token in enumerate(meta.tokens)}
    tokenizer = _bpe(
        vocab=vocab,
        merges=merges,
        unk_token=meta.token("unknown"),
        fuse_unk=True,
        byte_fallback=True,
    )
    # llama.cpp prefixes a space to every text run that starts the input or follows a special
    # token; a Prepend normalizer does the same, as added tokens are split out before it runs.
    steps = [normalizers.Prepend("▁")] if meta.add_space_prefix else []
    tokenizer.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _merges_from_scores(tokens: List[str], scores: List[float], types: List[int]) -> List[tuple]:
    """BPE merges equivalent to SentencePiece's rule: join the adjacent pair whose union scores best."""
    pieces = {token: i for i, token in enumerate(tokens) if types[i] == NORMAL}
    ranked = []
    for piece, i in pieces.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in pieces and right in pieces:
                ranked.append((-scores[i], i, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _added_token_ids(meta: _TokenizerMetadata) -> Dict[int, bool]:
    """id -> special, for the tokens matched whole in text, as llama.cpp matches them.

    Control tokens and the declared bos/eos/... are special (skipped when decoding with
    skip_special_tokens); user-defined ones are plain added tokens. They keep their ids: their
    text is already in the vocabulary.
    """
    named = {meta.id(name) for name in ("bos", "eos", "unknown", "padding", "eot", "eom")}
    return {
        i: kind == CONTROL or i in named
        for i, kind in enumerate(meta.types)
        if kind in (CONTROL, USER_DEFINED) or i in named
    }


def _add_special_tokens(tokenizer: Tokenizer, meta: _TokenizerMetadata) -> None:
    added = [
        AddedToken(meta.tokens[i], special=special, normalized=False)
        for i, special in _added_token_ids(meta).items()
    ]
    tokenizer.add_special_tokens([token for token in added if token.special])
    tokenizer.add_tokens([token for token in added if not token.special])


def _post_processor(meta: _TokenizerMetadata) -> processors.TemplateProcessing:
    bos = meta.token("bos") if meta.add_bos else None
    eos = meta.token("eos") if meta.add_eos else None

    def framed(sequence: str, type_id: int) -> List[str]:
        return (
            ([f"{bos}:{type_id}"] if bos else [])
            + [sequence]
            + ([f"{eos}:{type_id}"] if eos else [])
        )

    specials = [
        (meta.token(name), meta.id(name)) for name, on in (("bos", bos), ("eos", eos)) if on
    ]
    return processors.TemplateProcessing(
        single=framed("$A", 0),
        pair=framed("$A", 0) + framed("$B:1", 1),
        special_tokens=specials,
    )
