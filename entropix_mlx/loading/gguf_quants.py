"""Raw GGUF tensor blocks -> MLX arrays, without loss.

Every block type whose groups of 32 values share one scale and one offset maps exactly onto
MLX's affine quantization (w = scale * q + bias, group 32), so those tensors stay quantized:

| GGUF type | MLX layer | scale, bias per group of 32 |
| --- | --- | --- |
| Q4_0 / Q5_0 / Q8_0 | 4 / 5 / 8 bits | d, -8d / -16d / -128d |
| Q4_1 / Q5_1 | 4 / 5 bits | d, m |
| Q4_K / Q5_K | 4 / 5 bits | d * sc, -dmin * m (sub-block of 32) |
| Q3_K | 8 bits | d, -124d: the code is (sc - 32)(q - 4) + 124, which spans 0..252 |

Q6_K and Q2_K give every 16 values their own scale (d * sc) and offset (-32 d * sc, -dmin * m):
they become `model.sub_block_quant` layers, 6 / 2 bits with each 16 codes padded to an MLX group.

Scales and biases are kept as float16 where that holds both exactly (Q4_0 ... Q8_0), as float32
otherwise (a K-quant's d * sc needs up to 19 significant bits). The codes of Q2_K, Q3_K and
Q6_K come from gguf-py's own decoder run on the blocks with their scales set to 1, the others'
straight from their bit layouts; tests/test_gguf_quants.py checks every type against gguf-py's
reference dequantization (bit-identical to ggml's).
"""

from typing import Callable, Dict, Tuple

import mlx.core as mx
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import Q4_K, dequantize

from ..model.sub_block_quant import SUB_BLOCK
from .checks import non_finite

GROUP_SIZE = 32
FLOAT_TYPES = {T.F32: np.float32, T.F16: np.float16, T.BF16: np.uint16}
SUB_BLOCK_TYPES = {T.Q6_K, T.Q2_K}  # a scale and bias per 16 values: padded to groups of 32
# Values converted at a time. Small enough that malloc reuses the chunks' temporaries: with
# 1 << 20 they were left behind as 13 MB of freed heap on the default model.
_CHUNK_VALUES = 1 << 16
_SLAB_VALUES = 1 << 22


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 field at byte `start` of every block, as float32 `[n_blocks, 1]`."""
    return blocks[:, start : start + 2].view(np.float16).astype(np.float32)


def _offset(step: int) -> Callable:
    """Legacy blocks `d, ...`: w = d * (q - step)."""
    return lambda blocks: (_f16(blocks, 0), -step * _f16(blocks, 0))


def _with_min(blocks: np.ndarray):
    """Legacy blocks `d, m, ...`: w = d * q + m."""
    return _f16(blocks, 0), _f16(blocks, 2)


def _k_quant(blocks: np.ndarray):
    """Q4_K / Q5_K super-blocks `d, dmin, 12 bytes of 6-bit sc and m, ...`."""
    sc, m = Q4_K.get_scale_min(blocks[:, 4:16])
    return _f16(blocks, 0) * sc, -_f16(blocks, 2) * m


def _nibbles(qs: np.ndarray, runs: int = 1) -> np.ndarray:
    """Codes from `runs` equal runs of bytes: in each, all low nibbles, then all high ones."""
    qs = qs.reshape(len(qs), runs, -1)
    return np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(len(qs), -1)


def _legacy_fifth_bit(blocks: np.ndarray, qh: int) -> np.ndarray:
    """Q5_0 / Q5_1: bit e of the 32-bit field at `qh` is the fifth bit of value e."""
    return np.unpackbits(blocks[:, qh : qh + 4], axis=1, bitorder="little") << 4


def _q5_k_codes(blocks: np.ndarray) -> np.ndarray:
    # Value 64j + 32h + l takes its fifth bit from bit 2j + h of qh[l].
    qh = blocks[:, 16:48].reshape(len(blocks), 1, 1, 32)
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)
    return _nibbles(blocks[:, 48:176], 4) | (((qh >> shifts) & 1) << 4).reshape(len(blocks), -1)


def _decoded_with(blocks: np.ndarray, qtype: T, fields: Dict[int, bytes]) -> np.ndarray:
    """gguf-py's decoding of `blocks` with the bytes at these offsets replaced: `[n, 256]`."""
    blocks = blocks.copy()
    for start, value in fields.items():
        blocks[:, start : start + len(value)] = np.frombuffer(value, np.uint8)
    return dequantize(blocks, qtype).reshape(len(blocks), -1)


