"""entropix-mlx: entropy-aware (Entropix) text generation with MLX."""

__version__ = "0.1.0"

# First, before anything imports mlx: the system OpenBLAS only helps if loaded before mlx.core.
from . import cpu_blas  # noqa: F401, I001
from .generate import batch_generate, generate, stream_batch_generate, stream_generate
from .loading import load
from .sampling import SamplerConfig

__all__ = [
    "load",
    "generate",
    "stream_generate",
    "batch_generate",
    "stream_batch_generate",
    "SamplerConfig",
    "__version__",
]
