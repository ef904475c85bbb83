"""Quantized layers whose scale and bias cover 16 values (GGUF's Q6_K and Q2_K), held exactly.

MLX's affine quantization shares a scale and a bias per group of 32 values at the least. Here
every 16 real values are followed by 16 padding codes, so each sub-block fills one MLX group of
its own, and the input gets zeros at the padding positions: one quantized matmul over twice
the row length gives the exact product. It costs 2 x bits + 4 bits a value (float32 scale and
bias per 16), half of float32's 32 for Q6_K, and twice the arithmetic of a plain layer.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

SUB_BLOCK = 16
GROUP = 2 * SUB_BLOCK
_DEQUANTIZE_VALUES = 1 << 20


def pad_sub_blocks(x: mx.array) -> mx.array:
    """`[..., n]` -> `[..., 2n]`: 16 zeros after every 16 values."""
    *lead, n = x.shape
    x = x.reshape(*lead, n // SUB_BLOCK, SUB_BLOCK)
    return mx.concatenate([x, mx.zeros_like(x)], axis=-1).reshape(*lead, 2 * n)


def drop_padding(x: mx.array) -> mx.array:
    """`[..., 2n]` -> `[..., n]`: the inverse of `pad_sub_blocks`."""
    *lead, n = x.shape
    return x.reshape(*lead, n // GROUP, GROUP)[..., :SUB_BLOCK].reshape(*lead, n // 2)


class SubBlockQuantizedLinear(nn.QuantizedLinear):
    """A bias-free linear layer `input_dims -> output_dims` in padded 16-value sub-blocks."""

    def __init__(self, input_dims: int, output_dims: int, bits: int):
        super().__init__(2 * input_dims, output_dims, bias=False, group_size=GROUP, bits=bits)

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(pad_sub_blocks(x))


class SubBlockQuantizedEmbedding(nn.QuantizedEmbedding):
    """An embedding of `dims` values a token in padded 16-value sub-blocks."""

    def __init__(self, num_embeddings: int, dims: int, bits: int):
        super().__init__(num_embeddings, 2 * dims, group_size=GROUP, bits=bits)

    def __call__(self, x: mx.array) -> mx.array:
        return drop_padding(super().__call__(x))

    def as_linear(self, x: mx.array) -> mx.array:
        return super().as_linear(pad_sub_blocks(x))


SUB_BLOCK_LAYERS = (SubBlockQuantizedLinear, SubBlockQuantizedEmbedding)


def sub_block_layer(module: nn.Module, bits: int) -> nn.Module:
    """The sub-block quantized twin of an `nn.Linear` (without bias) or `nn.Embedding`."""
    rows, columns = module.weight.shape
    if isinstance(module, nn.Embedding):
        return SubBlockQuantizedEmbedding(rows, columns, bits)
    return SubBlockQuantizedLinear(columns, rows, bits)


def float_shape(module: nn.Module) -> tuple:
    """A quantized layer's `[rows, columns]` as a float layer (padding left out)."""
    rows, packed_columns = module.weight.shape
    columns = packed_columns * 32 // module.bits
    return rows, columns // 2 if isinstance(module, SUB_BLOCK_LAYERS) else columns


def dequantized_weight(module: nn.Module) -> mx.array:
    """A quantized layer's weight in float32, exactly, in `float_shape(module)`.

    A block of rows at a time, written in place: MLX's CPU `dequantize` holds 2x its output in
    temporaries, and 4-7x for 3, 5 and 6 bits (672 MB for a 96 MB Q6_K embedding at once).
    """
    # float32 scales and biases: with float16 ones MLX computes in float16 (errors of ~1e-3).
    scales, biases = (module.scales, module.get("biases"))
    scales, biases = (None if a is None else a.astype(mx.float32) for a in (scales, biases))
    rows, columns = float_shape(module)
    out = mx.zeros((rows, columns), mx.float32)
    stored_columns = module.weight.shape[-1] * 32 // module.bits  # padding included
    step = max(1, _DEQUANTIZE_VALUES // stored_columns)
    for i in range(0, rows, step):
        block = slice(i, i + step)
        part = mx.dequantize(
            module.weight[block],
            scales[block],
            None if biases is None else biases[block],
            module.group_size,
            module.bits,
            mode=module.mode,
        )
        out[block] = drop_padding(part) if isinstance(module, SUB_BLOCK_LAYERS) else part
        mx.eval(out)
    return out


def float_layer(module: nn.Module) -> nn.Module:
    """A quantized layer as the float32 `nn.Linear` / `nn.Embedding` it holds exactly; any
    other module as it is."""
    if not isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return module
    weight = dequantized_weight(module)
    if isinstance(module, nn.QuantizedEmbedding):
        layer = nn.Embedding(*weight.shape)
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
        if "bias" in module:
            layer.bias = module["bias"].astype(mx.float32)
    layer.weight = weight
    return layer


def without_sub_block_layers(model: nn.Module) -> int:
    """Replace `model`'s sub-block layers by their exact float32 twins -> how many there were,
    for code that knows only MLX's own layers (mlx-lm, tensor-parallel sharding)."""
    layers = [
        (p, float_layer(m)) for p, m in model.named_modules() if isinstance(m, SUB_BLOCK_LAYERS)
    ]
    model.update_modules(tree_unflatten(layers))
    return len(layers)
