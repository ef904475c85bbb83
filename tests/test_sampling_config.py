import dataclasses
import math

import numpy as np
import pytest

from entropix_mlx.sampling import SamplerConfig, resolve_pause_token


def test_defaults_are_the_originals():
    cfg = SamplerConfig()
    expected = dict(
        temp=0.666,
        top_p=0.90,
        top_k=27,
        min_p=0.03,
        low_ent=0.1,
        low_vent=0.1,
        med_ent=3.0,
        high_ent=5.0,
        high_vent=5.0,
        n_adaptive_samples=5,
        pause_token="...",
        pause_token_id=None,
        pause_temp_offset=1.3,
        pause_temp_coef=0.2,
        branch_temp_offset=1.2,
        branch_temp_coef=0.3,
        branch_top_k_coef=0.5,
        resample_temp_offset=2.0,
        resample_temp_coef=0.5,
        resample_top_p_coef=0.2,
        ada_temp_logits=0.3,
        ada_temp_attn=0.2,
        ada_temp_agree=0.2,
        ada_top_p=0.1,
        ada_top_k_int=0.3,
        ada_top_k_agree=0.2,
        ada_min_p=0.5,
        branch_k=0,
        branch_horizon=6,
        max_branch_points=4,
        branch_score="margin",  # extension; 0 = off
        loop_attn=1.0,  # extension; 1 = off
        loop_window=32,
    )
    assert cfg.to_dict() == expected


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplerConfig().temp = 1.0


@pytest.mark.parametrize(
    "field, value",
    [
        ("temp", -0.1),
        ("temp", math.nan),
        ("temp", "hot"),
        ("temp", True),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.inf),
        ("top_k", 0),
        ("top_k", 2.5),
        ("top_k", 101),
        ("min_p", 1.0),
        ("min_p", -0.01),
        ("med_ent", -math.inf),
        ("ada_min_p", None),
        ("n_adaptive_samples", 0),
        ("pause_token", ""),
        ("pause_token_id", -1),
        ("loop_attn", 1.5),
        ("loop_attn", -0.1),
        ("loop_attn", "high"),
        ("loop_window", -1),
        ("loop_window", 2.5),
    ],
)
def test_rejects_bad_values_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as error:
        SamplerConfig(**{field: value})
    assert field in str(error.value)
    assert repr(value) in str(error.value)


def test_edges_and_numpy_numbers_are_accepted():
    cfg = SamplerConfig(temp=0, top_p=1.0, top_k=1, min_p=0.0, pause_token_id=0)
    assert cfg.temp == 0.0 and isinstance(cfg.temp, float)
    cfg = SamplerConfig(temp=np.float32(0.5), top_k=np.int64(40), pause_token_id=np.int32(7))
    assert (type(cfg.temp), type(cfg.top_k), type(cfg.pause_token_id)) == (float, int, int)
    assert SamplerConfig.parse_toml(cfg.to_toml()) == cfg


def test_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="bogus, temperature"):
        SamplerConfig.from_dict({"temp": 0.5, "temperature": 0.5, "bogus": 1})
    assert SamplerConfig.from_dict({"top_k": 40}).top_k == 40


def test_replace_is_a_validated_copy():
    cfg = SamplerConfig()
    hotter = cfg.replace(temp=1.0, pause_token_id=7)
    assert (hotter.temp, hotter.pause_token_id, cfg.temp) == (1.0, 7, 0.666)
    with pytest.raises(ValueError, match="top_p"):
        cfg.replace(top_p=2.0)
    with pytest.raises(ValueError, match="nope"):
        cfg.replace(nope=1)


def test_toml_round_trip_text_and_file(tmp_path):
    cfg = SamplerConfig(
        temp=0.5, top_k=40, min_p=1e-5, pause_token='"<|pause|>"\\', pause_token_id=3
    )
    text = cfg.to_toml()
    assert "temp = 0.5\n" in text
    assert SamplerConfig.parse_toml(text) == cfg
    path = tmp_path / "sampler.toml"
    path.write_text(text)
    assert SamplerConfig.from_toml(path) == cfg
    assert SamplerConfig.from_toml(str(path)) == cfg
    assert "pause_token_id" not in SamplerConfig().to_toml()
    assert SamplerConfig.parse_toml("temp = 1\n").temp == 1.0


def test_toml_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="topp"):
        SamplerConfig.parse_toml("topp = 0.5\n")
    with pytest.raises(ValueError, match="min_p"):
        SamplerConfig.parse_toml("min_p = 1.5\n")


class FakeTokenizer:
    pieces = {"...": [1131], "<think>": [7, 8, 9], "": []}

    def __init__(self):
        self.calls = 0

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        self.calls += 1
        return self.pieces[text]


def test_pause_token_by_text():
    assert resolve_pause_token(SamplerConfig(), FakeTokenizer()) == 1131


def test_pause_token_must_be_one_token():
    with pytest.raises(ValueError, match=r"'<think>' encodes to 3 tokens \[7, 8, 9\]"):
        resolve_pause_token(SamplerConfig(pause_token="<think>"), FakeTokenizer())


def test_pause_token_id_wins_over_text():
    tokenizer = FakeTokenizer()
    cfg = SamplerConfig(pause_token="<think>", pause_token_id=42)
    assert resolve_pause_token(cfg, tokenizer) == 42
    assert tokenizer.calls == 0


def test_thresholds_must_rise_and_the_shipped_ones_do():
    with pytest.raises(
        ValueError,
        match=r"^thresholds out of order: med_ent \(5\.0\) must be below high_ent \(5\.0\)$",
    ):
        SamplerConfig(med_ent=5.0)
    from entropix_mlx.presets import read_preset

    for cfg in (SamplerConfig(), SamplerConfig.from_dict(read_preset("smollm2-135m-instruct"))):
        assert cfg.low_ent < cfg.med_ent < cfg.high_ent and cfg.low_vent < cfg.high_vent
