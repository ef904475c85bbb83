"""Per-model calibration: the entropy/varentropy of a model's own text, and thresholds fit to a target mix."""

from __future__ import annotations

import bisect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import mlx.core as mx
import numpy as np

from .engine.prompt import chat_prompt_ids
from .errors import CalibrationError
from .files import read_limited
from .generate import stream_generate
from .sampling import (
    STRATEGIES,
    SamplerConfig,
    choose_strategy,
    logits_entropy_varentropy,
    make_sampler,
    resolve_pause_token,
)

# Pairs of the same kind, so the alternating split puts one of each kind in each half.
DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "Write a Python function that reverses a string.",
    "Write a SQL query that counts the rows of a table named users.",
    "List five fruits that are red.",
    "Name the planets of the solar system in order.",
    "Tell me a short story about a lonely robot.",
    "Write a short story about a dragon who is afraid of the dark.",
    "What is 17 times 23?",
    "If I have 12 apples and eat 5, how many are left?",
    "Why is the sky blue?",
    "Explain what a hash table is in one paragraph.",
    "Give me three tips for sleeping better.",
    "How can I stay focused while studying?",
    "Write a haiku about autumn rain.",
    "Write a limerick about a cat who loves coffee.",
    "Translate 'good morning' into Spanish and French.",
    "What is the difference between 'affect' and 'effect'?",
    "Suggest three names for a small bakery.",
    "Describe the smell of fresh bread.",
)

# The target mix of strategies on the model's own text. Argmax takes the confident
# two-fifths; pause (emits the pause token) and resample (temperature >= 2) stay rare.
TARGET_MIX = {"argmax": 0.40, "pause": 0.02, "branch": 0.10, "resample": 0.05, "adaptive": 0.43}
THRESHOLDS = ("low_ent", "low_vent", "med_ent", "high_ent", "high_vent")
RULE = (
    "solved in order on the calibration tokens, each cut halfway between neighbouring values; "
    "argmax: low_ent and low_vent cut the sorted entropies and varentropies at the same rank, the rank "
    "at which H < low_ent and V < low_vent holds for the share closest to argmax's; "
    "pause: med_ent cuts the entropies of the tokens with V < low_vent so that the pause share lies above it; "
    "branch + resample: high_vent cuts the varentropies so that their joint share lies above it, and high_ent "
    "(at least med_ent) cuts those tokens' entropies so that the resample share lies above it; "
    "adaptive takes the rest"
)


@dataclass(frozen=True, eq=False)
class MetricSample:
    """Logits entropy (bits) and varentropy (bits^2) of every generated token, in order."""

    entropy: np.ndarray
    varentropy: np.ndarray

    def __len__(self) -> int:
        return len(self.entropy)

    @classmethod
    def concat(cls, samples: Sequence["MetricSample"]) -> "MetricSample":
        return cls(
            np.concatenate([s.entropy for s in samples]) if samples else np.zeros(0),
            np.concatenate([s.varentropy for s in samples]) if samples else np.zeros(0),
        )


