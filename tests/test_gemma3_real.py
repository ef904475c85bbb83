"""The real Gemma 3 270M (catalog `gemma-3-270m`, llama.cpp's Q4_K_M) against llama.cpp's own
runs of that file (../shared/testdata/gemma3): its F32 twin (the same weights dequantized,
float32 arithmetic) and the Q4_K_M file itself (8-bit activations, within ~1.5 of the twin)."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from entropix_mlx.errors import ModelLoadError
from entropix_mlx.loading import catalog, load

from .conftest import testdata_path as shared_file
from .helpers import greedy, load_peak_over_file_size

pytestmark = pytest.mark.real_model
LOGITS_ATOL = 0.05  # the bound; measured 0.019 (float32 path), 0.034 (quantized)


@pytest.fixture(scope="module")
def gemma_path():
    try:
        return catalog.fetch("gemma-3-270m")
    except ModelLoadError as e:
        pytest.skip(f"gemma-3-270m cannot be fetched here: {e}")


@pytest.fixture(scope="module")
def references():
    return {
        "f32": np.load(shared_file("gemma3/llamacpp-dequantized-f32.npz")),
        "q4": np.load(shared_file("gemma3/llamacpp-q4_k_m.npz")),
    }


@pytest.fixture(scope="module", params=["quantized", "float32"])
def loaded(request, gemma_path):
    return load("gemma-3-270m", cpu_dtype=request.param)


@pytest.mark.parametrize("prompt", [0, 1, 2])
def test_matches_llama_cpp(loaded, references, prompt):
    model, tokenizer, info = loaded
    f32, q4 = references["f32"], references["q4"]
    ids = f32[f"tokens_{prompt}"].tolist()
    text = json.loads(str(f32["meta"]))["prompts"][prompt]
    assert tokenizer.encode(text) == ids  # SentencePiece from the GGUF, BOS first
    logits = np.array(model(mx.array(ids)[None])[0, -4:].astype(mx.float32))
    np.testing.assert_allclose(logits, f32[f"logits_{prompt}"], rtol=0, atol=LOGITS_ATOL)
    assert (logits.argmax(-1) == q4[f"logits_{prompt}"].argmax(-1)).all()
    if info.weight_dtype == "float32" or prompt == 0:  # the CPU's quantized head is slow
        assert greedy(model, ids, 16) == f32[f"greedy_{prompt}"].tolist()


TOKENIZER_TEXTS = [
    "<start_of_turn>user\nWrite a haiku.<end_of_turn>\n<start_of_turn>model\n",
    "  two  spaces,\ttabs\t\tand\n\n\nblank lines   ",
    "naïve café 東京 🙂 \U0001f9ff \u0378 <unused5> <mask> [multimodal]",
    "def f(x):\n    return {'a': x ** 2}  # ünïcödé\n",
    "<b>bold</b> 12345 3.14159 e^(iπ)+1=0",
]


def test_compact_tokenizer_matches_its_tokenizers_twin(gemma_path):
    """The run-time tokenizer (`gguf_spm`) against the `tokenizers` BPE `convert` writes, built
    from the same metadata by a different algorithm (merges derived from the scores)."""
    from entropix_mlx.loading.gguf_file import GGUFFile
    from entropix_mlx.loading.gguf_tokenizer import tokenizer_from_gguf_metadata

    metadata = GGUFFile(gemma_path).metadata
    compact = tokenizer_from_gguf_metadata(metadata)
    twin = tokenizer_from_gguf_metadata(metadata, fast=True)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for text in TOKENIZER_TEXTS + [readme]:
        ids = compact.encode(text)
        assert ids == twin.encode(text), text[:40]
        for skip in (False, True):
            assert compact.decode(ids, skip_special_tokens=skip) == twin.decode(
                ids, skip_special_tokens=skip
            ), text[:40]


def test_catalog_entry_runs_as_a_base_model(loaded):
    model, tokenizer, info = loaded
    assert info.args.model_type == "gemma3_text" and info.args.vocab_size == 262144
    assert info.args.layer_types[-1] == "full_attention"  # the 270M ends on a global layer
    assert tokenizer.chat_template is None and tokenizer.eos_token_ids == {1}
    assert info.sampler_preset == catalog.CATALOG["gemma-3-270m"].sampler_preset


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_load_peak(gemma_path):
    """Resident memory the load adds at its peak, over the file's size (quantized path): the
    issue's bound, 1.3x. The weights alone take 1.104x (266.5 MiB: exact MLX layers cost more
    bits than Q8_0, Q4_K and Q6_K); the compact SentencePiece tokenizer (`gguf_spm`) about
    0.08x. Measured: 1.20x.
    """
    assert load_peak_over_file_size(gemma_path, warm=True) <= 1.3
