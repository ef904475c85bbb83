"""Plots of traces: PNG size, layout rules, the CLI command and its errors, matplotlib missing."""

import json
import struct
import sys

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from entropix_mlx.cli import main
from entropix_mlx.generate import stream_generate
from entropix_mlx.loading import load
from entropix_mlx.plot import (
    FIX_IT,
    MAX_WIDTH,
    PlotError,
    label_step,
    pixel_size,
    plot_trace,
    strategy_mismatches,
    token_label,
)
from entropix_mlx.sampling import STRATEGIES, SamplerConfig, choose_strategy
from entropix_mlx.trace import FIELDS, TraceWriter

from .tiny import tiny_model, write_float_gguf


def png_size(path) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def synthetic_records(n: int, config: SamplerConfig = SamplerConfig(), seed: int = 0) -> list[dict]:
    """Trace records with spread-out metrics and the strategy `config` chooses for them."""
    rng = np.random.default_rng(seed)
    entropy = rng.gamma(1.2, 1.8, n).astype(np.float32)
    varentropy = (2.0 * entropy * rng.lognormal(0, 0.8, n)).astype(np.float32)
    chosen = choose_strategy(
        {"logits_entropy": mx.array(entropy), "logits_varentropy": mx.array(varentropy)}, config
    ).tolist()
    words = [" the", " sky", "\n", " is", "", " blue", "…", " 42"]
    records = []
    for i in range(n):
        record = dict.fromkeys(FIELDS)
        record.update(
            index=i,
            token=i,
            text=words[i % len(words)],
            logprob=-0.5,
            strategy=STRATEGIES[chosen[i]],
            logits_entropy=float(entropy[i]),
            logits_varentropy=float(varentropy[i]),
            attn_entropy=float(rng.uniform(1, 6)),
            attn_varentropy=0.2,
            agreement=0.1,
            interaction_strength=1.5,
            temperature=0.7,
            top_p=0.9,
            top_k=27,
            min_p=0.03,
        )
        records.append(record)
    records[-1]["finish_reason"] = "length"
    return records


def write_trace(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("n", [12, 300, 1000])
def test_png_has_the_expected_size(tmp_path, n):
    out = plot_trace(synthetic_records(n), tmp_path / "t.png")
    width, height = pixel_size(n)
    assert png_size(out) == (width, height)
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[:2] == (height, width)


def test_width_grows_with_tokens_up_to_a_cap_then_labels_thin_out():
    widths = [pixel_size(n)[0] for n in (10, 50, 300, 1000, 5000)]
    assert widths[0] == widths[1] < widths[2] < widths[3] == widths[4] == MAX_WIDTH * 100
    assert label_step(300) == 1 and label_step(1000) == 3 and label_step(5000) > label_step(1000)


def test_token_labels_show_whitespace_and_stops():
    assert token_label({"text": " a\nb", "token": 5}) == "·a↵b"
    assert token_label({"text": "", "token": 7, "finish_reason": "stop"}) == "⟨stop⟩"
    assert token_label({"text": "", "token": 7, "finish_reason": None}) == "#7"
    assert token_label({"text": "x" * 30, "token": 1}) == "x" * 11 + "…"
    assert token_label({"text": "a\x01", "token": 1}) == "a\\x01"


def test_mismatches_count_tokens_the_drawn_thresholds_would_choose_differently():
    records = synthetic_records(200)
    assert strategy_mismatches(records, SamplerConfig()) == 0
    assert strategy_mismatches(records, SamplerConfig(low_ent=2.9, low_vent=4.9)) > 0


def test_plot_trace_of_a_real_generation(tmp_path):
    model, tokenizer, _ = load(str(write_float_gguf(tmp_path / "tiny.gguf", tiny_model(seed=5))))
    config = SamplerConfig(pause_token=".")
    trace = tmp_path / "t.jsonl"
    with TraceWriter(trace) as writer:
        for response in stream_generate(
            model, tokenizer, "hello", config=config, max_tokens=20, seed=1
        ):
            writer.write(response)
    result = CliRunner().invoke(
        main, ["plot", str(trace), "-o", str(tmp_path / "t.png"), "-m", "tiny"]
    )
    assert result.exit_code == 0, result.output
    assert png_size(tmp_path / "t.png") == pixel_size(writer.count)
    assert "Note:" not in result.output  # the tiny run used the default thresholds, as drawn


def test_plot_command_draws_the_presets_thresholds_and_notes_a_mismatch(tmp_path):
    trace = write_trace(tmp_path / "t.jsonl", synthetic_records(40))
    out = tmp_path / "t.png"
    config = tmp_path / "defaults.toml"
    config.write_text(SamplerConfig().to_toml())
    result = CliRunner().invoke(main, ["plot", str(trace), "-o", str(out), "--config", str(config)])
    assert result.exit_code == 0, result.output
    width, height = pixel_size(40)
    assert (
        f"Wrote {out} ({width}x{height} px, 40 tokens)" in result.output
        and "Note:" not in result.output
    )
    result = CliRunner().invoke(
        main, ["plot", str(trace), "-o", str(out)]
    )  # the default model's preset
    assert (
        result.exit_code == 0
        and "tokens' strategies do not match the drawn thresholds" in result.output
    )


def test_plot_command_errors(tmp_path):
    def run(trace, out="t.png"):
        return CliRunner().invoke(main, ["plot", str(trace), "-o", str(tmp_path / out)])

    good = write_trace(tmp_path / "good.jsonl", synthetic_records(5))
    result = run(good, "t.svg")
    assert result.exit_code == 1 and "must be a .png file" in result.output
    result = run(good, "missing/t.png")
    assert result.exit_code == 1 and "its folder does not exist" in result.output
    plain = synthetic_records(5)
    for record in plain:
        record.update(strategy=None, logits_entropy=None)
    result = run(write_trace(tmp_path / "plain.jsonl", plain))
    assert (
        result.exit_code == 1
        and "no sampler metrics" in result.output
        and "--sampler entropix" in result.output
    )
    result = run(write_trace(tmp_path / "empty.jsonl", []))
    assert result.exit_code == 1 and "the trace has no tokens" in result.output
    (tmp_path / "other.jsonl").write_text('{"a": 1}\n')
    result = run(tmp_path / "other.jsonl")
    assert result.exit_code == 1 and "is not a trace record" in result.output


def test_without_matplotlib_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotError, match=r"pip install 'entropix-mlx\[plot\]'"):
        plot_trace(synthetic_records(5), tmp_path / "t.png")
    trace = write_trace(tmp_path / "t.jsonl", synthetic_records(5))
    result = CliRunner().invoke(main, ["plot", str(trace), "-o", str(tmp_path / "t.png")])
    assert result.exit_code == 1 and FIX_IT in result.output
    assert not (tmp_path / "t.png").exists()