_ONE = np.float16(1).tobytes()


def _q3_k(blocks: np.ndarray):
    d = _f16(blocks, 108)
    return np.repeat(d, 8, axis=1), np.repeat(-124 * d, 8, axis=1)


def _q3_k_codes(blocks: np.ndarray) -> np.ndarray:
    return (_decoded_with(blocks, T.Q3_K, {108: _ONE}) + 124).astype(np.uint8)


def _q6_k(blocks: np.ndarray):
    scale = _f16(blocks, 208) * blocks[:, 192:208].view(np.int8)
    return scale, -32 * scale


def _q6_k_codes(blocks: np.ndarray) -> np.ndarray:
    unit = {192: bytes([1] * 16), 208: _ONE}
    return (_decoded_with(blocks, T.Q6_K, unit) + 32).astype(np.uint8)


def _q2_k(blocks: np.ndarray):
    sc_m = blocks[:, 0:16]
    return _f16(blocks, 80) * (sc_m & 0x0F), -_f16(blocks, 82) * (sc_m >> 4)


def _q2_k_codes(blocks: np.ndarray) -> np.ndarray:
    unit = {0: bytes([1] * 16), 80: _ONE, 82: bytes(2)}
    return _decoded_with(blocks, T.Q2_K, unit).astype(np.uint8)


# GGUF type -> (bits, blocks [n, block_bytes] -> (scale, bias) [n, groups_per_block],
#               blocks -> codes [n, values_per_block] (uint8)); groups of 32, or of 16 values
#               for SUB_BLOCK_TYPES
AFFINE_TYPES: Dict[T, Tuple[int, Callable, Callable]] = {
    T.Q4_0: (4, _offset(8), lambda b: _nibbles(b[:, 2:18])),
    T.Q4_1: (4, _with_min, lambda b: _nibbles(b[:, 4:20])),
    T.Q5_0: (5, _offset(16), lambda b: _nibbles(b[:, 6:22]) | _legacy_fifth_bit(b, 2)),
    T.Q5_1: (5, _with_min, lambda b: _nibbles(b[:, 8:24]) | _legacy_fifth_bit(b, 4)),
    T.Q8_0: (8, _offset(128), lambda b: b[:, 2:34] ^ 0x80),  # int8 -> uint8 code, offset 128
    T.Q4_K: (4, _k_quant, lambda b: _nibbles(b[:, 16:144], 4)),
    T.Q5_K: (5, _k_quant, _q5_k_codes),
    T.Q3_K: (8, _q3_k, _q3_k_codes),
    T.Q6_K: (6, _q6_k, _q6_k_codes),
    T.Q2_K: (2, _q2_k, _q2_k_codes),
}
SUPPORTED_TYPES = set(FLOAT_TYPES) | set(AFFINE_TYPES)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes `[rows, n]` (uint8) -> MLX's packing: a little-endian bit stream in uint32 words."""
    eights = codes.reshape(len(codes), -1, 8).astype(np.uint64)
    words = np.bitwise_or.reduce(eights << (np.arange(8, dtype=np.uint64) * bits), axis=-1)
    # Eight codes fill `bits` bytes: keep those bytes of each little-endian uint64.
    stream = words.view(np.uint8).reshape(len(codes), -1, 8)[..., :bits]
    return np.ascontiguousarray(stream).reshape(len(codes), -1).view(np.uint32)


def _check_finite(x: np.ndarray, label: str):
    if not np.isfinite(x).all():
        raise non_finite(label, "fetch it again")


