"""Issue 27: model files that would hang the loader, fool it into garbage text, or end in a
traceback. Each is refused in one exact line (exit code 1) and left as it was on disk."""

import json
import math
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from entropix_mlx.engine import chat_template

from .helpers import edit_config, fails_with, generate_args, run, tree
from .tiny import CHAT_TEMPLATE, tiny_model, write_quantized_gguf


def refused(model: Path, message: str, *extra):
    """`generate` on `model` fails with exactly `message`; the model's folder is as it was."""
    folder = model if model.is_dir() else model.parent
    before = tree(folder)
    fails_with(run(*generate_args(model), "-p", "hi", *extra), message)
    assert tree(folder) == before


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11)


def gguf_with(tmp_path, model, metadata) -> Path:
    return write_quantized_gguf(tmp_path / "bad.gguf", model, metadata=metadata)


# --- MLX / Hugging Face folders ----------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_hidden_layers": 3}, "num_hidden_layers in {} is 3 but the weights hold 2 layers"),
        ({"rms_norm_eps": math.nan}, "rms_norm_eps in {} must be finite, got nan"),
        ({"rms_norm_eps": math.inf}, "rms_norm_eps in {} must be finite, got inf"),
        ({"rope_theta": 0}, "rope_theta in {} must be positive, got 0"),
        ({"rope_theta": -10000.0}, "rope_theta in {} must be positive, got -10000.0"),
        ({"hidden_size": 2**40}, "hidden_size in {} must be below 2**31, got 1099511627776"),
        (
            {"max_position_embeddings": 10**400},
            "max_position_embeddings in {} must be below 2**31, got "
            "10000000000000000000...(401 characters)",
        ),
        (
            {"rope_scaling": "linear"},
            "rope_scaling in {} must be an object with a positive finite factor, got 'linear'",
        ),
        (
            {"rope_scaling": {"type": "linear", "factor": 0}},
            "rope_scaling in {} must be an object with a positive finite factor, got "
            "{{'type': 'linear', 'factor': 0}}",
        ),
        (
            {"quantization": "4-bit"},
            "quantization in {} must be an object with whole-number bits and group_size, got "
            "'4-bit'",
        ),
        (
            {"quantization": {"bits": 4, "group_size": 64}},
            "quantization in {} says the weights are quantized, but the weight files hold no "
            "quantized layers",
        ),
    ],
)
def test_config_json_that_would_hang_or_fool_the_loader(tiny_folder, tmp_path, change, message):
    folder = edit_config(shutil.copytree(tiny_folder, tmp_path / "m"), lambda c: {**c, **change})
    refused(folder, message.format(folder / "config.json") + "; fix or re-download config.json")


def test_a_rope_type_mlx_lm_cannot_build(tiny_folder, tmp_path):
    scaling = {"rope_type": "warp", "factor": 8.0}
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    refused(
        edit_config(folder, lambda c: {**c, "rope_scaling": scaling}),
        f"the model cannot be built from {folder} (Unsupported RoPE type warp); fix or "
        "re-download config.json and the weights",
    )


def test_a_million_layers_are_refused_before_any_layer_is_built(tiny_folder, tmp_path, monkeypatch):
    import entropix_mlx.loading.hf as hf

    monkeypatch.setattr(hf, "load_model", lambda *a, **k: pytest.fail("a model was built"))
    folder = edit_config(
        shutil.copytree(tiny_folder, tmp_path / "m"), lambda c: {**c, "num_hidden_layers": 10**6}
    )
    refused(
        folder,
        f"num_hidden_layers in {folder / 'config.json'} is 1000000 but the weights hold 2 "
        "layers; fix or re-download config.json",
    )


