"""Pictures of a trace: the entropy-varentropy plane with the strategy regions, and a per-token timeline."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import mlx.core as mx

from .errors import PlotError
from .sampling import STRATEGIES, SamplerConfig, choose_strategy

FIX_IT = "pip install 'entropix-mlx[plot]'"
DPI = 100
# Strategy colours echo the CLI's --color (argmax plain, pause yellow, branch cyan, ...).
COLORS = {
    "argmax": "#7f7f7f",
    "pause": "#d4a017",
    "branch": "#17becf",
    "resample": "#c51b8a",
    "adaptive": "#2ca02c",
    None: "#000000",
}

# Layout in inches: the timeline widens with the trace, up to a cap, then labels thin out.
INCH_PER_TOKEN = 0.13
MIN_WIDTH, MAX_WIDTH = 10.0, 60.0
SIDE_MARGIN = 0.9
PLANE_HEIGHT = 4.6
TIMELINE_HEIGHT = 5.4
# Below this fraction of the axis, a threshold gets a symlog axis so its region stays visible.
LOG_SCALE_BELOW = 0.05
HEIGHT = PLANE_HEIGHT + TIMELINE_HEIGHT + 0.8

ENT_THRESHOLDS = ("low_ent", "med_ent", "high_ent")
VENT_THRESHOLDS = ("low_vent", "high_vent")


def figure_size(n_tokens: int) -> tuple[float, float]:
    """(width, height) in inches of the figure for a trace of n_tokens tokens."""
    width = 2 * SIDE_MARGIN + INCH_PER_TOKEN * n_tokens
    return min(max(width, MIN_WIDTH), MAX_WIDTH), HEIGHT


def pixel_size(n_tokens: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that plot_trace writes for n_tokens tokens."""
    width, height = figure_size(n_tokens)
    return round(width * DPI), round(height * DPI)


def plot_trace(
    records: Sequence[dict],
    path: Union[str, Path],
    config: Optional[SamplerConfig] = None,
    title: Optional[str] = None,
) -> Path:
    """Draw trace records (see entropix_mlx.trace) to a PNG with `config`'s thresholds (default SamplerConfig)."""
    figure_cls, canvas_cls = _matplotlib()
    records = _checked(records)
    config = config or SamplerConfig()
    width, height = figure_size(len(records))
    fig = figure_cls(figsize=(width, height), dpi=DPI)
    canvas_cls(fig)
    plane, legend = _top_axes(fig, width, height)
    draw_plane(plane, records, config)
    draw_legend(legend, records, config)
    draw_timeline(_timeline_axes(fig, width, height), records, config)
    if title:
        fig.suptitle(title, x=SIDE_MARGIN / width, y=1 - 0.12 / height, ha="left", fontsize=11)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")  # token text in other scripts
        fig.savefig(path, dpi=DPI, format="png")
    return path


def _matplotlib():
    try:
        import matplotlib  # noqa: F401  (the extra itself; its submodules may be cached)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(
            f"plotting needs matplotlib, which is not installed; run: {FIX_IT}"
        ) from None
    return Figure, FigureCanvasAgg


def _checked(records: Sequence[dict]) -> list[dict]:
    if not records:
        raise PlotError(
            "the trace has no tokens; make one with `entropix-mlx generate --trace FILE`"
        )
    if any(r.get("logits_entropy") is None for r in records):
        raise PlotError(
            "the trace has no sampler metrics (made with --sampler standard or greedy); "
            "make it with --sampler entropix"
        )
    return list(records)


def _axes_at(fig, width, height, left, bottom, w, h):
    """Axes placed in inches from the figure's bottom-left corner."""
    return fig.add_axes((left / width, bottom / height, w / width, h / height))


def _top_axes(fig, width, height):
    side = PLANE_HEIGHT - 0.6
    bottom = TIMELINE_HEIGHT + 0.55
    plane = _axes_at(fig, width, height, SIDE_MARGIN, bottom, side, side)
    legend = _axes_at(fig, width, height, SIDE_MARGIN + side + 0.6, bottom, 3.6, side)
    return plane, legend


def _timeline_axes(fig, width, height):
    inner = width - 2 * SIDE_MARGIN
    axes, top = [], TIMELINE_HEIGHT - 0.15
    for h in (1.7, 1.7, 0.28):  # entropy, varentropy, strategy band
        top -= h + 0.22
        axes.append(_axes_at(fig, width, height, SIDE_MARGIN, top, inner, h))
    for ax in axes[1:]:
        ax.sharex(axes[0])
    return axes


