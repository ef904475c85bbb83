"""entropix-mlx: entropy-aware (Entropix) text generation with MLX."""

__version__ = "0.1.0"

from .loading import load

__all__ = ["load", "__version__"]
