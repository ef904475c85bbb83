"""The tokenizer built from GGUF metadata: parity with transformers' ids and JSON, round trips,
pre-tokenizer choice, SentencePiece vocabularies and errors."""

import io
import json
import random
import zlib
from pathlib import Path

import numpy as np
import pytest

from entropix_mlx.errors import GenerationError
from entropix_mlx.loading.gguf_spm import SentencePieceVocab
from entropix_mlx.loading.gguf_tokenizer import (
    UnsupportedTokenizerError,
    build_backend_tokenizer,
    tokenizer_from_gguf_metadata,
)

REPO = Path(__file__).resolve().parents[1]
GGUF = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TESTDATA = REPO.parent / "shared" / "testdata"
ROUND_TRIP_TEXTS = [
    "naïve café 東京 🙂",
    "Hello, world!\n\n  indented\tand tabbed  ",
    "def f(x):\n    return x ** 2  # ünïcödé\n",
    "<|im_start|>user\nhi<|im_end|>",
]


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(
            f"{path} is absent (the default GGUF sits in models/, test data in ../shared/testdata)"
        )
    return path


@pytest.fixture(scope="module")
def metadata():
    import mlx.core as mx

    _, metadata = mx.load(str(_require(GGUF)), return_metadata=True)
    return metadata


@pytest.fixture(scope="module")
def tok(metadata):
    return tokenizer_from_gguf_metadata(metadata)


@pytest.fixture(scope="module")
def reference_json():
    return json.loads(_require(TESTDATA / "smollm2_tokenizer_reference.json").read_text())


def _ids(tok, text, chat):
    if chat:
        # The wrapper asks transformers for ids (return_dict=False), encoded without BOS/EOS.
        return list(
            tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        )
    return tok.encode(text)


def _stream(tok, ids):
    detokenizer = tok.detokenizer
    segments = []
    for token in ids:
        detokenizer.add_token(token)
        segments.append(detokenizer.last_segment)
    detokenizer.finalize()
    segments.append(detokenizer.last_segment)
    return segments


# --- the default model against transformers' reference ---------------------------------------


def test_ids_match_transformers_reference(tok):
    ref = np.load(_require(TESTDATA / "smollm2_reference.npz"))
    for i in range(int(ref["n"])):
        text, chat = str(ref[f"text_{i}"]), bool(ref[f"chat_{i}"])
        assert _ids(tok, text, chat) == ref[f"ids_{i}"].tolist(), (
            f"prompt {i} ({'chat' if chat else 'raw'}): {text!r}"
        )


def test_structure_matches_reference_json(tok, reference_json):
    mine = json.loads(tok._tokenizer.backend_tokenizer.to_str())
    assert len(tok) == len(reference_json["model"]["vocab"]) == 49152
    for key in ("added_tokens", "normalizer", "pre_tokenizer", "decoder", "post_processor"):
        assert mine[key] == reference_json[key], key
    for key in ("type", "vocab", "merges", "byte_fallback", "ignore_merges"):
        assert mine["model"][key] == reference_json["model"][key], key


def test_special_tokens_and_eos(tok):
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.unk_token, tok.pad_token) == ("<|endoftext|>", "<|im_end|>")
    assert tok.eos_token_ids == {2}
    assert tok.chat_template.startswith("{% for message in messages %}")
    assert tok.encode("<|im_start|>user") == [1, 4093]  # control tokens stay whole


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_decode_and_streaming_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    segments = _stream(tok, ids)
    assert "".join(segments) == text
    assert not any("\ufffd" in s for s in segments)  # multi-byte characters wait until complete
    assert sum(bool(s) for s in segments) > 1  # incremental, not all at finalize


def test_add_bos_token_prepends_bos(metadata):
    import mlx.core as mx

    tok = tokenizer_from_gguf_metadata({**metadata, "tokenizer.ggml.add_bos_token": mx.array(True)})
    assert tok.encode("Hello") == [1, 19556]
    assert tok.encode("Hello", add_special_tokens=False) == [19556]
    assert tok.add_bos_token


