"""An MLX or Hugging Face folder (config.json, safetensors, tokenizer files), or a Hub repo id.

mlx-lm reads the folder (`load_model` with this project's model classes, `load_tokenizer`);
what is added here is the checking that turns a bad file into one clear line.
"""

import json
import math
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import load_config, load_model, load_tokenizer

from ..errors import ModelLoadError
from ..model import SUPPORTED, classes
from .checks import held_layers

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]
# The config.json keys the models read: (type, required); all numbers must be positive and
# finite, whole numbers below 2**31 (MLX's array dimensions are 32-bit).
MAX_SIZE = 2**31
CONFIG_FIELDS = {
    "hidden_size": (int, True),
    "num_hidden_layers": (int, True),
    "intermediate_size": (int, True),
    "num_attention_heads": (int, True),
    "vocab_size": (int, True),
    "num_key_value_heads": (int, False),
    "head_dim": (int, False),
    "max_position_embeddings": (int, False),
    "rms_norm_eps": (float, False),
    "rope_theta": (float, False),
    "tie_word_embeddings": (bool, False),
    "sliding_window": (int, False),
    "query_pre_attn_scalar": (float, False),
}
# Multimodal checkpoints whose text model runs here: wrapper type -> the text model's type when
# `text_config` names none, and the text config's Hugging Face defaults (a Gemma 3 4B's
# text_config leaves out the heads and the vocabulary).
WRAPPERS = {
    "mistral3": ("mistral", {}),
    "gemma3": (
        "gemma3_text",
        {
            "vocab_size": 262208,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-6,
            "sliding_window": 4096,
            "max_position_embeddings": 131072,
        },
    ),
}


def unsupported(what: str) -> str:
    """The refusal line for an architecture this project cannot run."""
    return (
        f"{what} is not supported; entropix-mlx runs these architectures: "
        f"{', '.join(SUPPORTED)} (and the text model of mistral3 and gemma3 checkpoints)"
    )


def read_config(folder: Path) -> dict:
    """config.json as the model classes read it (`text_config` unwrapped, transformers 5's
    `rope_parameters` spelled out), checked to describe a model this project can build."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(
            f"{folder} has no config.json; pass a model folder (config.json, *.safetensors, "
            "tokenizer files), a .gguf file or a Hub repo id"
        )
    try:
        config = load_config(folder)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{config_path} is not valid JSON ({e}); fix or re-download it"
        ) from None
    except TypeError:  # a JSON list, which load_config indexes like an object
        config = None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} is not a JSON object; fix or re-download it")
    config = text_model_config(config)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise ModelLoadError(f"model_type {model_type!r} in {config_path}: {unsupported('it')}")
    for key, (kind, required) in CONFIG_FIELDS.items():
        problem = config_problem(config.get(key), kind, required)
        if problem:
            raise ModelLoadError(
                f"{key} in {config_path} {problem}; fix or re-download config.json"
            )
    try:
        classes(model_type)[1].from_dict(config)
    except ValueError as e:  # heads that do not divide
        raise ModelLoadError(f"config.json is inconsistent: {e}; fix or re-download it") from None
    check_settings(config, config_path)
    return config


def check_settings(config: dict, config_path: Path):
    """`rope_scaling` and `quantization`, when set, must be objects of positive numbers."""
    scaling = config.get("rope_scaling")
    factor = scaling.get("factor", 1.0) if isinstance(scaling, dict) else None
    if scaling is not None and config_problem(factor, float, True):
        raise ModelLoadError(
            f"rope_scaling in {config_path} must be an object with a positive finite factor, got "
            f"{_short(scaling)}; fix or re-download config.json"
        )
    quantization = config.get("quantization")
    if quantization is not None and not (
        isinstance(quantization, dict)
        and not any(config_problem(quantization.get(k), int, True) for k in ("bits", "group_size"))
    ):
        raise ModelLoadError(
            f"quantization in {config_path} must be an object with whole-number bits and "
            f"group_size, got {_short(quantization)}; fix or re-download config.json"
        )


def text_model_config(config: dict) -> dict:
    """The text model's settings: a wrapper's `text_config` over its own keys (the
    quantization stays), with `rope_parameters` read into the keys the models take."""
    wrapper = config.get("model_type")
    if wrapper in WRAPPERS and isinstance(config.get("text_config"), dict):
        text_type, defaults = WRAPPERS[wrapper]
        text = {"model_type": text_type, **defaults, **config["text_config"]}
        config = {**config, **text}
    return {**config, **rope_settings(config)}


def rope_settings(config: dict) -> dict:
    """transformers 5 nests RoPE settings in `rope_parameters` (per layer type for Gemma 3):
    -> `rope_theta`, `rope_scaling` (None for plain RoPE), `partial_rotary_factor` and Gemma's
    `rope_local_base_freq`."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict):
        return {}
    out = {}
    if isinstance(rope.get("full_attention"), dict):
        local = rope.get("sliding_attention") or {}
        if "rope_theta" in local:
            out["rope_local_base_freq"] = local["rope_theta"]
        rope = rope["full_attention"]
    if "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    if "partial_rotary_factor" in rope:
        out["partial_rotary_factor"] = rope["partial_rotary_factor"]
    kind = rope.get("rope_type", rope.get("type", "default"))
    out["rope_scaling"] = None if kind == "default" else rope
    return out