def _exact_dtype(*arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    """The arrays in float16 if it holds them all exactly, else as they are (float32): MLX's
    kernels take scales and biases of one dtype."""
    halves = [x.astype(np.float16) for x in arrays]
    exact = all(np.array_equal(h.astype(np.float32), x) for h, x in zip(halves, arrays))
    return tuple(halves) if exact else arrays


def _row_chunks(rows: int, row_length: int, values: int):
    step = max(1, values // row_length)
    return (slice(i, min(i + step, rows)) for i in range(0, rows, step))


def _pad_sub_blocks(codes: np.ndarray) -> np.ndarray:
    """Codes `[rows, n]` -> `[rows, 2n]`: 16 zero codes after every 16 (`sub_block_quant`)."""
    codes = codes.reshape(len(codes), -1, SUB_BLOCK)
    return np.concatenate([codes, np.zeros_like(codes)], axis=-1).reshape(len(codes), -1)


def _affine(
    raw: np.ndarray, qtype: T, row_length: int, label: str, done: Callable[[int], None]
) -> Dict[str, mx.array]:
    bits, scale_bias, codes_of = AFFINE_TYPES[qtype]
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    padded = qtype in SUB_BLOCK_TYPES
    rows, groups = len(raw), row_length // (SUB_BLOCK if padded else GROUP_SIZE)
    columns = (2 if padded else 1) * row_length * bits // 32
    # The codes go into their MLX array a slab at a time (written in place), so the load
    # never holds a tensor's codes twice (the Gemma 3 embedding's are 160 MB).
    weight = mx.zeros((rows, columns), mx.uint32)
    scales = np.empty((rows, groups), np.float32)
    biases = np.empty((rows, groups), np.float32)
    for slab in _row_chunks(rows, row_length, _SLAB_VALUES):
        packed = np.empty((slab.stop - slab.start, columns), np.uint32)
        for chunk in _row_chunks(slab.stop - slab.start, row_length, _CHUNK_VALUES):
            rows_in = slice(slab.start + chunk.start, slab.start + chunk.stop)
            blocks = raw[rows_in].reshape(-1, block_bytes)
            scale, bias = scale_bias(blocks)
            scales[rows_in], biases[rows_in] = scale.reshape(-1, groups), bias.reshape(-1, groups)
            codes = codes_of(blocks).reshape(chunk.stop - chunk.start, -1)
            packed[chunk] = pack(_pad_sub_blocks(codes) if padded else codes, bits)
        weight[slab] = mx.array(packed)
        mx.eval(weight)
        mx.clear_cache()  # the slab's copy: MLX would keep it for reuse
        done(slab.stop * raw.shape[1])
    _check_finite(scales, label)
    _check_finite(biases, label)
    scales, biases = _exact_dtype(scales, biases)
    return {"weight": weight, "scales": mx.array(scales), "biases": mx.array(biases)}


def tensor_arrays(
    raw: np.ndarray,
    qtype: T,
    shape: Tuple[int, ...],
    label: str,
    done: Callable[[int], None] = lambda n_bytes: None,
) -> Dict[str, mx.array]:
    """One GGUF tensor -> `{"weight"}` (float) or `{"weight", "scales", "biases"}` (quantized).

    `raw`: the tensor's bytes (a view into the memory-mapped file); `shape` in numpy order,
    the row length last; `label` names the tensor in errors; `done(n)` is told as the first
    n bytes of `raw` are no longer needed.
    """
    rows, row_length = int(np.prod(shape[:-1])), shape[-1]
    if qtype in FLOAT_TYPES:
        values = np.frombuffer(raw, FLOAT_TYPES[qtype]).reshape(shape)
        array = mx.array(values)
        if qtype == T.BF16:
            array = array.view(mx.bfloat16)
        if not mx.isfinite(array).all().item():
            raise non_finite(label, "fetch it again")
        return {"weight": array}
    raw = np.frombuffer(raw, np.uint8).reshape(rows, -1)
    arrays = _affine(raw, qtype, row_length, label, done)
    return {k: v.reshape(*shape[:-1], v.shape[-1]) for k, v in arrays.items()}
