"""Tiny random Llama models and tiny GGUF files for fast tests."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from tokenizers.pre_tokenizers import ByteLevel

from entropix_mlx.model.llama import Model, ModelArgs

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_args(**overrides) -> ModelArgs:
    config = dict(
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(SPECIAL_TOKENS) + 256 + 1,
        rope_theta=10000.0,
        max_position_embeddings=256,
    )
    config.update(overrides)
    return ModelArgs(**config)


def tiny_model(seed: int = 0, dtype=mx.float32, **overrides) -> Model:
    mx.random.seed(seed)
    model = Model(tiny_args(**overrides))
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model


def tokenizer_metadata() -> dict:
    """A minimal gpt2-style byte-level BPE vocabulary in GGUF metadata form."""
    tokens = SPECIAL_TOKENS + sorted(ByteLevel.alphabet()) + ["Ġt"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["Ġ t"],
        "tokenizer.ggml.token_type": mx.array(
            [3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - 3), dtype=mx.int32
        ),
        "tokenizer.ggml.bos_token_id": mx.array(1, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(2, dtype=mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(False),
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }


def model_metadata(args: ModelArgs, architecture: str = "llama") -> dict:
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    return {
        "general.architecture": architecture,
        "llama.embedding_length": u32(args.hidden_size),
        "llama.block_count": u32(args.num_hidden_layers),
        "llama.feed_forward_length": u32(args.intermediate_size),
        "llama.attention.head_count": u32(args.num_attention_heads),
        "llama.attention.head_count_kv": u32(args.num_key_value_heads),
        "llama.attention.layer_norm_rms_epsilon": mx.array(args.rms_norm_eps, dtype=mx.float32),
        "llama.rope.freq_base": mx.array(args.rope_theta, dtype=mx.float32),
        "llama.context_length": u32(args.max_position_embeddings),
        **tokenizer_metadata(),
    }


_GGUF_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face row order -> llama.cpp's interleaved RoPE row order (what GGUF files hold)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: Model) -> dict:
    """The model's float weights as numpy arrays under GGUF names, Q/K rows permuted."""
    args = model.args
    out = {}
    for name, w in tree_flatten(model.parameters()):
        w = np.array(w.astype(mx.float32))
        if name.startswith("model.layers."):
            _, _, i, *rest = name.split(".")
            module, leaf = ".".join(rest[:-1]), rest[-1]
            if module == "self_attn.q_proj":
                w = permute_rows(w, args.num_attention_heads)
            elif module == "self_attn.k_proj":
                w = permute_rows(w, args.num_key_value_heads)
            out[f"blk.{i}.{_GGUF_LAYER[module]}.{leaf}"] = w
        else:
            top = {
                "model.embed_tokens": "token_embd",
                "model.norm": "output_norm",
                "lm_head": "output",
            }
            module, leaf = name.rsplit(".", 1)
            out[f"{top[module]}.{leaf}"] = w
    return out


def write_float_gguf(path: Path, model: Model, architecture: str = "llama") -> Path:
    tensors = {k: mx.array(v) for k, v in gguf_tensors(model).items()}
    mx.save_gguf(str(path), tensors, model_metadata(model.args, architecture))
    return path


def write_quantized_gguf(
    path: Path, model: Model, qtype_2d=None, metadata=None, tensors=None
) -> Path:
    """A GGUF written by llama.cpp's own `gguf` package, 2-D weights quantized (Q8_0 default).

    `metadata` overrides keys (a value of None drops the key); `tensors` adds or replaces
    tensors (GGUF names; numpy, or `(blocks, GGUF type)` for raw quantized blocks; None drops
    one): for tests of damaged files and of types gguf-py cannot quantize.
    """
    import gguf
    from gguf.quants import quantize

    qtype_2d = qtype_2d or gguf.GGMLQuantizationType.Q8_0
    writer = gguf.GGUFWriter(str(path), "llama")
    keys = {**model_metadata(model.args), **(metadata or {})}
    for key, value in keys.items():
        if key == "general.architecture" or value is None:
            continue
        if isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        elif value.ndim == 1:
            writer.add_array(key, np.array(value).tolist())
        elif value.dtype == mx.bool_:
            writer.add_bool(key, bool(value.item()))
        elif value.dtype == mx.float32:
            writer.add_float32(key, value.item())
        else:
            writer.add_uint32(key, value.item())
    all_tensors = {**gguf_tensors(model), **(tensors or {})}
    for name, w in all_tensors.items():
        if w is None:
            continue
        if isinstance(w, tuple):
            writer.add_tensor(name, w[0], raw_dtype=w[1])
        elif w.ndim == 2:
            writer.add_tensor(name, quantize(w, qtype_2d), raw_dtype=qtype_2d)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_folder(path: Path, model: Model) -> Path:
    """An MLX folder (config.json + model.safetensors) of the float model, without tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(model.args).items() if v is not None}
    (path / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return path
