"""GGUF block types against gguf-py's reference dequantization (bit-identical to ggml's)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from entropix_mlx.errors import ModelLoadError
from entropix_mlx.loading.gguf_quants import (
    AFFINE_TYPES,
    SUB_BLOCK_TYPES,
    pack,
    tensor_arrays,
)
from entropix_mlx.model.sub_block_quant import (
    dequantized_weight,
    sub_block_layer,
    without_sub_block_layers,
)

# Byte offsets of each block type's float16 scale fields (d, and dmin / m where there is one).
F16_FIELDS = {
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q8_0: (0,),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}
ROWS, ROW_LENGTH = 6, 512


def random_blocks(qtype: T, seed: int = 0) -> np.ndarray:
    """Random bytes in every bit field, with finite, varied float16 scales: `[ROWS, row_bytes]`."""
    rng = np.random.default_rng(seed)
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (ROWS * ROW_LENGTH // block, block_bytes), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        d = (rng.standard_normal(len(blocks)) * 10.0 ** rng.integers(-4, 1, len(blocks))).astype(
            np.float16
        )
        blocks[:, offset : offset + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(ROWS, -1)


def loaded_values(qtype: T, arrays) -> np.ndarray:
    """The values the layer the loader builds from `arrays` holds, in float32."""
    if "scales" not in arrays:
        return np.array(arrays["weight"])
    layer = nn.Linear(ROW_LENGTH, ROWS, bias=False)
    bits = AFFINE_TYPES[qtype][0]
    if qtype in SUB_BLOCK_TYPES:
        layer = sub_block_layer(layer, bits)
    else:
        layer = layer.to_quantized(group_size=32, bits=bits)
    layer.load_weights(list(arrays.items()))
    return np.array(dequantized_weight(layer))


@pytest.mark.parametrize("qtype", sorted(AFFINE_TYPES, key=lambda t: t.name))
def test_every_quantized_type_stays_quantized_and_exact(qtype):
    raw = random_blocks(qtype)
    arrays = tensor_arrays(raw, qtype, (ROWS, ROW_LENGTH), "t")
    bits = AFFINE_TYPES[qtype][0]
    padded = 2 if qtype in SUB_BLOCK_TYPES else 1
    assert arrays["weight"].dtype == mx.uint32
    assert arrays["weight"].shape == (ROWS, padded * ROW_LENGTH * bits // 32)
    assert arrays["scales"].shape == (ROWS, padded * ROW_LENGTH // 32)
    assert arrays["scales"].dtype == arrays["biases"].dtype  # one dtype for MLX's kernels
    np.testing.assert_array_equal(loaded_values(qtype, arrays), dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", sorted(SUB_BLOCK_TYPES, key=lambda t: t.name))
def test_sixteen_value_sub_block_layers_compute_the_exact_products(qtype):
    raw = random_blocks(qtype)
    arrays = tensor_arrays(raw, qtype, (ROWS, ROW_LENGTH), "t")
    weight = dequantize(raw, qtype)
    x = np.random.default_rng(1).standard_normal((3, ROW_LENGTH)).astype(np.float32)
    bits = AFFINE_TYPES[qtype][0]
    linear = sub_block_layer(nn.Linear(ROW_LENGTH, ROWS, bias=False), bits)
    linear.load_weights(list(arrays.items()))
    embedding = sub_block_layer(nn.Embedding(ROWS, ROW_LENGTH), bits)
    embedding.load_weights(list(arrays.items()))
    # float32 sums in another order: relative to the products' scale
    tolerance = 1e-5 * np.abs(x) @ np.abs(weight).T
    assert (np.abs(np.array(linear(mx.array(x))) - x @ weight.T) <= tolerance).all()
    assert (np.abs(np.array(embedding.as_linear(mx.array(x))) - x @ weight.T) <= tolerance).all()
    np.testing.assert_array_equal(np.array(embedding(mx.array([4, 0, 4]))), weight[[4, 0, 4]])


def test_legacy_scales_stay_float16_k_quant_scales_float32():
    assert (
        tensor_arrays(random_blocks(T.Q4_1), T.Q4_1, (ROWS, ROW_LENGTH), "t")["scales"].dtype
        == mx.float16
    )
    assert (
        tensor_arrays(random_blocks(T.Q4_K), T.Q4_K, (ROWS, ROW_LENGTH), "t")["scales"].dtype
        == mx.float32
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_matches_mlx_quantize(bits):
    w = mx.random.normal((4, 256), key=mx.random.key(bits))
    packed, scales, biases = mx.quantize(w, group_size=32, bits=bits)
    values = np.array(mx.dequantize(packed, scales, biases, group_size=32, bits=bits))
    codes = np.rint(
        (values - np.repeat(np.array(biases), 32, 1)) / np.repeat(np.array(scales), 32, 1)
    )
    np.testing.assert_array_equal(pack(codes.astype(np.uint8), bits), np.array(packed))


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K, T.Q8_0])
def test_nan_scale_is_refused_naming_the_tensor(qtype):
    raw = random_blocks(qtype)
    offset = F16_FIELDS[qtype][0]
    raw.reshape(-1, GGML_QUANT_SIZES[qtype][1])[3, offset : offset + 2] = np.array(
        [np.nan], np.float16
    ).view(np.uint8)
    with pytest.raises(
        ModelLoadError, match=r"^x.gguf: tensor blk.0.attn_q.weight holds NaN or infinite values; "
    ):
        tensor_arrays(raw, qtype, (ROWS, ROW_LENGTH), "x.gguf: tensor blk.0.attn_q.weight")


def test_nan_float_tensor_is_refused():
    raw = np.ones(8, np.float32)
    raw[5] = np.nan
    with pytest.raises(ModelLoadError, match="tensor output_norm.weight holds NaN"):
        tensor_arrays(raw.view(np.uint8), T.F32, (8,), "tensor output_norm.weight")


def test_sub_block_layers_give_way_to_exact_float32_twins():
    """What convert and tensor-parallel sharding do: mlx-lm and mlx's sharded layers have no
    16-value groups."""
    raw = random_blocks(T.Q6_K)
    arrays = tensor_arrays(raw, T.Q6_K, (ROWS, ROW_LENGTH), "t")
    model = nn.Sequential(nn.Embedding(ROWS, ROW_LENGTH), nn.Linear(ROW_LENGTH, ROWS, bias=False))
    model.layers = [sub_block_layer(layer, 6) for layer in model.layers]
    model.load_weights([(f"layers.{i}.{k}", v) for i in (0, 1) for k, v in arrays.items()])
    x = mx.array(np.random.default_rng(2).standard_normal((2, ROW_LENGTH)).astype(np.float32))
    before = model.layers[1](x)
    assert without_sub_block_layers(model) == 2
    assert type(model.layers[0]) is nn.Embedding and type(model.layers[1]) is nn.Linear
    np.testing.assert_array_equal(np.array(model.layers[0].weight), dequantize(raw, T.Q6_K))
    np.testing.assert_allclose(np.array(model.layers[1](x)), np.array(before), rtol=1e-5, atol=1e-5)


def test_float32_twins_are_dequantized_a_block_of_rows_at_a_time():
    """Exact across the blocks, without MLX's CPU `dequantize` temporaries for the whole matrix
    (4-7x its output for 3, 5 and 6 bits)."""
    rows = 8 * 2**20 // 512 + 3  # eight blocks of rows and a bit
    layer = nn.Linear(512, rows, bias=False)
    layer.weight = mx.random.normal((rows, 512), key=mx.random.key(0))
    layer = layer.to_quantized(group_size=32, bits=6)
    mx.eval(layer.parameters())
    expected = mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=32, bits=6)
    mx.eval(expected)
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    weight = dequantized_weight(layer)
    mx.eval(weight)
    assert mx.get_peak_memory() - before < 3 * weight.nbytes  # at once: 7x
    assert mx.array_equal(weight, expected).item()
