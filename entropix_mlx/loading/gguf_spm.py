"""A GGUF's SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`), held in flat arrays and
tokenized the way llama.cpp tokenizes it.

Why not a library: Gemma's 262,144 pieces cost 96 MiB in the `tokenizers` library (a BPE needs
its 513,511 merges spelled out, and it keeps the vocabulary twice) and 44 MiB in `sentencepiece`,
against a 241 MiB model file. Here the pieces are one UTF-8 blob with offsets, plus their
scores and a sorted crc32 index: 7 MiB. The algorithm is llama.cpp's `spm` session,
which is SentencePiece's BPE: repeatedly join the adjacent pair whose union is a piece with the
best score (ties: the leftmost), then spell what is not a piece as `<0xXX>` byte pieces.

`SentencePieceTokenizer` puts it behind transformers' Python tokenizer, which splits out the
added (control and user-defined) tokens, adds BOS, applies chat templates and decodes.
`convert` writes the same vocabulary as a `tokenizers` BPE instead (`gguf_tokenizer`).
"""

import bisect
import heapq
import re
import zlib
from array import array
from typing import Dict, List, Optional, Sequence

import numpy as np
from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer, StreamingDetokenizer
from transformers import PreTrainedTokenizer

from ..errors import GenerationError

SPACE = "▁"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class SentencePieceVocab:
    """Pieces (id -> text), their scores, and text -> id through a crc32 index.

    The arrays are `array.array`s: indexing one gives a Python number without numpy's per-item
    cost, and `bisect` searches one in C (the tokenizer looks a piece up for every merge)."""

    def __init__(self, tokens: Sequence[str], scores: Sequence[float], unk_id: Optional[int]):
        encoded = [token.encode("utf-8") for token in tokens]
        self._blob = b"".join(encoded)
        self._offsets = _array("q", np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64))
        hashes = np.fromiter(map(zlib.crc32, encoded), np.uint32, len(encoded))
        del encoded
        order = np.argsort(hashes, kind="stable")
        self._order = _array("i", order.astype(np.int32))
        self._hashes = _array("I", hashes[order])
        self.scores = _array("f", np.asarray(scores, np.float32))
        self.unk_id = unk_id
        self._byte_ids = [self.id(f"<0x{b:02X}>") for b in range(256)]

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def piece(self, i: int) -> str:
        return self.piece_bytes(i).decode("utf-8")

    def piece_bytes(self, i: int) -> bytes:
        return self._blob[self._offsets[i] : self._offsets[i + 1]]

    def id(self, piece: str) -> Optional[int]:
        """The id of the piece spelled `piece`, or None."""
        key = piece.encode("utf-8")
        h = zlib.crc32(key)
        i = bisect.bisect_left(self._hashes, h)
        while i < len(self._hashes) and self._hashes[i] == h:  # crc32 collides now and then
            j = self._order[i]
            if self.piece_bytes(j) == key:
                return j
            i += 1
        return None

    def encode(self, text: str) -> List[int]:
        """Ids for `text` (spaces already written as ▁), as llama.cpp's SentencePiece session."""
        n = len(text)
        if n == 0:
            return []
        # Symbols: runs of characters in a linked list; a merged-away one has size 0.
        start, size = list(range(n)), [1] * n
        prev, nxt = list(range(-1, n - 1)), list(range(1, n + 1))
        nxt[-1] = -1
        known: Dict[str, Optional[int]] = {}
        queue = []

        def lookup(piece: str) -> Optional[int]:
            if piece not in known:
                known[piece] = self.id(piece)
            return known[piece]

        def push(left: int, right: int):
            if left < 0 or right < 0:
                return
            piece = text[start[left] : start[left] + size[left] + size[right]]
            token = lookup(piece)
            if token is not None:
                heapq.heappush(queue, (-self.scores[token], left, right, len(piece)))

        for i in range(1, n):
            push(i - 1, i)
        while queue:
            _, left, right, length = heapq.heappop(queue)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != length:
                continue  # one side has been merged since this pair was queued
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])

        ids: List[int] = []
        i = 0
        while i != -1:
            piece = text[start[i] : start[i] + size[i]]
            token = lookup(piece)
            ids.extend([token] if token is not None else self._spelled(piece))
            i = nxt[i]
        return ids

    def _spelled(self, char: str) -> List[int]:
        """A character that is no piece: its UTF-8 bytes as byte pieces (else the unknown id)."""
        ids = [self._byte_ids[b] for b in char.encode("utf-8")]
        if None not in ids:
            return ids
        if self.unk_id is None:  # llama.cpp stops here too
            raise GenerationError(
                f"the model's vocabulary cannot spell {char!r} (no byte pieces, no unknown "
                "token); leave that character out of the text"
            )
        return [self.unk_id]


