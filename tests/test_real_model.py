"""The embedded default model against Hugging Face transformers' reference and against mlx-lm."""

import mlx.core as mx
import numpy as np
import pytest

pytestmark = pytest.mark.real_model

LOGITS_ATOL = 0.1  # transformers ran float32 on the dequantized GGUF; we may run 4-bit kernels


def test_matches_transformers_reference(default_model, smollm2_reference):
    """Logits at every position; the greedy tokens are checked through generation (test_generate)."""
    model, _, _ = default_model
    ref = smollm2_reference
    for i in range(int(ref["n"])):
        logits = model(mx.array(ref[f"ids_{i}"])[None])[0]
        logits = np.array(logits.astype(mx.float32))
        np.testing.assert_allclose(
            logits[-1], ref[f"last_logits_{i}"], atol=LOGITS_ATOL, err_msg=f"prompt {i}"
        )
        np.testing.assert_array_equal(
            logits.argmax(-1), ref[f"top5_ids_{i}"][:, 0], err_msg=f"prompt {i}"
        )


def test_matches_mlx_lm_on_the_converted_weights(
    default_model, smollm2_reference, tmp_path_factory
):
    from mlx_lm import load as mlx_lm_load

    from entropix_mlx.loading import DEFAULT_MODEL
    from entropix_mlx.loading.convert import convert
    from entropix_mlx.loading.cpu_weights import dequantize_model

    model, _, info = default_model
    folder = convert(DEFAULT_MODEL, tmp_path_factory.mktemp("converted") / "smollm2-mlx")
    theirs, their_tokenizer = mlx_lm_load(str(folder))
    assert theirs.model.layers[0].self_attn.q_proj.bits == 4
    assert theirs.model.embed_tokens.bits == 8
    if info.weight_dtype == "float32":  # the CPU policy dequantized ours: the same for mlx-lm
        dequantize_model(theirs)
    plain = next(
        i for i in range(int(smollm2_reference["n"])) if not smollm2_reference[f"chat_{i}"]
    )
    ids = smollm2_reference[f"ids_{plain}"].tolist()
    assert their_tokenizer.encode(str(smollm2_reference[f"text_{plain}"])) == ids
    ours = model(mx.array(ids)[None])
    np.testing.assert_allclose(
        np.array(ours.astype(mx.float32)),
        np.array(theirs(mx.array(ids)[None]).astype(mx.float32)),
        atol=1e-2,
    )