def test_eot_token_joins_eos_ids(metadata):
    import mlx.core as mx

    tok = tokenizer_from_gguf_metadata(
        {**metadata, "tokenizer.ggml.eot_token_id": mx.array(0, dtype=mx.uint32)}
    )
    assert tok.eos_token_ids == {0, 2}


def test_gpt2_hand_built_user_defined_and_duplicate_tokens():
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "ab", "<x>", "a", "<eos>"],
        "tokenizer.ggml.token_type": np.array([1, 1, 1, 4, 1, 3], dtype=np.int32),
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.eos_token_id": np.array(5, dtype=np.uint32),
    }
    tok = tokenizer_from_gguf_metadata(metadata)
    assert len(tok) == 6 and None not in tok.convert_ids_to_tokens(
        list(range(6))
    )  # duplicate keeps its id
    assert tok.encode("ab<x>ba<eos>") == [
        2,
        3,
        1,
        0,
        5,
    ]  # user-defined and control tokens stay whole
    assert tok.decode([2, 3, 5], skip_special_tokens=True) == "ab<x>"  # user-defined is not special


# --- pre-tokenizer choice from tokenizer.ggml.pre ----------------------------------------------


def _pieces(metadata, pre):
    backend = build_backend_tokenizer({**metadata, "tokenizer.ggml.pre": pre})
    return [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str("I'VE 12345 ok")], backend


def test_gpt2_style_pre_tokenizers(metadata):
    for pre in ("smollm", "gpt-2", "default"):
        pieces, _ = _pieces(metadata, pre)
        assert pieces == ["I", "'", "VE", "Ġ12345", "Ġok"], pre  # GPT-2's case-sensitive split


def test_llama3_pre_tokenizer(metadata):
    pieces, backend = _pieces(metadata, "llama-bpe")
    # Case-insensitive contractions and digits in groups of three: Llama 3's split.
    assert pieces == ["I", "'VE", "Ġ", "123", "45", "Ġok"]
    assert json.loads(backend.to_str())["model"]["ignore_merges"] is True


def test_unknown_pre_falls_back_to_gpt2(metadata):
    with pytest.warns(UserWarning, match="no-such-pre"):
        pieces, _ = _pieces(metadata, "no-such-pre")
    assert pieces == _pieces(metadata, "gpt-2")[0]


# --- SentencePiece ("llama") vocabularies ------------------------------------------------------