def test_nan_weights_in_a_folder_are_refused_naming_the_tensor(tiny_folder, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    weights = mx.load(str(folder / "model.safetensors"))
    down = np.array(weights["model.layers.1.mlp.down_proj.weight"])
    down[0, 0] = np.nan
    weights["model.layers.1.mlp.down_proj.weight"] = mx.array(down)
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    refused(
        folder,
        "m: tensor model.layers.1.mlp.down_proj.weight holds NaN or infinite values; the file is "
        "damaged, re-download it",
    )


def test_a_chat_template_that_is_not_text(tiny_folder, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": 5}))
    refused(
        folder,
        f"the chat template in {folder}'s tokenizer files is 5, not text; fix or re-download them",
    )


# --- GGUF metadata ------------------------------------------------------------------------------


def f32(value):
    return mx.array(value, dtype=mx.float32)


@pytest.mark.parametrize(
    "metadata, message",
    [
        (
            {"llama.rope.freq_base": f32(0.0)},
            "llama.rope.freq_base is 0.0, not a positive finite number; the file is damaged",
        ),
        (
            {"llama.rope.freq_base": f32(-10000.0)},
            "llama.rope.freq_base is -10000.0, not a positive finite number; the file is damaged",
        ),
        (
            {"llama.rope.freq_base": "ten thousand"},
            "llama.rope.freq_base is 'ten thousand', not a positive finite number; the file is "
            "damaged",
        ),
        (
            {"llama.attention.layer_norm_rms_epsilon": f32(math.nan)},
            "llama.attention.layer_norm_rms_epsilon is nan, not a positive finite number; the "
            "file is damaged",
        ),
        (
            {"llama.context_length": "long"},
            "llama.context_length is 'long', not a positive integer; the file is damaged",
        ),
        (
            {"llama.context_length": 0},
            "llama.context_length is 0, not a positive integer; the file is damaged",
        ),
        (
            {"llama.rope.scaling.type": "linear"},
            "the GGUF metadata lacks llama.rope.scaling.factor; the file is incomplete",
        ),
        (
            {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": "big"},
            "llama.rope.scaling.factor is 'big', not a positive finite number; the file is damaged",
        ),
    ],
)
def test_model_metadata_that_is_wrongly_typed_or_not_positive(tmp_path, model, metadata, message):
    refused(gguf_with(tmp_path, model, metadata), f"bad.gguf: {message}")


@pytest.mark.parametrize(
    "metadata, message",
    [
        (
            {"tokenizer.ggml.tokens": list(range(260))},
            "tokenizer.ggml.tokens[0] is 0, not a string",
        ),
        ({"tokenizer.ggml.tokens": "abc"}, "tokenizer.ggml.tokens is 'abc', not a list"),
        ({"tokenizer.ggml.merges": [1, 2]}, "tokenizer.ggml.merges[0] is 1, not a string"),
        (
            {"tokenizer.ggml.token_type": [1, 1]},
            "tokenizer.ggml.token_type has 2 entries for 260 tokens",
        ),
        (
            {"tokenizer.ggml.token_type": ["normal"] * 260},
            "tokenizer.ggml.token_type[0] is 'normal', not a whole number",
        ),
        (
            {"tokenizer.ggml.bos_token_id": "one"},
            "tokenizer.ggml.bos_token_id is 'one', not a whole number",
        ),
        (
            {"tokenizer.ggml.eos_token_id": [2, 3]},
            "tokenizer.ggml.eos_token_id is [2, 3], not a whole number",
        ),
        (
            {"tokenizer.ggml.add_bos_token": "yes"},
            "tokenizer.ggml.add_bos_token is 'yes', not true or false",
        ),
        ({"tokenizer.ggml.pre": 5}, "tokenizer.ggml.pre is 5, not a string"),
        (
            {"tokenizer.chat_template": ["a", "b"]},
            "tokenizer.chat_template is ['a', 'b'], not a string",
        ),
        (
            {
                "tokenizer.ggml.model": "llama",
                "tokenizer.ggml.merges": None,
                "tokenizer.ggml.scores": [1.0],
            },
            "tokenizer.ggml.scores has 1 entries for 260 tokens",
        ),
    ],
)
def test_tokenizer_metadata_that_is_wrongly_typed(tmp_path, model, metadata, message):
    refused(gguf_with(tmp_path, model, metadata), f"GGUF metadata {message}; the file is damaged")


def test_merges_of_tokens_outside_the_vocabulary(tmp_path, model):
    refused(
        gguf_with(tmp_path, model, {"tokenizer.ggml.merges": ["Ġ zz"]}),
        "the GGUF vocabulary cannot be built (Error while initializing BPE: Token `zz` out of "
        "vocabulary); the file is damaged",
    )


# --- Chat templates: bounded in time, their errors one line --------------------------------------

TEMPLATE_FIX = (
    "change the messages to what the template accepts, fix the template, or send the prompt as "
    "plain text without it"
)


def test_a_template_that_loops_without_end_is_stopped(tmp_path, model, monkeypatch):
    monkeypatch.setattr(chat_template, "TEMPLATE_SECONDS", 0.3)
    # About 3 s of template code without the bound: a broken bound fails, it never hangs.
    loops = "{% for a in range(100000) %}{% for b in range(300) %}{% endfor %}{% endfor %}"
    gguf = gguf_with(tmp_path, model, {"tokenizer.chat_template": loops + CHAT_TEMPLATE})
    refused(
        gguf,
        "the model's chat template ran for over 0.3 s and was stopped (it loops without end); "
        "fix the template, or send the prompt as plain text without it",
    )
    plain = run(*generate_args(gguf), "-p", "hi", "--no-chat-template")
    assert plain.exit_code == 0, plain.output


@pytest.mark.parametrize(
    "template, reason",
    [
        ("{{ raise_exception('System role not supported') }}", "System role not supported"),
        ("{% for m in messages %}{{ m }", "unexpected '}'"),
        ("{{ nothing.here }}", "'nothing' is undefined"),
        (
            "{{ messages[0]['content'] + 1 }}",
            'TypeError: can only concatenate str (not "int") to str',
        ),
    ],
)
def test_a_template_that_fails(tmp_path, model, template, reason):
    gguf = gguf_with(tmp_path, model, {"tokenizer.chat_template": template})
    refused(gguf, f"the model's chat template failed ({reason}); {TEMPLATE_FIX}")


def test_in_chat_a_template_error_drops_the_message_and_the_chat_goes_on(tmp_path, model):
    template = "{{ raise_exception('Conversation roles must alternate') }}"
    gguf = gguf_with(tmp_path, model, {"tokenizer.chat_template": template})
    result = run("chat", "-m", gguf, "--pause-token", ".", input=b"hi\nagain\n/quit\n")
    assert result.exit_code == 0, result.output
    note = (
        f"the model's chat template failed (Conversation roles must alternate); {TEMPLATE_FIX} "
        "(the message was not kept; /reset clears the history)"
    )
    assert result.output.count(note) == 2 and "Traceback" not in result.output
