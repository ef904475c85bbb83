"""The CPU backend's weight policy: quantized layers become float32 where OpenBLAS runs matmuls.

MLX's quantized matmul on the CPU does not use BLAS; with the system OpenBLAS loaded (see
`cpu_blas`) a float32 matmul is many times faster (docs/models.md, "Linux CPU"), for 4-8x the weight
memory. So `auto` dequantizes when OpenBLAS is active and the float32 weights fit the budget:
a quarter of physical memory, or `ENTROPIX_MLX_FLOAT32_BUDGET_MB`. GPU backends are untouched.
"""

import math
import os
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from .. import cpu_blas
from ..errors import ModelLoadError
from ..model.sub_block_quant import float_layer, float_shape

CPU_DTYPES = ("auto", "float32", "quantized")
BUDGET_ENV = "ENTROPIX_MLX_FLOAT32_BUDGET_MB"
MB = 1 << 20
QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)


def check_cpu_dtype(cpu_dtype: str):
    if cpu_dtype not in CPU_DTYPES:
        choices = ", ".join(CPU_DTYPES)
        raise ModelLoadError(f"cpu_dtype must be one of {choices}, got {cpu_dtype!r}")


def float32_budget() -> int:
    """Bytes float32 weights may take: ENTROPIX_MLX_FLOAT32_BUDGET_MB, else 1/4 of the RAM."""
    setting = os.environ.get(BUDGET_ENV, "").strip()
    if not setting:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    try:
        return int(float(setting) * MB)
    except ValueError:
        message = f"{BUDGET_ENV} must be a number of megabytes, got {setting!r}"
        raise ModelLoadError(message) from None


def quantized_layers(model: nn.Module) -> int:
    return sum(isinstance(m, QUANTIZED) for _, m in model.named_modules())


def float32_bytes(model: nn.Module) -> int:
    """The model's size with every weight in float32 (quantized layers counted unpacked)."""
    total = 0
    for _, module in model.named_modules():
        if isinstance(module, QUANTIZED):
            total += 4 * math.prod(float_shape(module))
            total += 4 * module["bias"].size if "bias" in module else 0
        else:
            total += 4 * sum(v.size for v in module.values() if isinstance(v, mx.array))
    return total


def float_dtypes(model: nn.Module) -> str:
    """The dtypes of a float model's weights: "float16", "bfloat16/float32", ..."""
    params = tree_flatten(model.parameters())
    kinds = {v.dtype for _, v in params if mx.issubdtype(v.dtype, mx.floating)}
    return "/".join(sorted(str(k).split(".")[-1] for k in kinds))


def dequantize_model(model: nn.Module) -> nn.Module:
    """Turn every quantized layer of `model` into float32 in place; the rest is cast to float32."""
    leaves = tree_map(float_layer, model.leaf_modules(), is_leaf=nn.Module.is_module)
    model.update_modules(leaves)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return model


def wants_float32(cpu_dtype: str, on_cpu: bool, blas_active: bool, needed: int, budget: int):
    """Whether to dequantize a quantized model; `needed` (its float32 size), `budget` in bytes."""
    if not on_cpu or cpu_dtype == "quantized":
        return False
    return cpu_dtype == "float32" or (blas_active and needed <= budget)


def apply_cpu_weight_policy(
    model: nn.Module, cpu_dtype: str = "auto", log: Callable[[str], None] = lambda msg: None
) -> str:
    """Apply the policy to a loaded model in place -> the weight dtype it now runs in.

    `cpu_dtype`: "auto" (float32 when OpenBLAS is active and the float32 weights fit the
    budget), "float32" (always, on the CPU) or "quantized" (as stored).
    """
    if not quantized_layers(model):
        return float_dtypes(model)
    on_cpu, blas_active = mx.default_device() == mx.cpu, cpu_blas.STATUS.active
    needed = float32_bytes(model)
    budget = float32_budget() if cpu_dtype == "auto" and on_cpu and blas_active else None
    if not wants_float32(cpu_dtype, on_cpu, blas_active, needed, budget or 0):
        if budget is not None:
            log(
                f"Keeping the quantized weights: float32 would take {needed / MB:.0f} MB, "
                f"over the {budget / MB:.0f} MB budget ({BUDGET_ENV})"
            )
        return "quantized"
    dequantize_model(model)
    return "float32"
