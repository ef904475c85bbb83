"""The architectures this project runs, by Hugging Face `model_type`."""

from typing import Tuple, Type

from . import gemma3, llama

ARCHITECTURES = {
    **{model_type: (llama.Model, llama.ModelArgs) for model_type in llama.FAMILY},
    "gemma3_text": (gemma3.Model, gemma3.ModelArgs),
}
SUPPORTED = tuple(ARCHITECTURES)


def classes(model_type: str) -> Tuple[Type, Type]:
    """(Model, ModelArgs) of a supported `model_type` (KeyError otherwise)."""
    return ARCHITECTURES[model_type]


def build(config: dict):
    """A model (random weights) from a config dict naming a supported `model_type`."""
    model_class, args_class = classes(config.get("model_type", "llama"))
    return model_class(args_class.from_dict(config))
