"""SamplerConfig: the Entropix sampler's settings, frozen and validated."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import ConfigError, EntropixError
from ..files import read_limited

# One sorted candidate set of this many tokens serves every strategy, so no
# top_k (configured or derived) can exceed it.
MAX_CANDIDATES = 100
# Adaptive sampling draws this many candidates per token at most: each draw costs a pass over
# the candidate set, and a request must not be able to hold the worker for long.
MAX_ADAPTIVE_SAMPLES = 64
MAX_BRANCH_K = 8  # look-ahead forks at most this many candidates (each is a batch row)
BRANCH_SCORES = ("margin", "logprob")
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32; below it, zero or subnormal
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class SamplerConfig:
    """Entropix sampler settings; defaults are the original Entropix SamplerConfig."""

    # Base sampling parameters.
    temp: float = 0.666
    top_p: float = 0.90
    top_k: int = 27
    min_p: float = 0.03

    # Strategy thresholds on logits entropy (bits) and varentropy (bits^2).
    low_ent: float = 0.1
    low_vent: float = 0.1
    med_ent: float = 3.0
    high_ent: float = 5.0
    high_vent: float = 5.0

    # pause: temperature min(1.5, temp * (offset + coef * attn_entropy)).
    pause_temp_offset: float = 1.3
    pause_temp_coef: float = 0.2
    # branch: temperature min(1.5, temp * (offset + coef * interaction_strength)),
    # top_k max(5, floor(top_k * (1 + top_k_coef * (1 - agreement)))).
    branch_temp_offset: float = 1.2
    branch_temp_coef: float = 0.3
    branch_top_k_coef: float = 0.5
    # resample: temperature max(2.0, temp * (offset + coef * attn_varentropy)),
    # top_p max(0.5, top_p - top_p_coef * attn_entropy).
    resample_temp_offset: float = 2.0
    resample_temp_coef: float = 0.5
    resample_top_p_coef: float = 0.2

    # adaptive: coefficients of the original's ada_* settings.
    n_adaptive_samples: int = 5
    ada_temp_logits: float = 0.3
    ada_temp_attn: float = 0.2
    ada_temp_agree: float = 0.2
    ada_top_p: float = 0.1
    ada_top_k_int: float = 0.3
    ada_top_k_agree: float = 0.2
    ada_min_p: float = 0.5

    # Loop guard (beyond the original; loop_attn 1, the default, turns it off and reproduces it):
    # a token in the argmax corner whose final-layer attention reaches back, the heads' mean
    # attention on positions more than loop_window tokens back above loop_attn, is sampled as
    # adaptive instead. Copying its own earlier text is how a loop shows (docs/sampler.md).
    loop_attn: float = 1.0
    loop_window: int = 32

    # The pause token: text resolved through the tokenizer, or an id (wins if set).
    pause_token: str = "..."
    pause_token_id: Optional[int] = None

    # Look-ahead branching (beyond the original; branch_k 0 keeps the one hotter sample).
    # Where the branch strategy is chosen, fork the top branch_k candidates, roll each out
    # for up to branch_horizon tokens or to a boundary, score it by branch_score (see
    # entropix_mlx/engine/lookahead.py) and keep the winner; at most max_branch_points forks.
    branch_k: int = 0
    branch_horizon: int = 6
    max_branch_points: int = 4
    branch_score: str = "margin"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _TEXT_FIELDS:
                _check_text(f.name, value)
            elif f.name in _INT_FIELDS:
                _check_int(f.name, value, optional=f.name == "pause_token_id")
                object.__setattr__(self, f.name, None if value is None else int(value))
            else:
                _check_number(f.name, value)
                object.__setattr__(self, f.name, float(value))
        _check_range("temp", self.temp, 0.0, math.inf, "must be >= 0")
        _check_range("top_p", self.top_p, 0.0, 1.0, "must be in (0, 1]", low_open=True)
        _check_range("top_k", self.top_k, 1, MAX_CANDIDATES, f"must be in [1, {MAX_CANDIDATES}]")
        _check_range("min_p", self.min_p, 0.0, 1.0, "must be in [0, 1)", high_open=True)
        _check_range(
            "n_adaptive_samples",
            self.n_adaptive_samples,
            1,
            MAX_ADAPTIVE_SAMPLES,
            f"must be in [1, {MAX_ADAPTIVE_SAMPLES}]",
        )
        _check_range("loop_attn", self.loop_attn, 0.0, 1.0, "must be in [0, 1] (1: off)")
        _check_range("loop_window", self.loop_window, 0, math.inf, "must be >= 0")
        if self.pause_token_id is not None:
            _check_range("pause_token_id", self.pause_token_id, 0, math.inf, "must be >= 0")
        for lower, higher in _ORDERED_THRESHOLDS:
            if not getattr(self, lower) < getattr(self, higher):
                raise ConfigError(
                    f"thresholds out of order: {lower} ({getattr(self, lower)!r}) must be below "
                    f"{higher} ({getattr(self, higher)!r})"
                )
        if self.branch_k == 1 or not 0 <= self.branch_k <= MAX_BRANCH_K:
            raise ConfigError(
                f"branch_k must be 0 (no look-ahead) or in [2, {MAX_BRANCH_K}], "
                f"got {self.branch_k!r}"
            )
        _check_range("branch_horizon", self.branch_horizon, 1, math.inf, "must be >= 1")
        _check_range("max_branch_points", self.max_branch_points, 0, math.inf, "must be >= 0")
        if self.branch_score not in BRANCH_SCORES:
            raise ConfigError(
                f"branch_score must be one of {', '.join(BRANCH_SCORES)}, got {self.branch_score!r}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SamplerConfig":
        """Build a config from a flat mapping; unknown keys raise ConfigError."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown sampler setting(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: Union[str, Path]) -> "SamplerConfig":
        """The settings of a TOML file (a flat table); see also `parse_toml` for TOML text."""
        return cls.from_dict(read_settings(path))

    @classmethod
    def parse_toml(cls, text: str) -> "SamplerConfig":
        """The settings of TOML text (a flat table)."""
        return cls.from_dict(parse_settings(text))

    @classmethod
    def merged(
        cls,
        preset: Mapping[str, Any] = {},
        config_file: Optional[Union[str, Path]] = None,
        overrides: Mapping[str, Any] = {},
    ) -> "SamplerConfig":
        """The one merge order, validated once: a model's preset, then a TOML file's settings, then
        `overrides` (those that are None are left out)."""
        settings = {**preset, **(read_settings(config_file) if config_file else {})}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(settings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """Flat TOML, one `key = value` line per setting (None is left out)."""
        lines = [f"{k} = {_toml_value(v)}" for k, v in self.to_dict().items() if v is not None]
        return "\n".join(lines) + "\n"

    def replace(self, **overrides) -> "SamplerConfig":
        """A validated copy with some settings changed."""
        return self.from_dict({**self.to_dict(), **overrides})


# Each family of strategy thresholds must rise: low_ent < med_ent < high_ent, low_vent < high_vent.
_ORDERED_THRESHOLDS = (("low_ent", "med_ent"), ("med_ent", "high_ent"), ("low_vent", "high_vent"))


def read_settings(path: Union[str, Path]) -> dict:
    """The flat table of a TOML settings file; ConfigError naming the file if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return parse_settings(read_limited(f, "the file").decode("utf-8"))
    except (OSError, UnicodeDecodeError, EntropixError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None


def parse_settings(text: str) -> dict:
    """The flat table of TOML settings text (the one TOML parser of the package)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML ({e})") from None


_INT_FIELDS = {
    "top_k",
    "n_adaptive_samples",
    "pause_token_id",
    "branch_k",
    "branch_horizon",
    "max_branch_points",
    "loop_window",
}
_TEXT_FIELDS = {"pause_token", "branch_score"}


def _check_text(name, value):
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}", name)


def _check_int(name, value, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}", name)


def _check_number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}", name)
    try:
        size = abs(float(value))
    except OverflowError:  # an integer past float64
        raise ConfigError(f"{name} must be finite, got {_short(value)}", name) from None
    if not math.isfinite(size):
        raise ConfigError(f"{name} must be finite, got {value!r}", name)
    # The sampler computes in float32: a value it would round to 0 or to infinity means
    # something else there (top_p 1e-300 would keep no token at all).
    if size and size < FLOAT32_TINY:
        raise ConfigError(
            f"{name} {value!r} is too small for float32, which the sampler computes in; "
            f"a value other than 0 needs a size of at least {FLOAT32_TINY:.2g}",
            name,
        )
    if size > FLOAT32_MAX:
        raise ConfigError(
            f"{name} {_short(value)} is too large for float32, which the sampler computes in; "
            f"use a size of at most {FLOAT32_MAX:.2g}",
            name,
        )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(str(abs(value)))} digits)"


def _check_range(name, value, low, high, rule, low_open=False, high_open=False):
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise ConfigError(f"{name} {rule}, got {_short(value)}", name)


def _toml_value(value):
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value) if isinstance(value, str) else repr(value)