class SentencePieceTokenizer(PreTrainedTokenizer):
    """transformers' Python tokenizer over a `SentencePieceVocab`.

    Every added token (control tokens, user-defined ones, the named specials) comes with the
    vocabulary as `added_tokens_decoder`, so the parent adds nothing and never lists the vocabulary.
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, pieces: SentencePieceVocab, add_space_prefix: bool, **kwargs):
        self.pieces = pieces
        self.add_space_prefix = add_space_prefix
        super().__init__(clean_up_tokenization_spaces=False, **kwargs)
        self._update_trie()  # the parent fills its trie only when it adds tokens itself

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def get_vocab(self) -> Dict[str, int]:
        return {self.pieces.piece(i): i for i in range(len(self.pieces))}

    def _update_total_vocab_size(self):
        # Without listing the vocabulary: a GGUF's added tokens are pieces, a later one is not.
        n = len(self.pieces)
        self.total_vocab_size = n + sum(i >= n for i in self._added_tokens_decoder)

    def _add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        if not new_tokens:  # the parent would copy the whole vocabulary to add nothing
            return 0
        return super()._add_tokens(new_tokens, special_tokens)

    def _tokenize(self, text: str, **kwargs) -> List[str]:
        # Each text run reaching here starts the input or follows an added token: where
        # llama.cpp puts its space prefix.
        text = text.replace(" ", SPACE)
        if self.add_space_prefix:
            text = SPACE + text
        return [self.pieces.piece(i) for i in self.pieces.encode(text)]

    def _convert_token_to_id(self, token: str) -> int:
        token_id = self.pieces.id(token)
        return self.pieces.unk_id if token_id is None else token_id

    def _convert_id_to_token(self, index: int) -> str:
        return self.pieces.piece(index)

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        data = b"".join(_piece_bytes(token) for token in tokens)
        text = data.replace(SPACE.encode(), b" ").decode("utf-8", "replace")
        if self.add_space_prefix and text.startswith(" "):
            text = text[1:]  # the prefix the encoder added
        return text


def _array(typecode: str, values: np.ndarray) -> array:
    out = array(typecode)
    out.frombytes(np.ascontiguousarray(values).tobytes())
    return out


def _piece_bytes(piece: str) -> bytes:
    byte = _BYTE_PIECE.fullmatch(piece)
    return bytes([int(byte.group(1), 16)]) if byte else piece.encode("utf-8")


class PieceBytes:
    """id -> the bytes a piece stands for, computed when asked (mlx-lm's detokenizer keeps a
    list of all of them: 15 MiB for Gemma)."""

    def __init__(self, pieces: SentencePieceVocab):
        self.pieces = pieces

    def __getitem__(self, i: int) -> bytes:
        return _piece_bytes(self.pieces.piece(i))


class SentencePieceDetokenizer(SPMStreamingDetokenizer):
    """mlx-lm's streaming SentencePiece detokenizer, reading pieces from the vocabulary."""

    def __init__(self, tokenizer: SentencePieceTokenizer, trim_space: bool = True):
        StreamingDetokenizer.__init__(self)
        self.trim_space = trim_space
        self.tokenmap = PieceBytes(tokenizer.pieces)
        self.reset()
