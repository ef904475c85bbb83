"""Every supported architecture against transformers: tiny random models built with transformers'
own classes, as Hugging Face folders and as GGUFs laid out like llama.cpp's converter
(tests/references, made by make_arch_references.py): logits, greedy tokens, and the final
layer's attention the Entropix metrics read."""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from entropix_mlx.loading import ModelLoadError, load
from entropix_mlx.loading.convert import convert
from entropix_mlx.sampling.metrics import attention_metrics

from .helpers import greedy

REFERENCES = Path(__file__).resolve().parent / "references"
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "smollm3", "granite", "phi3", "gemma3"]
WRAPPERS = {"mistral3": "mistral", "gemma3_multimodal": "gemma3_text"}
# float32 both sides; the largest gap seen is 6e-6 (logits of magnitude ~10).
LOGITS_ATOL = 1e-4
PROBS_ATOL = 1e-5


def reference(name: str) -> dict:
    return dict(np.load(REFERENCES / name / "reference.npz"))


def model_type(name: str, fmt: str) -> str:
    """Mistral's GGUFs are llama files; Gemma 3's text model is `gemma3_text`."""
    if name == "mistral" and fmt == "gguf":
        return "llama"
    return "gemma3_text" if name == "gemma3" else name


def source(name: str, fmt: str) -> str:
    return str(REFERENCES / name / ("folder" if fmt == "folder" else f"{name}.gguf"))


@pytest.fixture(scope="module", params=[(a, f) for a in ARCHS for f in ("folder", "gguf")])
def loaded(request):
    name, fmt = request.param
    model, tokenizer, info = load(source(name, fmt))
    return name, fmt, model, tokenizer, info


def test_logits_and_greedy_tokens_match_transformers(loaded):
    name, fmt, model, _, info = loaded
    ref = reference(name)
    assert info.format == fmt and info.args.model_type == model_type(name, fmt)
    logits = np.array(model(mx.array(ref["ids"])[None])[0])
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=LOGITS_ATOL)
    assert greedy(model, ref["ids"].tolist(), len(ref["greedy"])) == ref["greedy"].tolist()


def transformers_metrics(probs: np.ndarray) -> dict:
    """attn_entropy, attn_varentropy and agreement (sampler.md) straight from probabilities."""
    logp = np.log2(np.clip(probs, 1e-10, 1.0))
    entropy = -(probs * logp).sum(-1)
    valid = (probs > 0).sum()
    return {
        "attn_entropy": entropy.mean(),
        "attn_varentropy": entropy.var(),
        "agreement": np.abs(probs - probs.mean(0, keepdims=True)).sum() / valid,
    }


def test_scores_are_the_final_layers_attention(loaded):
    """softmax(scores) is transformers' final-layer attention of the newest position, from the
    full pass and from a cached decoding step; the metrics follow from exactly those."""
    name, _, model, _, _ = loaded
    ref = reference(name)
    ids = mx.array(ref["ids"])[None]
    _, scores = model(ids, return_scores=True)
    np.testing.assert_allclose(
        np.array(mx.softmax(scores, axis=-1)[0]), ref["attn_probs"], rtol=0, atol=PROBS_ATOL
    )
    cache = model.make_cache()
    model(ids[:, :-1], cache=cache)
    _, stepped = model(ids[:, -1:], cache=cache, return_scores=True)
    ours = {k: float(v[0]) for k, v in attention_metrics(stepped).items()}
    for key, value in transformers_metrics(ref["attn_probs"]).items():
        assert ours[key] == pytest.approx(value, abs=1e-4), key


def test_a_sliding_final_layer_attends_to_its_window_only():
    """Gemma 3 1B/4B/27B end on a sliding-window layer: the metrics see the newest
    `sliding_window` positions, as transformers' attention does."""
    ref = reference("gemma3")
    model, _, info = load(source("gemma3", "gguf"))
    window = info.args.sliding_window
    assert bool(ref["final_layer_sliding"]) and info.args.layer_types[-1] == "sliding_attention"
    assert (ref["attn_probs"][:, :-window] == 0).all() and (
        ref["attn_probs"][:, -window:] > 0
    ).all()
    _, scores = model(mx.array(ref["ids"])[None], return_scores=True)
    assert np.isneginf(np.array(scores[0, :, :-window])).all()
    cache = model.make_cache()
    model(mx.array(ref["ids"][:-1])[None], cache=cache)
    _, stepped = model(mx.array(ref["ids"][-1:])[None], cache=cache, return_scores=True)
    assert stepped.shape[-1] == window  # the rotating cache holds the window, no more


@pytest.mark.parametrize("name", ARCHS)
def test_gguf_tokenizer_matches_the_folders(name):
    """The GGUF's own tokenizer (built from its metadata) against transformers' on the folder:
    ids (Qwen's one-digit and Llama 3's three-digit splits), EOS and chat template."""
    from transformers import AutoTokenizer

    _, ours, _ = load(source(name, "gguf"))
    theirs = AutoTokenizer.from_pretrained(source(name, "folder"))
    for text in ["the 12345 foxes, it's 2024!", "Hello  World\n\nthere 67890"]:
        assert ours.encode(text) == theirs.encode(text), text
    assert theirs.convert_tokens_to_ids("<|im_end|>") in ours.eos_token_ids
    messages = [{"role": "user", "content": "the fox"}]
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_multimodal_folders_run_their_text_model(name):
    """A mistral3 / gemma3 checkpoint (transformers 5 names, vision tower and projector
    present) loads as its text model, whose logits match the full model's on text."""
    ref = reference(name)
    model, _, info = load(source(name, "folder"))
    assert info.args.model_type == WRAPPERS[name]
    assert not any("vision" in k or "projector" in k for k, _ in _flat(model))
    logits = np.array(model(mx.array(ref["ids"])[None])[0])
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=LOGITS_ATOL)