def _spm_metadata(pieces, scores, **extra):
    """A hand-built llama vocabulary: <unk>, <s>, </s>, 256 byte tokens, then `pieces`."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array([0.0] * 259 + scores, dtype=np.float32),
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": np.array(1, dtype=np.uint32),
        "tokenizer.ggml.eos_token_id": np.array(2, dtype=np.uint32),
        "tokenizer.ggml.unknown_token_id": np.array(0, dtype=np.uint32),
        **extra,
    }


# Both SentencePiece builds: the compact one run time uses (gguf_spm) and the `tokenizers` twin
# that `convert` writes.
BUILDS = pytest.mark.parametrize("fast", [False, True], ids=["compact", "tokenizers"])


@BUILDS
def test_sentencepiece_hand_built(fast):
    pieces = ["▁", "a", "b", "▁a", "ab", "▁ab"]
    tok = tokenizer_from_gguf_metadata(
        _spm_metadata(pieces, [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]), fast=fast
    )
    assert tok.is_fast == fast
    names = lambda ids: tok.convert_ids_to_tokens(ids)  # noqa: E731
    assert names(tok.encode("ab ab")) == ["<s>", "▁ab", "▁ab"]  # BOS and space prefix by default
    assert names(tok.encode("é", add_special_tokens=False)) == [
        "▁",
        "<0xC3>",
        "<0xA9>",
    ]  # byte fallback
    for text in ("ab ab", "é a", "naïve café 東京 🙂"):
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert "".join(_stream(tok, ids[1:])) == text
    assert tok.eos_token_ids == {2}

    raw = tokenizer_from_gguf_metadata(
        _spm_metadata(
            pieces,
            [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],
            **{"tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": False},
        ),
        fast=fast,
    )
    assert raw.convert_ids_to_tokens(raw.encode("ab ab")) == ["ab", "▁ab"]
    assert raw.decode(raw.encode(" ab")) == " ab"


@BUILDS
def test_sentencepiece_added_tokens(fast):
    """Control and user-defined tokens are matched whole, and the text after one gets llama.cpp's
    space prefix; skip_special_tokens drops control tokens only."""
    pieces = ["▁", "a", "b", "▁a", "ab", "▁ab", "<turn>", "\n\n"]
    metadata = _spm_metadata(pieces, [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 0.0, 0.0])
    metadata["tokenizer.ggml.token_type"][-2:] = [3, 4]  # control, user-defined
    tok = tokenizer_from_gguf_metadata(metadata, fast=fast)
    turn, blank = len(pieces) + 257, len(pieces) + 258
    assert tok.encode("<turn>ab\n\nab", add_special_tokens=False) == [turn, 264, blank, 264]
    assert tok.decode([turn, 264, blank, 264], skip_special_tokens=True) == "ab\n\n ab"
    assert tok.decode([1, turn, 264]) == "<s><turn> ab"
    if not fast:  # a token added after loading (`tokenizers` would match it after normalizing)
        size = len(tok)
        assert tok.add_tokens(["<new>"]) == 1 and len(tok) == size + 1
        assert tok.encode("ab<new>", add_special_tokens=False) == [264, size]


def test_sentencepiece_vocab_lookup_through_crc32_collisions():
    assert zlib.crc32(b"plumless") == zlib.crc32(b"buckeroo")  # a known collision
    pieces = SentencePieceVocab(["x", "plumless", "buckeroo", "y"], [0.0] * 4, unk_id=None)
    assert [pieces.id(p) for p in ("plumless", "buckeroo", "y", "z")] == [1, 2, 3, None]
    assert pieces.piece(2) == "buckeroo" and pieces.encode("xy") == [0, 3]
    with pytest.raises(GenerationError, match=r"cannot spell 'z' \(no byte pieces, no unknown"):
        pieces.encode("xz")  # no byte pieces, no unknown id
    assert SentencePieceVocab(["<unk>", "x"], [0.0, 0.0], unk_id=0).encode("xzz") == [1, 0, 0]


@BUILDS
def test_sentencepiece_matches_sentencepiece_library(fast):
    spm = pytest.importorskip("sentencepiece")
    model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog merges pieces byte fallback café naïve 2024".split()
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    metadata = {  # what llama.cpp's converter writes; SentencePiece's piece types are GGUF's
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [p.piece for p in proto.pieces],
        "tokenizer.ggml.scores": np.array([p.score for p in proto.pieces], dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([p.type for p in proto.pieces], dtype=np.int32),
        "tokenizer.ggml.bos_token_id": np.array(sp.bos_id()),
        "tokenizer.ggml.eos_token_id": np.array(sp.eos_id()),
        "tokenizer.ggml.unknown_token_id": np.array(sp.unk_id()),
    }
    tok = tokenizer_from_gguf_metadata(metadata, fast=fast)
    for text in [
        "the quick brown fox",
        "Hello  world",
        "  lazy",
        "naïve café 東京 🙂",
        "dog 12345",
        "a\nb\tc",
        "x",
    ]:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), text
        assert tok.encode(text) == [sp.bos_id()] + sp.encode(text), text
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


# --- errors ------------------------------------------------------------------------------------


def test_unsupported_model_type():
    metadata = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["[PAD]", "a"]}
    with pytest.raises(
        UnsupportedTokenizerError, match=r"'bert' is not supported.*Hugging Face folder"
    ):
        tokenizer_from_gguf_metadata(metadata)
    assert issubclass(UnsupportedTokenizerError, ValueError)


def test_missing_tokens():
    with pytest.raises(UnsupportedTokenizerError, match=r"no 'tokenizer\.ggml\.tokens'"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "gpt2"})


def test_gpt2_without_merges():
    with pytest.raises(UnsupportedTokenizerError, match=r"tokenizer\.ggml\.merges"):
        tokenizer_from_gguf_metadata(
            {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"]}
        )
