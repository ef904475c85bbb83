"""Make the tiny per-architecture references in this folder (needs torch; CI never runs it).

For each architecture: a tiny random model built with transformers' own classes, saved as a
Hugging Face folder (float32 safetensors, a small byte-level BPE tokenizer, chat template),
the same weights as a GGUF laid out as llama.cpp's convert_hf_to_gguf.py lays them out
(gguf-py's tensor-name map, Q/K rows permuted for Llama-style archs only, Gemma norms + 1,
Phi-3's fused tensors kept fused, the converter's tokenizer metadata via gguf.SpecialVocab),
and transformers' float32 outputs on a fixed prompt (`reference.npz`):
    ids [L], logits [L, V], greedy [16] (transformers' generate), attn_probs [H, L] (the final
    layer's attention of the last position, eager attention), final_layer_sliding (bool).

    pip install torch==2.13.0   # into the venv; transformers and gguf are installed
    python tests/references/make_arch_references.py

It also records in README.md how far mlx-lm's own classes land from transformers on each
folder (mlx-lm is a second implementation, not the reference).
"""

import json
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
SEED = 0
PROMPT_LENGTH = 12
GREEDY = 16
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog 12345 and 67890 times",
    "it's the theory that they'll test: 2024, 1999 and 31415 in there",
    "Hello, World! The THE the then there these 100 200 300 400",
] * 20
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)

# name -> (transformers config class, causal-LM class, config, GGUF arch, pre-tokenizer name)
ARCHS = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(num_hidden_layers=2, rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
        "llama",
        "llama-bpe",
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(num_hidden_layers=2, head_dim=16, sliding_window=None),
        "llama",
        "llama-bpe",
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(num_hidden_layers=2, tie_word_embeddings=True, extra_vocab=6),
        "qwen2",
        "qwen2",
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(num_hidden_layers=2, head_dim=16, tie_word_embeddings=True),
        "qwen3",
        "qwen2",
    ),
    "smollm3": (
        "SmolLM3Config",
        "SmolLM3ForCausalLM",
        dict(num_hidden_layers=4, tie_word_embeddings=True, use_sliding_window=False),
        "smollm3",
        "llama-bpe",
    ),
    "granite": (
        "GraniteConfig",
        "GraniteForCausalLM",
        dict(
            num_hidden_layers=2,
            embedding_multiplier=6.0,
            attention_multiplier=0.05,
            residual_multiplier=0.3,
            logits_scaling=4.0,
            tie_word_embeddings=True,
        ),
        "granite",
        "llama-bpe",
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            num_hidden_layers=2,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
            },
            sliding_window=None,
            pad_token_id=0,
        ),
        "phi3",
        "gpt2",
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            num_hidden_layers=7,  # 5 sliding, 1 global, 1 sliding: ends on a sliding layer
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,  # = head_dim, which llama.cpp assumes (GGUF has no key)
            sliding_window=4,
            rms_norm_eps=1e-6,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
        ),
        "gemma3",
        "gpt2",
    ),
}
# Multimodal wrappers, folder only (their GGUF text model is the architecture above).
WRAPPERS = {
    "mistral3": ("Mistral3Config", "Mistral3ForConditionalGeneration", "mistral"),
    "gemma3_multimodal": ("Gemma3Config", "Gemma3ForConditionalGeneration", "gemma3"),
}
PERMUTED = {"llama", "smollm3", "granite"}


