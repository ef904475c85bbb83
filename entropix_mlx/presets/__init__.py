"""Shipped sampler presets: one TOML file of SamplerConfig settings per catalog model."""

from importlib import resources
from typing import Dict

from ..errors import ConfigError
from ..sampling.config import SamplerConfig, parse_settings


def read_preset(name: str) -> Dict[str, object]:
    """The settings in `<name>.toml` beside this module, checked by SamplerConfig."""
    source = resources.files(__name__).joinpath(f"{name}.toml")
    try:
        settings = parse_settings(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no shipped preset {name!r}: {name}.toml is missing from entropix_mlx/presets"
        ) from None
    SamplerConfig.from_dict(settings)
    return settings