# ---------------------------------------------------------------- the plane


def strategy_regions(cfg: SamplerConfig, x_max: float, y_max: float) -> dict:
    """Each strategy's rectangle (x0, y0, x1, y1) in the plane, as choose_strategy reads the thresholds."""
    return {
        "argmax": (0.0, 0.0, cfg.low_ent, cfg.low_vent),
        "pause": (cfg.med_ent, 0.0, max(x_max, cfg.med_ent), cfg.low_vent),
        "branch": (0.0, cfg.high_vent, cfg.high_ent, max(y_max, cfg.high_vent)),
        "resample": (
            cfg.high_ent,
            cfg.high_vent,
            max(x_max, cfg.high_ent),
            max(y_max, cfg.high_vent),
        ),
    }


def draw_plane(ax, records, cfg: SamplerConfig):
    """Tokens as points in (entropy, varentropy), coloured by strategy, over the strategy regions."""
    xs = [r["logits_entropy"] for r in records]
    ys = [r["logits_varentropy"] for r in records]
    x_max = 1.15 * max(max(xs), cfg.high_ent, cfg.med_ent)
    y_max = 1.15 * max(max(ys), cfg.high_vent)
    _set_scale(ax.set_xscale, cfg.low_ent, x_max)
    _set_scale(ax.set_yscale, cfg.low_vent, y_max)
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, y_max)
    for name, (x0, y0, x1, y1) in strategy_regions(cfg, x_max, y_max).items():
        ax.fill_between([x0, x1], y0, y1, color=COLORS[name], alpha=0.10, linewidth=0)
        _region_label(ax, name, x0, y0, x1, y1)
    _region_label(ax, "adaptive", cfg.low_ent, cfg.low_vent, cfg.high_ent, cfg.high_vent)
    for name in ENT_THRESHOLDS:
        ax.axvline(getattr(cfg, name), color="#555555", linestyle="--", linewidth=0.7)
    for name in VENT_THRESHOLDS:
        ax.axhline(getattr(cfg, name), color="#555555", linestyle="--", linewidth=0.7)
    _name_thresholds(ax, cfg)
    ax.scatter(
        xs,
        ys,
        s=14,
        c=[COLORS[r["strategy"]] for r in records],
        edgecolors="white",
        linewidths=0.3,
        zorder=3,
    )
    ax.set_xlabel("logits entropy (bits)")
    ax.set_ylabel("logits varentropy (bits²)")
    ax.set_title("Entropy–varentropy plane", fontsize=10, loc="left", pad=22)
    ax.tick_params(labelsize=7)


def _name_thresholds(ax, cfg):
    """Name the threshold lines just outside the top and right edges (values are listed beside)."""
    style = dict(textcoords="offset points", fontsize=6.5, color="#555555")
    for name in ENT_THRESHOLDS:
        ax.annotate(
            name,
            (getattr(cfg, name), 1),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            ha="center",
            va="bottom",
            rotation=30,
            **style,
        )
    for name in VENT_THRESHOLDS:
        ax.annotate(
            name,
            (1, getattr(cfg, name)),
            xycoords=("axes fraction", "data"),
            xytext=(2, 0),
            ha="left",
            va="center",
            **style,
        )


def _set_scale(set_scale, low: float, top: float):
    """Linear, unless the low threshold would be squeezed against zero: then symlog, linear up to it."""
    if 0 < low < LOG_SCALE_BELOW * top:
        set_scale("symlog", linthresh=low, linscale=0.6)


def _region_label(ax, name, x0, y0, x1, y1):
    """Name a region at its (display-space) centre, if it is wide enough to hold the word."""
    x1, y1 = min(x1, ax.get_xlim()[1]), min(y1, ax.get_ylim()[1])
    (dx0, dy0), (dx1, dy1) = ax.transData.transform([(x0, y0), (x1, y1)])
    if dx1 - dx0 < 30 or dy1 - dy0 < 10:
        return
    centre = ax.transData.inverted().transform(((dx0 + dx1) / 2, (dy0 + dy1) / 2))
    ax.text(
        *centre,
        name,
        ha="center",
        va="center",
        fontsize=8,
        color=COLORS[name],
        alpha=0.9,
        weight="bold",
    )