def train_tokenizer(split: str) -> Tokenizer:
    """A byte-level BPE of ~300 tokens trained on CORPUS, split as the architecture splits."""
    tokenizer = Tokenizer(models.BPE())
    if split == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        regex = QWEN2_SPLIT if split == "qwen2" else LLAMA3_SPLIT
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def hf_tokenizer(split: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(split),
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def randomize(model: torch.nn.Module, gemma: bool):
    """Weights that spread the logits (transformers' init makes them near-uniform)."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight"):
                p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif p.ndim == 2 and "embed" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def text_config(kind: str, vocab: int) -> dict:
    _, _, extra, _, _ = ARCHS[kind]
    config = {**SMALL, **extra}
    config["vocab_size"] = vocab + config.pop("extra_vocab", 0)
    config.setdefault("tie_word_embeddings", False)
    config.update(bos_token_id=0, eos_token_id=2, pad_token_id=config.get("pad_token_id", 0))
    return config


def run_transformers(model, ids: torch.Tensor, final_layer_sliding: bool) -> dict:
    with torch.no_grad():
        out = model(ids, output_attentions=True)
        greedy = model.generate(
            ids, max_new_tokens=GREEDY, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return {
        "ids": ids[0].numpy().astype(np.int32),
        "logits": out.logits[0].float().numpy(),
        "greedy": greedy[0, ids.shape[1] :].numpy().astype(np.int32),
        "attn_probs": out.attentions[-1][0, :, -1, :].float().numpy(),
        "final_layer_sliding": np.array(final_layer_sliding),
    }


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: rows per head from half-split to interleaved order."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(folder: Path, path: Path, kind: str, config: dict, split: str):
    """The folder as llama.cpp's converter writes it (float32, its tensor names and keys)."""
    arch_name = ARCHS[kind][3]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    n_layers, n_heads = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rope = config.get("rope_parameters") or {}
    rope = rope.get("full_attention", rope)
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    if "head_dim" in config:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch_name in PERMUTED:
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
    if arch_name == "granite":
        writer.add_attention_scale(config["attention_multiplier"])
        writer.add_embedding_scale(config["embedding_multiplier"])
        writer.add_residual_scale(config["residual_multiplier"])
        writer.add_logit_scale(config["logits_scaling"])
    if arch_name == "phi3":
        factor = rope.get("partial_rotary_factor", 1.0)
        writer.add_rope_dimension_count(int(factor * config["hidden_size"]) // n_heads)
        writer.add_rope_scaling_orig_ctx_len(config["max_position_embeddings"])
        writer.add_sliding_window(0)
    if arch_name == "gemma3":
        writer.add_sliding_window(config["sliding_window"])
    write_vocab(writer, folder, config["vocab_size"], split)

    from safetensors.numpy import load_file

    weights = load_file(str(folder / "model.safetensors"))
    names = gguf.get_tensor_name_map(arch, n_layers)
    for name, w in weights.items():
        name = name.replace("model.language_model.", "model.")
        if config.get("tie_word_embeddings") and name == "lm_head.weight":
            continue
        if arch_name in PERMUTED and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = permute(w, n_heads)
        if arch_name in PERMUTED and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = permute(w, n_kv)
        if arch_name == "gemma3" and name.endswith("norm.weight"):
            w = w + 1  # Gemma3RMSNorm's 1 + w, as the converter stores it
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        writer.add_tensor(new, np.ascontiguousarray(w.astype(np.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_vocab(writer: gguf.GGUFWriter, folder: Path, vocab_size: int, pre: str):
    """The converter's `_set_vocab_gpt2`: tokens by id ([PADn] past the tokenizer), types
    (added special tokens CONTROL), merges, special ids and chat template (gguf.SpecialVocab)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer)


def build(kind: str, tokenizer: PreTrainedTokenizerFast, wrapper: str = None):
    vocab = len(tokenizer)
    config = text_config(kind, vocab)
    config_class = getattr(transformers, ARCHS[kind][0])
    if wrapper is None:
        model_class = getattr(transformers, ARCHS[kind][1])
        hf_config = config_class(**config)
    else:
        wrapper_config, model_class_name, _ = WRAPPERS[wrapper]
        model_class = getattr(transformers, model_class_name)
        hf_config = getattr(transformers, wrapper_config)(
            text_config=config_class(**config).to_dict(),
            vision_config=vision_config(wrapper),
        )
    hf_config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = model_class(hf_config).eval()
    randomize(model, gemma=kind == "gemma3")
    return model, hf_config, config


def vision_config(wrapper: str) -> dict:
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    if wrapper == "mistral3":
        return {"model_type": "pixtral", "head_dim": 8, "image_size": 32, "patch_size": 8, **tiny}
    return {"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8, **tiny}


def final_layer_sliding(model_config) -> bool:
    types = getattr(model_config.get_text_config(), "layer_types", None) or []
    return bool(types) and types[-1] == "sliding_attention"


def mlx_lm_gap(folder: Path, reference: dict) -> float:
    """Max |logit| difference of mlx-lm's own classes on the folder from transformers'."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(folder)
    model.set_dtype(mx.float32)
    logits = np.array(model(mx.array(reference["ids"])[None])[0])
    return float(np.abs(logits - reference["logits"]).max())


def make(name: str, kind: str, wrapper: str = None) -> str:
    split = ARCHS[kind][4]
    tokenizer = hf_tokenizer(split)
    model, hf_config, config = build(kind, tokenizer, wrapper)
    out = HERE / name
    shutil.rmtree(out, ignore_errors=True)
    folder = out / "folder"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    rng = np.random.default_rng(SEED)
    ids = torch.tensor(rng.integers(3, len(tokenizer), (1, PROMPT_LENGTH)))
    reference = run_transformers(model, ids, final_layer_sliding(hf_config))
    np.savez_compressed(out / "reference.npz", **reference)
    if wrapper is None:
        saved = json.loads((folder / "config.json").read_text())  # with the class defaults
        write_gguf(folder, out / f"{name}.gguf", kind, saved, split)
    try:
        gap = f"{mlx_lm_gap(folder, reference):.2g}"
    except Exception as e:  # mlx-lm cannot open some of these folders at all
        gap = f"cannot load ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    return gap


def main():
    gaps = {}
    for name in ARCHS:
        gaps[name] = make(name, name)
        print(name, gaps[name], file=sys.stderr)
    for name, (_, _, kind) in WRAPPERS.items():
        gaps[name] = make(name, kind, wrapper=name)
        print(name, gaps[name], file=sys.stderr)
    versions = {"transformers": transformers.__version__, "torch": torch.__version__}
    versions["gguf"] = __import__("importlib.metadata").metadata.version("gguf")
    (HERE / "versions.json").write_text(json.dumps({**versions, "mlx_lm_gap": gaps}, indent=1))


if __name__ == "__main__":
    main()
