"""Calibration: the threshold rule on synthetic metrics, end to end on a tiny model, and the shipped preset."""

import tomllib

import numpy as np
import pytest
from click.testing import CliRunner

from entropix_mlx.calibrate import (
    DEFAULT_PROMPTS,
    TARGET_MIX,
    THRESHOLDS,
    MetricSample,
    fit_thresholds,
    parse_target,
    read_prompts,
    split_prompts,
    strategy_mix,
)
from entropix_mlx.cli import main
from entropix_mlx.cli.options import preset_config
from entropix_mlx.loading import CATALOG, DEFAULT_MODEL
from entropix_mlx.presets import read_preset
from entropix_mlx.sampling import STRATEGIES, SamplerConfig, choose_strategy
from entropix_mlx.trace import read_trace

HELD_OUT_TOLERANCE = 0.10  # the acceptance bound, in shares


def language_model_like(n: int, seed: int) -> MetricSample:
    """Entropy and varentropy shaped like a small model's: correlated, long-tailed, a few flat rows."""
    rng = np.random.default_rng(seed)
    entropy = rng.gamma(1.5, 1.5, n)
    varentropy = 2.5 * entropy * rng.lognormal(0.0, 0.6, n)
    return MetricSample(entropy, varentropy)


def anti_correlated(n: int, seed: int) -> MetricSample:
    """Near-uniform distributions, as a random model gives: the flattest rows have the lowest varentropy."""
    rng = np.random.default_rng(seed)
    entropy = 6.2 + 0.2 * rng.standard_normal(n)
    varentropy = 8.0 - 3.0 * (entropy - 6.2) + 0.5 * rng.standard_normal(n)
    return MetricSample(entropy, varentropy)


def config_of(thresholds: dict) -> SamplerConfig:
    return SamplerConfig(**thresholds)


def assert_ordered(t: dict):
    assert t["low_ent"] < t["med_ent"] < t["high_ent"], t
    assert t["low_vent"] < t["high_vent"], t


def assert_mix_near(mix: dict, target: dict, tolerance: float):
    assert set(mix) == set(STRATEGIES)
    assert sum(mix.values()) == pytest.approx(1.0)
    for name in STRATEGIES:
        assert abs(mix[name] - target[name]) <= tolerance, (name, mix, target)


def test_rule_hits_the_target_on_its_own_tokens_and_generalises():
    fit, held_out = language_model_like(2000, seed=1), language_model_like(2000, seed=2)
    thresholds = fit_thresholds(fit)
    assert set(thresholds) == set(THRESHOLDS)
    assert_ordered(thresholds)
    assert_mix_near(strategy_mix(fit, config_of(thresholds)), TARGET_MIX, 0.001)
    assert_mix_near(strategy_mix(held_out, config_of(thresholds)), TARGET_MIX, HELD_OUT_TOLERANCE)


def test_rule_keeps_the_order_when_the_flattest_rows_have_the_least_varentropy():
    """Resample (H > high_ent >= med_ent) then has no tokens left; they go to branch instead."""
    fit, held_out = anti_correlated(2000, seed=1), anti_correlated(2000, seed=2)
    thresholds = fit_thresholds(fit)
    assert_ordered(thresholds)
    mix = strategy_mix(fit, config_of(thresholds))
    for name in ("argmax", "pause", "adaptive"):
        assert mix[name] == pytest.approx(TARGET_MIX[name], abs=0.001)
    assert mix["branch"] + mix["resample"] == pytest.approx(
        TARGET_MIX["branch"] + TARGET_MIX["resample"], abs=0.001
    )
    assert_mix_near(strategy_mix(held_out, config_of(thresholds)), TARGET_MIX, HELD_OUT_TOLERANCE)


def test_rule_follows_other_targets():
    sample = language_model_like(3000, seed=3)
    target = {"argmax": 0.25, "pause": 0.0, "branch": 0.2, "resample": 0.1, "adaptive": 0.45}
    mix = strategy_mix(sample, config_of(fit_thresholds(sample, target)))
    assert_mix_near(mix, target, 0.001)
    assert mix["pause"] == 0.0


def test_rule_keeps_the_order_on_degenerate_samples():
    for sample in (
        MetricSample(np.full(50, 2.0), np.full(50, 3.0)),
        MetricSample(np.zeros(50), np.zeros(50)),
    ):
        thresholds = fit_thresholds(sample)
        assert_ordered(thresholds)
        config_of(thresholds)  # valid settings


def test_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 10 tokens"):
        fit_thresholds(MetricSample(np.ones(3), np.ones(3)))
    with pytest.raises(ValueError, match="add up to 1"):
        fit_thresholds(language_model_like(100, 0), {**TARGET_MIX, "argmax": 0.9})
    with pytest.raises(ValueError, match="a share for each of argmax"):
        fit_thresholds(language_model_like(100, 0), {"argmax": 1.0})


def test_mix_is_the_samplers_own_choice():
    sample = language_model_like(200, seed=4)
    cfg = config_of(fit_thresholds(sample))
    import mlx.core as mx

    chosen = choose_strategy(
        {
            "logits_entropy": mx.array(sample.entropy, dtype=mx.float32),
            "logits_varentropy": mx.array(sample.varentropy, dtype=mx.float32),
        },
        cfg,
    ).tolist()
    mix = strategy_mix(sample, cfg)
    assert mix == {name: chosen.count(i) / len(chosen) for i, name in enumerate(STRATEGIES)}