def config_problem(value, kind: type, required: bool) -> Optional[str]:
    """What is wrong with one config.json value (None if nothing)."""
    if value is None:
        return "is missing" if required else None
    if kind is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return f"must be a {'number' if kind is float else 'whole number'}, got {_short(value)}"
    if kind is int and value >= MAX_SIZE:
        return f"must be below 2**31, got {_short(value)}"
    if not _finite(value):
        return f"must be finite, got {_short(value)}"
    return None if value > 0 else f"must be positive, got {value!r}"


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a whole number too large for a float
        return False


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def check_weight_names(folder: Path, config: dict):
    """config.json against the names in the weight files (read lazily, before any layer is
    built): as many layers as num_hidden_layers says; quantized layers if `quantization` is set.
    """
    names = []
    for weights in sorted(folder.glob("model*.safetensors")):
        try:
            names += mx.load(str(weights)).keys()
        except (RuntimeError, ValueError) as e:
            raise ModelLoadError(
                f"cannot read the weights in {folder} ({e}); re-download them"
            ) from None
    held = held_layers(names, "model.layers")
    if names and held != config["num_hidden_layers"]:
        raise ModelLoadError(
            f"num_hidden_layers in {folder / 'config.json'} is {config['num_hidden_layers']} but "
            f"the weights hold {held} layers; fix or re-download config.json"
        )
    if names and config.get("quantization") and not any(n.endswith(".scales") for n in names):
        raise ModelLoadError(
            f"quantization in {folder / 'config.json'} says the weights are quantized, but the "
            "weight files hold no quantized layers; fix or re-download config.json"
        )


def model_classes(config: dict):
    """mlx-lm's model-class hook: this project's models instead of mlx-lm's own (`config` is
    `read_config`'s, which `read_model` hands it)."""
    return classes(config["model_type"])


def read_model(folder: Path, config: dict, quantize: Optional[int] = None):
    """The model (weights still lazy) and its quantization description."""
    try:
        model, config = load_model(
            folder, lazy=True, get_model_classes=model_classes, model_config=config
        )
    except FileNotFoundError:
        raise ModelLoadError(
            f"{folder} has no model*.safetensors weight files; download the weights too"
        ) from None
    except RuntimeError as e:  # MLX reports a corrupt file with a bare RuntimeError
        raise ModelLoadError(
            f"cannot read the weights in {folder} ({e}); re-download them"
        ) from None
    except KeyError as e:  # mlx-lm indexes the quantization settings it expects
        raise ModelLoadError(f"config.json lacks the quantization setting {e}; fix it") from None
    except ValueError as e:  # mlx-lm lists missing or unexpected tensors over several lines
        raise ModelLoadError(
            f"the model cannot be built from {folder} ({' '.join(str(e).split())}); fix or "
            "re-download config.json and the weights"
        ) from None
    q = config.get("quantization")
    if q:
        return model, f"MLX {q['bits']}-bit (group {q['group_size']})"
    if not quantize:
        return model, "float"
    if quantize not in (4, 8):
        raise ModelLoadError(f"quantize must be 4 or 8 bits, not {quantize}")
    nn.quantize(model, group_size=64, bits=quantize)
    return model, f"MLX {quantize}-bit (group 64, quantized on load)"


def load_folder(folder: Path, quantize: Optional[int] = None):
    """Load an MLX / Hugging Face folder -> (model, tokenizer, args, quantization description)."""
    config = read_config(folder)
    check_weight_names(folder, config)
    model, description = read_model(folder, config, quantize)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} has no tokenizer.json or tokenizer.model; add the tokenizer files"
        )
    eos = config.get("eos_token_id")
    try:
        tokenizer = load_tokenizer(folder, eos_token_ids=eos if isinstance(eos, list) else None)
    except Exception as e:  # json and tokenizers report a malformed file with bare errors
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(
            f"cannot read the tokenizer files in {folder} ({reason}); fix or re-download them"
        ) from None
    template = tokenizer.chat_template
    if template is not None and not isinstance(template, (str, dict)):  # dict: named templates
        raise ModelLoadError(
            f"the chat template in {folder}'s tokenizer files is {_short(template)}, not text; "
            "fix or re-download them"
        )
    return model, tokenizer, model.args, description


def snapshot_path(repo_id: str) -> Path:
    """Local folder of a Hub repo: the local cache first, then a download."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:
        reason = type(e).__name__
        raise ModelLoadError(
            f"{repo_id} is not in the local Hugging Face cache; connect once or pass a local "
            f"path (download failed: {reason})"
        ) from None