def split_prompts(prompts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(calibration, held-out): alternate prompts, so each half gets every kind."""
    return list(prompts[0::2]), list(prompts[1::2])


def read_prompts(path: Union[str, Path]) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    with open(path, "rb") as f:
        lines = read_limited(f, str(path)).decode("utf-8").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(prompts) < 2:
        raise CalibrationError(
            f"{path} holds {len(prompts)} prompt(s); give at least 2, one per line "
            "(half calibrate, half are held out)"
        )
    return prompts


def _metered(step):
    """Wrap a sampler step so it also reports the logits' entropy and varentropy."""

    def metered_step(logits, scores, prev_token, key):
        token, strategy, info = step(logits, scores, prev_token, key)
        entropy, varentropy = logits_entropy_varentropy(logits.astype(mx.float32))
        return token, strategy, {**info, "logits_entropy": entropy, "logits_varentropy": varentropy}

    return metered_step


def collect_metrics(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_tokens: int = 48,
    seed: int = 0,
    config: Optional[SamplerConfig] = None,
    progress: bool = True,
    desc: str = "prompts",
) -> list[MetricSample]:
    """One MetricSample per prompt: the model answers it (chat template, standard sampler
    with `config`'s temp/top_p/top_k/min_p, fixed `seed`) for up to `max_tokens` tokens."""
    from tqdm import tqdm

    sampler = _metered(make_sampler("standard", config or SamplerConfig()))
    samples = []
    with tqdm(prompts, desc=desc, unit="prompt", disable=not progress, leave=False) as bar:
        for prompt in bar:
            ids = chat_prompt_ids(tokenizer, prompt)
            steps = list(
                stream_generate(
                    model, tokenizer, ids, sampler=sampler, max_tokens=max_tokens, seed=seed
                )
            )
            samples.append(
                MetricSample(
                    np.array([r.metrics["logits_entropy"] for r in steps]),
                    np.array([r.metrics["logits_varentropy"] for r in steps]),
                )
            )
            bar.set_postfix(tokens=sum(len(s) for s in samples))
    return samples


def fit_thresholds(sample: MetricSample, target: Dict[str, float] = TARGET_MIX) -> Dict[str, float]:
    """The five thresholds that give `target`'s strategy mix on `sample`, solved in order (see RULE)."""
    check_target(target)
    if len(sample) < 10:
        raise CalibrationError(
            f"calibration needs at least 10 tokens, got {len(sample)}; use more prompts or --max-tokens"
        )
    ent, vent = sample.entropy, sample.varentropy
    n = len(ent)
    low_ent, low_vent = _argmax_corner(ent, vent, target["argmax"])
    med_ent = _cut_leaving(ent[vent < low_vent], target["pause"] * n, fallback=low_ent)
    high_vent = _cut_leaving(
        vent, (target["branch"] + target["resample"]) * n, fallback=float(vent.max())
    )
    high_ent = _cut_leaving(ent[vent > high_vent], target["resample"] * n, fallback=med_ent)
    return _ordered(
        {"low_ent": low_ent, "med_ent": med_ent, "high_ent": max(high_ent, med_ent)},
        {"low_vent": low_vent, "high_vent": high_vent},
    )


def _cut(sorted_values: np.ndarray, below: int) -> float:
    """A value with the first `below` sorted values under it: halfway to the next, or just past an end."""
    margin = 1e-3 * max(1.0, float(sorted_values[-1] - sorted_values[0]))
    if below <= 0:
        return max(
            float(sorted_values[0]) - margin, 0.0
        )  # entropies are >= 0: nothing lies under 0
    if below >= len(sorted_values):
        return float(sorted_values[-1]) + margin
    return float(sorted_values[below - 1] + sorted_values[below]) / 2


def _cut_leaving(values: np.ndarray, count: float, fallback: float) -> float:
    """A cut of `values` that leaves about `count` of them above it (`fallback` if there are none)."""
    if len(values) == 0:
        return fallback
    return _cut(np.sort(values), len(values) - round(count))


def _argmax_corner(ent: np.ndarray, vent: np.ndarray, share: float) -> tuple[float, float]:
    """(low_ent, low_vent): cuts at the same rank of both sorted columns, the rank whose corner
    (H < low_ent and V < low_vent) holds the share of tokens closest to `share`."""
    sorted_ent, sorted_vent = np.sort(ent), np.sort(vent)
    corner = lambda rank: (_cut(sorted_ent, rank), _cut(sorted_vent, rank))  # noqa: E731
    held = lambda rank: float(np.mean((ent < corner(rank)[0]) & (vent < corner(rank)[1])))  # noqa: E731
    # The corner's share only grows with the rank, so bisect for the first rank that reaches it.
    rank = bisect.bisect_left(range(len(ent) + 1), share, key=held)  # held(len) is 1: rank <= len
    if rank > 0 and share - held(rank - 1) < held(rank) - share:
        rank -= 1
    return corner(rank)


def _ordered(ent: Dict[str, float], vent: Dict[str, float]) -> Dict[str, float]:
    """Round to 6 significant digits, then make each family strictly increasing, as the strategy table needs."""
    out = {}
    for family in (ent, vent):
        previous = -np.inf
        for name, value in family.items():
            value = float(f"{value:.6g}")
            if value <= previous:
                value = float(f"{previous + max(abs(previous), 1e-3) * 1e-4:.6g}")
            out[name] = previous = value
    return {name: out[name] for name in THRESHOLDS}


def check_target(target: Dict[str, float]):
    """A target mix names every strategy with a share in [0, 1]; the shares add up to 1."""
    if set(target) != set(STRATEGIES):
        raise CalibrationError(
            f"a target mix needs a share for each of {', '.join(STRATEGIES)}; got {', '.join(target)}"
        )
    if (
        any(not 0 <= share <= 1 for share in target.values())
        or abs(sum(target.values()) - 1) > 1e-6
    ):
        raise CalibrationError(f"target shares must lie in [0, 1] and add up to 1, got {target}")


def strategy_mix(sample: MetricSample, config: SamplerConfig) -> Dict[str, float]:
    """Share of each strategy that the Entropix rule (choose_strategy) gives the sample's tokens."""
    metrics = {
        "logits_entropy": mx.array(sample.entropy, dtype=mx.float32),
        "logits_varentropy": mx.array(sample.varentropy, dtype=mx.float32),
    }
    chosen = np.array(choose_strategy(metrics, config))
    return {
        name: float(np.mean(chosen == index)) if len(chosen) else 0.0
        for index, name in enumerate(STRATEGIES)
    }


def parse_target(text: str) -> Dict[str, float]:
    """A target mix from 'argmax=40,branch=10,...' (percent); unnamed strategies keep TARGET_MIX's
    share, and adaptive, unless named, takes whatever the others leave."""
    target = dict(TARGET_MIX)
    named = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in STRATEGIES:
            raise CalibrationError(
                f"unknown strategy {name!r} in the target mix; use {', '.join(STRATEGIES)}"
            )
        try:
            target[name] = float(value) / 100
        except ValueError:
            raise CalibrationError(
                f"the target share of {name} must be a percentage like {name}=40, got {item!r}"
            ) from None
        named.add(name)
    if "adaptive" not in named:
        target["adaptive"] = round(
            1 - sum(share for name, share in target.items() if name != "adaptive"), 9
        )
    check_target(target)
    return target


@dataclass(frozen=True, eq=False)
class Calibration:
    """A calibrated sampler config and the evidence for it."""

    config: SamplerConfig
    target: Dict[str, float]
    calibration: MetricSample  # the tokens the thresholds were fit on
    held_out: MetricSample  # the tokens they were checked on
    prompt_counts: tuple[int, int]  # (calibration, held-out) prompts
    max_tokens: int
    seed: int

    @property
    def thresholds(self) -> Dict[str, float]:
        return {name: getattr(self.config, name) for name in THRESHOLDS}

    @property
    def calibration_mix(self) -> Dict[str, float]:
        return strategy_mix(self.calibration, self.config)

    @property
    def held_out_mix(self) -> Dict[str, float]:
        return strategy_mix(self.held_out, self.config)


def calibrate(
    model,
    tokenizer,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    *,
    max_tokens: int = 48,
    seed: int = 0,
    config: Optional[SamplerConfig] = None,
    target: Dict[str, float] = TARGET_MIX,
    progress: bool = True,
) -> Calibration:
    """Fit the thresholds on half the prompts (alternate ones) and measure the mix on the other half.

    The model answers every prompt with the standard sampler (`config`'s base settings, default
    SamplerConfig) and a fixed `seed`; `config`'s other settings are kept in the result.
    """
    config = config or SamplerConfig()
    check_target(target)
    if len(prompts) < 2:
        raise CalibrationError(
            f"calibration needs at least 2 prompts (half are held out), got {len(prompts)}"
        )
    resolve_pause_token(config, tokenizer)  # fail before the long run, not after it
    fit_prompts, held_prompts = split_prompts(prompts)
    run = dict(max_tokens=max_tokens, seed=seed, config=config, progress=progress)
    fit_sample = MetricSample.concat(
        collect_metrics(model, tokenizer, fit_prompts, desc="calibration", **run)
    )
    held_sample = MetricSample.concat(
        collect_metrics(model, tokenizer, held_prompts, desc="held-out", **run)
    )
    return Calibration(
        config=config.replace(**fit_thresholds(fit_sample, target)),
        target=dict(target),
        calibration=fit_sample,
        held_out=held_sample,
        prompt_counts=(len(fit_prompts), len(held_prompts)),
        max_tokens=max_tokens,
        seed=seed,
    )


def format_mix_table(result: Calibration) -> str:
    """Target, calibration and held-out shares of each strategy, one row each."""
    fit_mix, held_mix = result.calibration_mix, result.held_out_mix
    rows = [f"{'strategy':<10}{'target':>9}{'calibration':>13}{'held-out':>10}{'off by':>9}"]
    for name in STRATEGIES:
        off = (held_mix[name] - result.target[name]) * 100
        rows.append(
            f"{name:<10}{result.target[name]:>9.1%}{fit_mix[name]:>13.1%}{held_mix[name]:>10.1%}"
            f"{off:>+7.1f}pp"
        )
    rows.append(f"{'tokens':<10}{'':>9}{len(result.calibration):>13}{len(result.held_out):>10}")
    return "\n".join(rows)


def mix_preset_toml(
    result: Calibration, model_name: str, prompt_source: str = "the built-in prompt set"
) -> str:
    """The preset file: a provenance header (model, data, rule, mixes), then the thresholds and pause token."""
    cfg = result.config
    percent = lambda mix: ", ".join(f"{name} {mix[name]:.1%}" for name in STRATEGIES)  # noqa: E731
    fit_n, held_n = result.prompt_counts
    header = [
        f"Entropix sampler preset for {model_name}, written by `entropix-mlx calibrate`.",
        f"Data: logits entropy/varentropy of the model's own answers to {prompt_source}, standard sampler "
        f"(temp {cfg.temp:g}, top_p {cfg.top_p:g}, top_k {cfg.top_k}, min_p {cfg.min_p:g}), seed {result.seed}, "
        f"up to {result.max_tokens} tokens per prompt; alternate prompts calibrate, the others are held out.",
        f"Target mix: {percent(result.target)}.",
        f"Rule: {RULE}.",
        f"Calibration mix ({fit_n} prompts, {len(result.calibration)} tokens): {percent(result.calibration_mix)}.",
        f"Held-out mix ({held_n} prompts, {len(result.held_out)} tokens): {percent(result.held_out_mix)}.",
    ]
    lines = [
        f"# {line}"
        for paragraph in header
        for line in textwrap.wrap(paragraph, 90, subsequent_indent="  ")
    ]
    settings = {**result.thresholds, "pause_token": cfg.pause_token}
    body = SamplerConfig.from_dict(settings).to_toml().splitlines()
    return "\n".join(lines + [line for line in body if line.split(" =")[0] in settings]) + "\n"