def _flat(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


@pytest.mark.parametrize("name", ARCHS)
def test_converted_gguf_opens_in_mlx_lm(name, tmp_path):
    """`convert` writes a folder mlx-lm's own classes run to our logits (Gemma 3: mlx-lm rounds
    sqrt(hidden) to bfloat16, 0.2% on the embeddings)."""
    from mlx_lm import load as mlx_lm_load

    ours, _, _ = load(source(name, "gguf"))
    folder = convert(source(name, "gguf"), tmp_path / "mlx", bits=None)
    theirs, _ = mlx_lm_load(str(folder))
    ids = mx.array(reference(name)["ids"])[None]
    atol = 1e-2 if name == "gemma3" else LOGITS_ATOL
    np.testing.assert_allclose(np.array(theirs(ids)), np.array(ours(ids)), rtol=0, atol=atol)


def mlx_lm_readable(folder: Path, dst: Path) -> Path:
    """A copy of a transformers 5 folder with the RoPE settings also at the top level, where
    mlx-lm 0.32's Llama, Qwen2, SmolLM3, Granite and Phi-3 read them (it ignores
    `rope_parameters`: a Llama at base 5e5 would run at 10000)."""
    shutil.copytree(folder, dst)
    config = json.loads((dst / "config.json").read_text())
    rope = config.get("rope_parameters", {})
    rope = rope.get("full_attention", rope)
    config.update({k: rope[k] for k in ("rope_theta", "partial_rotary_factor") if k in rope})
    (dst / "config.json").write_text(json.dumps(config))
    return dst


# mlx-lm quantizes Granite's embeddings in groups of 64 (wider than the tiny model's 32), and
# runs Gemma 3 with a bfloat16-rounded embedding scale.
@pytest.mark.parametrize("name", [a for a in ARCHS if a not in ("granite", "gemma3")])
def test_mlx_community_quantized_folders(name, tmp_path):
    """A folder quantized by mlx-lm's own convert, as mlx-community publishes them (Qwen2's
    q/k/v hold a `bias` beside the quantization `biases`; Phi-3's fused layers split while
    quantized): our logits are mlx-lm's on the same file."""
    from mlx_lm import convert as mlx_lm_convert
    from mlx_lm.utils import load_model

    src = mlx_lm_readable(REFERENCES / name / "folder", tmp_path / "hf")
    out = tmp_path / "q4"
    mlx_lm_convert(str(src), str(out), quantize=True, q_group_size=32, q_bits=4)
    ours, _, info = load(str(out), cpu_dtype="quantized")
    assert info.quantization == "MLX 4-bit (group 32)"
    theirs, _ = load_model(out)
    ids = mx.array(reference(name)["ids"])[None]
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs(ids)), rtol=0, atol=1e-4)
    if name == "qwen2":
        q_proj = ours.layers[0].self_attn.q_proj
        assert (
            "bias" in q_proj
            and "biases" in q_proj
            and "bias" not in ours.layers[0].self_attn.o_proj
        )


def test_transformers_5_config_keeps_its_rope_base(tmp_path):
    """`rope_parameters` (transformers 5) is read: the reference Llama's base is 5e5; read as
    10000 (where the key is ignored) its logits move by far more than the tolerance."""
    config = json.loads((REFERENCES / "llama" / "folder" / "config.json").read_text())
    assert "rope_theta" not in config and config["rope_parameters"]["rope_theta"] == 5e5
    model, _, info = load(source("llama", "folder"))
    assert info.args.rope_theta == 5e5
    folder = shutil.copytree(REFERENCES / "llama" / "folder", tmp_path / "old")
    del config["rope_parameters"]
    (folder / "config.json").write_text(json.dumps(config))
    ids = mx.array(reference("llama")["ids"])[None]
    base_10000, _, _ = load(str(folder))
    assert np.abs(np.array(base_10000(ids)) - np.array(model(ids))).max() > 100 * LOGITS_ATOL


@pytest.mark.parametrize(
    "model_type", ["mixtral", "qwen3_moe", "qwen3_5", "gemma3n", "olmo2", "deepseek_v3"]
)
def test_unsupported_folder_architectures_are_one_line(tmp_path, model_type):
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ModelLoadError) as error:
        load(str(folder))
    message = str(error.value)
    assert repr(model_type) in message and "qwen3" in message and "gemma3_text" in message
    assert "\n" not in message


@pytest.mark.parametrize("arch", ["qwen3moe", "gemma3n", "olmo2", "qwen35"])
def test_unsupported_gguf_architectures_are_one_line(tmp_path, arch):
    import gguf

    path = tmp_path / f"{arch}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError) as error:
        load(str(path))
    message = str(error.value)
    assert repr(arch) in message and "qwen2" in message and "gemma3" in message
    assert "\n" not in message