def draw_legend(ax, records, cfg: SamplerConfig):
    """Strategy colours with each one's token count and share, then the thresholds."""
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    counts = {name: sum(r["strategy"] == name for r in records) for name in STRATEGIES}
    total = len(records)
    ax.text(0, 1, f"{total} tokens", fontsize=9, va="top", weight="bold")
    for row, name in enumerate(STRATEGIES, start=1):
        y = 1 - 0.085 * row
        ax.scatter([0.03], [y - 0.025], s=40, color=COLORS[name])
        ax.text(
            0.1,
            y,
            f"{name:<9}{counts[name]:>5} {counts[name] / total:>7.1%}",
            fontsize=8.5,
            va="top",
            family="monospace",
        )
    ax.text(0, 0.42, "thresholds", fontsize=9, va="top", weight="bold")
    for row, name in enumerate(ENT_THRESHOLDS + VENT_THRESHOLDS, start=1):
        ax.text(
            0.1,
            0.42 - 0.07 * row,
            f"{name:<10}{getattr(cfg, name):>9.4g}",
            fontsize=8.5,
            va="top",
            family="monospace",
        )


# ---------------------------------------------------------------- the timeline


def draw_timeline(axes, records, cfg: SamplerConfig):
    """Entropy and attention entropy, varentropy, and a strategy band with the token text."""
    ent_ax, vent_ax, band_ax = axes
    x = list(range(len(records)))
    curves = (
        (ent_ax, "logits_entropy", "#1f4e99", 1, "-", "logits entropy"),
        (ent_ax, "attn_entropy", "#e07b00", 0.9, ":", "attention entropy"),
        (vent_ax, "logits_varentropy", "#6a3d9a", 1, "-", "logits varentropy"),
    )
    for ax, metric, color, width, style, label in curves:
        values = [r[metric] for r in records]
        ax.plot(x, values, color=color, linewidth=width, linestyle=style, label=label)
    for ax, thresholds in ((ent_ax, ENT_THRESHOLDS), (vent_ax, VENT_THRESHOLDS)):
        for name in thresholds:
            ax.axhline(getattr(cfg, name), color="#999999", linestyle="--", linewidth=0.6)
        ax.set_ylim(bottom=0)
        _set_scale(ax.set_yscale, getattr(cfg, thresholds[0]), ax.get_ylim()[1])
        ax.legend(loc="lower right", bbox_to_anchor=(1, 0.98), fontsize=7, frameon=False, ncols=2)
        ax.tick_params(labelbottom=False, labelsize=7)
        ax.grid(axis="x", color="#eeeeee", linewidth=0.5)
    ent_ax.set_ylabel("bits", fontsize=8)
    vent_ax.set_ylabel("bits²", fontsize=8)
    ent_ax.set_title("Per token", fontsize=10, loc="left")
    _strategy_band(band_ax, records)


def _strategy_band(ax, records):
    x = range(len(records))
    ax.bar(
        x,
        [1] * len(records),
        width=1.0,
        color=[COLORS[r["strategy"]] for r in records],
        linewidth=0,
    )
    ax.set_xlim(-0.5, len(records) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("strategy", fontsize=7, rotation=0, ha="right", va="center")
    step = label_step(len(records))
    ticks = list(range(0, len(records), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels(
        [token_label(records[i]) for i in ticks], rotation=90, fontsize=7, family="monospace"
    )
    ax.tick_params(axis="x", length=2, pad=2)


def label_step(n_tokens: int) -> int:
    """Label every k-th token so labels never overlap once the width is capped."""
    width, _ = figure_size(n_tokens)
    room = (width - 2 * SIDE_MARGIN) / INCH_PER_TOKEN
    return max(1, math.ceil(n_tokens / room))


def token_label(record: dict) -> str:
    """The token's text, with whitespace made visible and long pieces cut."""
    text = record["text"]
    if not text:
        return "⟨stop⟩" if record.get("finish_reason") == "stop" else f"#{record['token']}"
    text = text.replace("\n", "↵").replace("\t", "→").replace(" ", "·")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= 12 else text[:11] + "…"


def strategy_mismatches(records: Sequence[dict], cfg: SamplerConfig) -> int:
    """Tokens whose recorded strategy is not the one `cfg`'s thresholds choose: 0 when the
    plot's regions are those the trace was made with."""
    records = [r for r in records if r.get("strategy") is not None]
    if not records:
        return 0
    metrics = {
        name: mx.array([r[name] for r in records], dtype=mx.float32)
        for name in ("logits_entropy", "logits_varentropy")
    }
    chosen = choose_strategy(metrics, cfg).tolist()
    return sum(STRATEGIES[index] != r["strategy"] for index, r in zip(chosen, records))