def test_parse_target():
    target = parse_target("argmax=30, branch=15")
    assert (
        target["argmax"] == 0.30
        and target["branch"] == 0.15
        and target["pause"] == TARGET_MIX["pause"]
    )
    assert target["adaptive"] == pytest.approx(
        1 - 0.30 - 0.15 - TARGET_MIX["pause"] - TARGET_MIX["resample"]
    )
    with pytest.raises(ValueError, match="unknown strategy 'greedy'"):
        parse_target("greedy=10")
    with pytest.raises(ValueError, match="must be a percentage like argmax=40"):
        parse_target("argmax=lots")
    with pytest.raises(ValueError, match="add up to 1"):
        parse_target("argmax=90,branch=20")


def test_prompt_sets(tmp_path):
    assert len(DEFAULT_PROMPTS) == 20 and len(set(DEFAULT_PROMPTS)) == 20
    fit, held_out = split_prompts(DEFAULT_PROMPTS)
    assert len(fit) == len(held_out) == 10 and not set(fit) & set(held_out)
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\nfirst\n\n  second  \n")
    assert read_prompts(path) == ["first", "second"]
    path.write_text("only one\n")
    with pytest.raises(ValueError, match="holds 1 prompt.*give at least 2, one per line"):
        read_prompts(path)


# ---------------------------------------------------------------- end to end on a tiny model


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(f"prompt {i} about {w}" for i, w in enumerate("abcdefghijkl")) + "\n")
    return path


def test_calibrate_command_end_to_end(tiny_gguf, prompt_file, tmp_path):
    out = tmp_path / "tiny.toml"
    args = [
        "calibrate",
        "-m",
        str(tiny_gguf),
        "--prompts",
        str(prompt_file),
        "--max-tokens",
        "24",
        "--pause-token",
        ".",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith(f"# Entropix sampler preset for {tiny_gguf}")
    assert "# Rule: solved in order" in text and "# Held-out mix (6 prompts" in text
    settings = tomllib.loads(text)
    assert set(settings) == {*THRESHOLDS, "pause_token"} and settings["pause_token"] == "."
    assert_ordered(settings)
    config = SamplerConfig.from_toml(out)
    assert SamplerConfig.parse_toml(config.to_toml()) == config
    assert {name: getattr(config, name) for name in THRESHOLDS} == {
        k: settings[k] for k in THRESHOLDS
    }

    rows = {
        line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.split()
    }
    for name in STRATEGIES:
        target, fit, _held_out, _off = rows[name]
        assert target == f"{TARGET_MIX[name]:.1%}"
        assert abs(float(fit.rstrip("%")) / 100 - TARGET_MIX[name]) <= HELD_OUT_TOLERANCE
    assert f"Wrote {out}" in result.output


def test_calibrate_command_errors(tiny_gguf, prompt_file, tmp_path):
    run = lambda *args: CliRunner().invoke(main, ["calibrate", "-m", str(tiny_gguf), *args])  # noqa: E731
    result = run("--prompts", str(prompt_file), "-o", str(tmp_path / "p.toml"))
    assert result.exit_code == 1
    assert (
        "pause_token '...' encodes to 3 tokens" in result.output and "single token" in result.output
    )
    result = run("--target", "argmax=90,branch=20", "-o", str(tmp_path / "p.toml"))
    assert result.exit_code == 1 and "add up to 1" in result.output
    result = run("-o", str(tmp_path / "missing" / "p.toml"))
    assert result.exit_code == 1 and "its folder does not exist" in result.output


# ---------------------------------------------------------------- the shipped preset


def test_default_model_ships_a_calibrated_preset():
    preset = CATALOG[DEFAULT_MODEL].sampler_preset
    assert preset == read_preset(DEFAULT_MODEL)
    assert set(THRESHOLDS) <= set(preset) and preset["pause_token"] == "..."
    assert_ordered(preset)
    defaults = SamplerConfig()
    assert any(preset[name] != getattr(defaults, name) for name in THRESHOLDS)


def test_cli_config_is_preset_then_config_file_then_flags(tmp_path):
    preset = CATALOG[DEFAULT_MODEL].sampler_preset
    built = preset_config(DEFAULT_MODEL, None)
    assert {name: getattr(built, name) for name in THRESHOLDS} == {
        name: preset[name] for name in THRESHOLDS
    }
    config_file = tmp_path / "c.toml"
    config_file.write_text("low_ent = 0.1\ntemp = 0.5\n")
    built = preset_config(DEFAULT_MODEL, str(config_file), {"temp": 0.9})
    assert built.low_ent == 0.1 and built.high_vent == preset["high_vent"] and built.temp == 0.9
    assert preset_config("not-in-the-catalog.gguf", None) == SamplerConfig()


@pytest.mark.real_model
def test_generate_uses_the_preset_unless_config_overrides(default_model, tmp_path):
    preset = SamplerConfig.from_dict(default_model[2].sampler_preset)
    defaults_file = tmp_path / "defaults.toml"
    defaults_file.write_text(SamplerConfig().to_toml())

    def strategies(*extra):
        trace = tmp_path / "t.jsonl"
        args = [
            "generate",
            "-p",
            "Name three colours.",
            "--max-tokens",
            "6",
            "--seed",
            "1",
            "--trace",
            str(trace),
        ]
        result = CliRunner().invoke(main, args + list(extra))
        assert result.exit_code == 0, result.output
        return read_trace(trace)

    def agree(records, cfg):
        import mlx.core as mx

        metrics = {
            k: mx.array([r[k] for r in records], dtype=mx.float32)
            for k in ("logits_entropy", "logits_varentropy")
        }
        return [STRATEGIES[i] for i in choose_strategy(metrics, cfg).tolist()] == [
            r["strategy"] for r in records
        ]

    with_preset = strategies()
    assert agree(with_preset, preset) and not agree(with_preset, SamplerConfig())
    with_defaults = strategies("--config", str(defaults_file))
    assert agree(with_defaults, SamplerConfig()) and not agree(with_defaults, preset)
