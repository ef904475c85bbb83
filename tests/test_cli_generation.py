"""generate and chat from the command line (tiny model, through click's CliRunner)."""

import importlib
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.cli.generation import show_in_row_order
from entropix_mlx.sampling import SamplerConfig
from entropix_mlx.trace import read_trace

from .helpers import one_line_error


def run(*args, input=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def tiny_args(tiny_gguf, *extra):
    return [
        "generate",
        "-m",
        tiny_gguf,
        "--pause-token",
        ".",
        "--max-tokens",
        "12",
        "--seed",
        "1",
        *extra,
    ]


def test_generate_prompt_trace_and_verbose(tiny_gguf, tmp_path):
    trace = tmp_path / "trace.jsonl"
    result = run(*tiny_args(tiny_gguf, "-p", "hello", "--trace", trace, "--verbose"))
    assert result.exit_code == 0, result.output
    records = read_trace(trace)
    assert 1 <= len(records) <= 12
    assert "Generation:" in result.output and "Strategies:" in result.output
    assert "".join(r["text"] for r in records) in result.output


def test_generate_n_prints_the_completions_of_seeds_in_turn(tiny_gguf):
    result = run(*tiny_args(tiny_gguf, "-p", "hello", "-n", "3"))
    assert result.exit_code == 0, result.output
    singles = []
    for seed in (1, 2, 3):
        one = run(*tiny_args(tiny_gguf, "-p", "hello"), "--seed", seed)
        singles.append(one.output[: -len("\n")])
    expected = "\n".join(
        f"--- completion {i} of 3 ---\n{text}\n" for i, text in enumerate(singles, 1)
    )
    assert result.output == expected
    refused = run(*tiny_args(tiny_gguf, "-p", "hello", "-n", "2", "--trace", "t.jsonl"))
    assert refused.exit_code == 1
    assert refused.output == "Error: --trace records one completion; use it without -n\n"


def test_rows_print_in_turn_the_first_unfinished_one_as_it_is_made(capsys):
    def response(index, text, finished=False):
        return SimpleNamespace(
            index=index, text=text, strategy=None, finish_reason="stop" if finished else None
        )

    batch = [
        response(0, "a"),
        response(1, "x"),
        response(2, "p"),
        response(0, "b"),
        response(1, "y", finished=True),
        response(0, "c", finished=True),
        response(2, "q", finished=True),
    ]
    printed = []  # stdout after each response was handled

    def responses():
        for r in batch:
            yield r
            printed.append(capsys.readouterr().out)

    show_in_row_order(responses(), 3, color=False)
    assert printed == [
        "--- completion 1 of 3 ---\na",
        "",
        "",
        "b",
        "",
        "c\n\n--- completion 2 of 3 ---\nxy\n\n--- completion 3 of 3 ---\np",
        "q\n",
    ]


def test_color_colours_the_text_and_legend_even_when_piped(tiny_gguf):
    plain = run(*tiny_args(tiny_gguf, "-p", "hello"))
    colored = run(*tiny_args(tiny_gguf, "-p", "hello", "--color"))
    assert plain.exit_code == 0 and colored.exit_code == 0, colored.output
    assert "Strategies:" not in plain.output and plain.stdout == click.unstyle(plain.stdout)
    assert colored.stdout != click.unstyle(colored.stdout)  # CliRunner's stdout is no terminal
    assert click.unstyle(colored.stdout) == plain.stdout
    legend = "Strategies: argmax pause branch resample adaptive\n"
    assert colored.stderr != legend and click.unstyle(colored.stderr) == legend


def test_generate_reads_stdin_and_seeds_reproduce(tiny_gguf):
    first = run(*tiny_args(tiny_gguf, "-p", "-"), input="hello there")
    second = run(*tiny_args(tiny_gguf, "-p", "hello there"))
    assert first.exit_code == 0 and first.output == second.output


@pytest.mark.parametrize("sampler", ["standard", "greedy"])
def test_generate_other_samplers(tiny_gguf, sampler):
    result = run(
        *tiny_args(tiny_gguf, "-p", "hello", "--sampler", sampler, "--temp", "0.5", "--color")
    )
    assert result.exit_code == 0, result.output


def test_bad_input_gives_one_line_errors(tiny_gguf, tmp_path):
    one_line_error(
        run("generate", "-m", tmp_path / "missing.gguf", "-p", "hi"), "no such model file or folder"
    )
    one_line_error(run(*tiny_args(tiny_gguf, "-p", "   ")), "the prompt is empty")
    one_line_error(
        run(*tiny_args(tiny_gguf, "-p", "word " * 300)), "context window is 256; shorten the prompt"
    )
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("temp = -1\n")
    one_line_error(run(*tiny_args(tiny_gguf, "-p", "hi", "--config", bad_toml)), "temp")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("temperature_typo = 1.0\n")
    one_line_error(run(*tiny_args(tiny_gguf, "-p", "hi", "--config", unknown)), "temperature_typo")
    broken = tmp_path / "broken.toml"
    broken.write_text("temp = = 1\n")
    one_line_error(
        run(*tiny_args(tiny_gguf, "-p", "hi", "--config", broken)),
        f"invalid sampler settings (--config {broken} / flags): cannot read {broken}",
    )
    one_line_error(run("generate", "-m", tiny_gguf, "-p", "hi"), "pause_token")


def test_chat_keeps_the_history(tiny_gguf, monkeypatch):
    prompt_module = importlib.import_module("entropix_mlx.engine.prompt")
    seen = []
    original = prompt_module.chat_prompt_ids

    def recording_encode(tokenizer, prompt, *args, **kwargs):
        seen.append([dict(m) for m in prompt])
        return original(tokenizer, prompt, *args, **kwargs)

    monkeypatch.setattr(prompt_module, "chat_prompt_ids", recording_encode)
    result = run(
        "chat",
        "-m",
        tiny_gguf,
        "--pause-token",
        ".",
        "--max-tokens",
        "6",
        "--seed",
        "2",
        input="first question\nsecond question\n/reset\nthird\n/quit\n",
    )
    assert result.exit_code == 0, result.output
    assert [len(m) for m in seen] == [1, 3, 1]
    first_answer = seen[1][1]
    assert first_answer["role"] == "assistant" and first_answer["content"] in result.output
    assert seen[1][0]["content"] == "first question" and seen[1][2]["content"] == "second question"


def test_chat_help_and_unknown_commands_never_reach_the_model(tiny_gguf, monkeypatch):
    prompt_module = importlib.import_module("entropix_mlx.engine.prompt")
    seen = []
    original = prompt_module.chat_prompt_ids

    def recording_encode(tokenizer, prompt, *args, **kwargs):
        seen.append([m["content"] for m in prompt if m["role"] == "user"])
        return original(tokenizer, prompt, *args, **kwargs)

    monkeypatch.setattr(prompt_module, "chat_prompt_ids", recording_encode)
    result = run(
        "chat",
        *("-m", tiny_gguf, "--pause-token", ".", "--max-tokens", "4", "--seed", "2"),
        input="/help\n/frobnicate\n/usr/bin holds what?\n/quit\n",
    )
    assert result.exit_code == 0, result.output
    assert seen == [["/usr/bin holds what?"]]
    assert (
        "/help   list these commands\n/reset  clear the conversation's history\n" in result.stderr
    )
    assert "unknown command /frobnicate; /help lists the commands\n" in result.stderr


def test_chat_prefills_only_the_new_tokens_of_a_turn(tiny_gguf, monkeypatch):
    generate_module = importlib.import_module("entropix_mlx.generate")
    prompt_module = importlib.import_module("entropix_mlx.engine.prompt")
    fed, prompts = [], []
    original_stream, original_encode = (
        generate_module.stream_generate,
        prompt_module.chat_prompt_ids,
    )

    def recording_stream(model, tokenizer, prompt, **kwargs):
        fed.append(len(prompt))
        yield from original_stream(model, tokenizer, prompt, **kwargs)

    def recording_encode(tokenizer, prompt, *args, **kwargs):
        ids = original_encode(tokenizer, prompt, *args, **kwargs)
        prompts.append(ids)
        return ids

    monkeypatch.setattr(generate_module, "stream_generate", recording_stream)
    monkeypatch.setattr(prompt_module, "chat_prompt_ids", recording_encode)
    result = run(
        "chat",
        "-m",
        tiny_gguf,
        "--sampler",
        "standard",
        "--temp",
        "1.5",
        "--seed",
        "3",
        "--max-tokens",
        "6",
        input="first question\nsecond question\n/quit\n",
    )
    assert result.exit_code == 0, result.output
    assert fed[0] == len(prompts[0])
    assert fed[1] < len(prompts[1]) - len(
        prompts[0]
    )  # the first turn and the answer came from the cache
    model, tokenizer, _ = importlib.import_module("entropix_mlx.loading").load(tiny_gguf)
    config = SamplerConfig(temp=1.5)
    uncached = "".join(
        r.text
        for r in original_stream(
            model, tokenizer, prompts[1], sampler="standard", config=config, seed=3, max_tokens=6
        )
    )
    assert uncached.strip()
    assert (
        result.output.split(">> ")[2] == f"{uncached}\n"
    )  # the second answer, as an uncached run gives it
