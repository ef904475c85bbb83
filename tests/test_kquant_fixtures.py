"""llama.cpp's own K-quant GGUFs of a tiny Llama-3.1-style model (with rope_freqs) against
llama.cpp's logits and greedy tokens on exactly the same weights (../shared/testdata/kquant)."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from entropix_mlx.loading import load
from entropix_mlx.model.sub_block_quant import SubBlockQuantizedEmbedding, SubBlockQuantizedLinear

from .conftest import testdata_path as shared_file
from .helpers import greedy, load_peak_over_file_size

# The fixture README: a float32 forward pass over exactly dequantized weights matches to ~1e-3
# (an independent numpy one: 1.5e-4 .. 3.2e-4); float16 weights alone would move it 0.14.
LOGITS_ATOL = 2e-3
FTYPES = ["Q4_K_M", "Q5_K_M"]


@pytest.fixture(scope="module")
def reference():
    return np.load(shared_file("kquant/reference.npz"))


@pytest.fixture(scope="module", params=FTYPES)
def loaded(request, reference):
    """The fixture as the quantized loader maps it (the CPU policy would turn it into float32)."""
    ftype = request.param
    return ftype, *load(
        str(shared_file(f"kquant/{reference[f'{ftype}__file']}")), cpu_dtype="quantized"
    )


@pytest.mark.parametrize("prompt", ["P1", "P2"])
def test_logits_argmax_and_greedy_tokens_match_llama_cpp(loaded, reference, prompt):
    ftype, model, _, info = loaded
    assert info.quantization == f"{ftype[:4]}/Q6_K; Q6_K in 16-value groups"
    assert model.layers[0].self_attn.q_proj.bits == int(ftype[1])
    assert isinstance(model.model.embed_tokens, SubBlockQuantizedEmbedding)
    assert isinstance(model.layers[3].mlp.down_proj, SubBlockQuantizedLinear)
    key = f"{ftype}__{prompt}"
    ids = reference[f"{key}__ids"].tolist()
    logits = np.array(model(mx.array(ids)[None])[0])
    np.testing.assert_allclose(
        logits[-8:], reference[f"{key}__last8_logits"], rtol=0, atol=LOGITS_ATOL
    )
    np.testing.assert_array_equal(logits.argmax(-1), reference[f"{key}__argmax"])
    assert greedy(model, ids, 16) == reference[f"{key}__greedy16"].tolist()


def test_tokenizer_and_chat_template_from_the_gguf(loaded, reference):
    ftype, _, tokenizer, _ = loaded
    assert tokenizer.encode(str(reference["P1__text"])) == reference[f"{ftype}__P1__ids"].tolist()
    messages = [{"role": "user", "content": str(reference["P2__user_message"])}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == str(reference["P2__text"])
    assert tokenizer.encode(text) == reference[f"{ftype}__P2__ids"].tolist()
    assert 2 in tokenizer.eos_token_ids


def test_converted_folder_gives_the_same_logits_in_mlx_lm(loaded, reference, tmp_path):
    from mlx_lm import load as mlx_lm_load

    from entropix_mlx.loading.convert import convert

    ftype, ours, _, _ = loaded
    folder = convert(str(shared_file(f"kquant/{reference[f'{ftype}__file']}")), tmp_path / "mlx")
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_scaling"]["type"] == "longrope" and config["quantization"]["bits"] == int(
        ftype[1]
    )
    theirs, _ = mlx_lm_load(str(folder))
    ids = mx.array(reference[f"{ftype}__P1__ids"])[None]
    np.testing.assert_allclose(np.array(theirs(ids)), np.array(ours(ids)), rtol=0, atol=1e-4)


@pytest.mark.real_model
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_loading_the_default_model_peaks_below_1_3x_the_file(default_model):
    """Resident memory `load` adds at its peak (weights and tokenizer), in a fresh process.

    On the quantized path, as a Mac loads it (the Linux CPU policy's float32 copy is a
    deliberate trade of memory for speed, loading/cpu_weights.py). After a load of a tiny
    model of the same block types: the first load in a process also faults in the code pages
    of MLX and numpy it runs (3-7 MiB here, differing between two virtualenvs of the same
    packages), which no file causes.
    The cold figure is checked against 1.4x.
    """
    path = default_model[2].path
    assert load_peak_over_file_size(path, warm=True) <= 1.3
    assert load_peak_over_file_size(path, warm=False) <= 1.4


@pytest.mark.parametrize("ftype", FTYPES)
def test_the_float32_cpu_path_matches_llama_cpp_too(reference, ftype):
    model, _, info = load(
        str(shared_file(f"kquant/{reference[f'{ftype}__file']}")), cpu_dtype="float32"
    )
    assert info.weight_dtype == "float32"
    ids = reference[f"{ftype}__P1__ids"].tolist()
    logits = np.array(model(mx.array(ids)[None])[0])
    np.testing.assert_allclose(
        logits[-8:], reference[f"{ftype}__P1__last8_logits"], rtol=0, atol=LOGITS_ATOL
    )
