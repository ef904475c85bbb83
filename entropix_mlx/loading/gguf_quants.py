"""Raw GGUF tensor blocks -> MLX arrays, without loss.

Every block type whose groups of 32 values share one scale and one offset maps exactly onto
MLX's affine quantization (w = scale * q + bias, group 32), so those tensors stay quantized:

| GGUF type | MLX layer | scale, bias per group of 32 |
| --- | --- | --- |
| Q4_0 / Q5_0 / Q8_0 | 4 / 5 / 8 bits | d, -8d / -16d / -128d |
| Q4_1 / Q5_1 | 4 / 5 bits | d, m |
| Q4_K / Q5_K | 4 / 5 bits | d * sc, -dmin * m (sub-block of 32) |

Scales and biases are kept as float16 where that holds them exactly (Q4_0 ... Q8_0), as float32
otherwise (a K-quant's d * sc needs 17 significant bits). Q2_K, Q3_K and Q6_K give every 16
values their own scale, and MLX's smallest group is 32: those tensors are dequantized to
float32, which is exact and costs 32 bits a value (against 2.6 / 3.4 / 6.6 in the file).

The integer codes are read straight from the blocks' bit layouts; tests/test_gguf_quants.py
checks every type against gguf-py's reference dequantization (bit-identical to ggml's).
"""

from typing import Callable, Dict, Tuple

import mlx.core as mx
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import Q4_K, dequantize

from ..errors import ModelLoadError

GROUP_SIZE = 32
FLOAT_TYPES = {T.F32: np.float32, T.F16: np.float16, T.BF16: np.uint16}
DENSE_TYPES = {T.Q2_K, T.Q3_K, T.Q6_K}  # 16-value sub-blocks: dequantized to float32
_CHUNK_VALUES = 1 << 20  # values converted at a time: bounds the temporary memory


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


# GGUF type -> (bits, blocks [n, block_bytes] -> (scale, bias) [n, values_per_block / 32],
#               blocks -> codes [n, values_per_block] (uint8))
AFFINE_TYPES: Dict[T, Tuple[int, Callable, Callable]] = {
    T.Q4_0: (4, _offset(8), lambda b: _nibbles(b[:, 2:18])),
    T.Q4_1: (4, _with_min, lambda b: _nibbles(b[:, 4:20])),
    T.Q5_0: (5, _offset(16), lambda b: _nibbles(b[:, 6:22]) | _legacy_fifth_bit(b, 2)),
    T.Q5_1: (5, _with_min, lambda b: _nibbles(b[:, 8:24]) | _legacy_fifth_bit(b, 4)),
    T.Q8_0: (8, _offset(128), lambda b: b[:, 2:34] ^ 0x80),  # int8 -> uint8 code, offset 128
    T.Q4_K: (4, _k_quant, lambda b: _nibbles(b[:, 16:144], 4)),
    T.Q5_K: (5, _k_quant, _q5_k_codes),
}
SUPPORTED_TYPES = set(FLOAT_TYPES) | DENSE_TYPES | set(AFFINE_TYPES)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes `[rows, n]` (uint8) -> MLX's packing: a little-endian bit stream in uint32 words."""
    eights = codes.reshape(len(codes), -1, 8).astype(np.uint64)
    words = np.bitwise_or.reduce(eights << (np.arange(8, dtype=np.uint64) * bits), axis=-1)
    # Eight codes fill `bits` bytes: keep those bytes of each little-endian uint64.
    stream = words.view(np.uint8).reshape(len(codes), -1, 8)[..., :bits]
    return np.ascontiguousarray(stream).reshape(len(codes), -1).view(np.uint32)


def _non_finite(label: str) -> ModelLoadError:
    return ModelLoadError(
        f"{label} holds NaN or infinite values; the file is damaged, fetch it again"
    )


def _check_finite(x: np.ndarray, label: str):
    if not np.isfinite(x).all():
        raise _non_finite(label)


def _exact_dtype(x: np.ndarray) -> np.ndarray:
    """float16 if it holds `x` exactly, else float32."""
    half = x.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), x) else x


def _row_chunks(rows: int, row_length: int):
    step = max(1, _CHUNK_VALUES // row_length)
    return (slice(i, min(i + step, rows)) for i in range(0, rows, step))


def _affine(raw: np.ndarray, qtype: T, row_length: int, label: str) -> Dict[str, mx.array]:
    bits, scale_bias, codes_of = AFFINE_TYPES[qtype]
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    rows, groups = len(raw), row_length // GROUP_SIZE
    weight = np.empty((rows, row_length * bits // 32), np.uint32)
    scales = np.empty((rows, groups), np.float32)
    biases = np.empty((rows, groups), np.float32)
    for chunk in _row_chunks(rows, row_length):
        blocks = raw[chunk].reshape(-1, block_bytes)
        scale, bias = scale_bias(blocks)
        scales[chunk], biases[chunk] = scale.reshape(-1, groups), bias.reshape(-1, groups)
        weight[chunk] = pack(codes_of(blocks).reshape(len(scales[chunk]), -1), bits)
    _check_finite(scales, label)
    _check_finite(biases, label)
    return {
        "weight": mx.array(weight),
        "scales": mx.array(_exact_dtype(scales)),
        "biases": mx.array(_exact_dtype(biases)),
    }


def _dense(raw: np.ndarray, qtype: T, row_length: int, label: str) -> np.ndarray:
    out = np.empty((len(raw), row_length), np.float32)
    for chunk in _row_chunks(len(raw), row_length):
        out[chunk] = dequantize(raw[chunk], qtype)
    _check_finite(out, label)
    return out


def tensor_arrays(
    raw: np.ndarray, qtype: T, shape: Tuple[int, ...], label: str
) -> Dict[str, mx.array]:
    """One GGUF tensor -> `{"weight"}` (float) or `{"weight", "scales", "biases"}` (quantized).

    `raw`: the tensor's bytes (a view into the memory-mapped file); `shape` in numpy order,
    the row length last; `label` names the tensor in errors.
    """
    rows, row_length = int(np.prod(shape[:-1])), shape[-1]
    if qtype in FLOAT_TYPES:
        values = np.frombuffer(raw, FLOAT_TYPES[qtype]).reshape(shape)
        array = mx.array(values)
        if qtype == T.BF16:
            array = array.view(mx.bfloat16)
        if not mx.isfinite(array).all().item():
            raise _non_finite(label)
        return {"weight": array}
    raw = np.frombuffer(raw, np.uint8).reshape(rows, -1)
    if qtype in DENSE_TYPES:
        return {"weight": mx.array(_dense(raw, qtype, row_length, label).reshape(shape))}
    arrays = _affine(raw, qtype, row_length, label)
    return {k: v.reshape(*shape[:-1], v.shape[-1]) for k, v in arrays.items()}
