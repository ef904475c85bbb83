"""A picture of the writing task's frontier: each arm at (surprisal, measure), the sweeps as
curves, every arm labelled, with 95% bootstrap intervals over prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from .errors import PlotError
from .files import read_limited
from .plot import DPI, _matplotlib

WRITING_SCHEMA = "entropix-mlx/writing-summary/1"
PANELS = (
    ("loop", "loop rate"),
    ("seq_rep_4", "seq-rep-4"),
    ("junk", "unknown-word share"),
    ("relevance", "relevance (nats/token)"),
)
FAMILY_STYLE = {"temperature": "#1f77b4", "min-p": "#ff7f0e", "repetition penalty": "#9467bd"}
ARM_STYLE = {"greedy": "#000000", "entropix": "#d62728", "standard": "#1f77b4"}


def read_writing_summary(path: Union[str, Path]) -> dict | None:
    """The summary in `path` if it is a writing summary.json, else None (e.g. a trace)."""
    try:
        with open(path, "rb") as f:  # bounded: an endless file is not a summary either
            summary = json.loads(read_limited(f, str(path)))
    except ValueError:  # not JSON, not UTF-8, or too large
        return None
    return (
        summary if isinstance(summary, dict) and summary.get("schema") == WRITING_SCHEMA else None
    )


def plot_frontier(summary: dict, path: Union[str, Path], title: str | None = None) -> Path:
    """Four panels (loop rate, seq-rep-4, unknown-word share, relevance) against surprisal."""
    figure_cls, canvas_cls = _matplotlib()
    arms = [a for a in summary["arms"] if a["measures"]["surprisal"]["mean"] is not None]
    if not arms:
        raise PlotError("the summary has no answers to draw; run the writing task first")
    fig = figure_cls(figsize=(12, 9.5), dpi=DPI)
    canvas_cls(fig)
    axes = fig.subplots(2, 2).ravel()
    for ax, (measure, label) in zip(axes, PANELS):
        draw_panel(ax, arms, measure, label)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(
        title or f"writing ({summary['split']}, {summary['items']} prompts): {summary['model']}",
        fontsize=11,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def point(arm: dict, measure: str):
    m = arm["measures"]
    return m["surprisal"]["mean"], m[measure]["mean"], m["surprisal"]["ci95"], m[measure]["ci95"]


def draw_panel(ax, arms, measure: str, label: str):
    for family, color in FAMILY_STYLE.items():
        members = [a for a in arms if a["family"] == family and point(a, measure)[1] is not None]
        members.sort(key=lambda a: point(a, measure)[0])
        if members:
            xs, ys = zip(*(point(a, measure)[:2] for a in members))
            ax.plot(xs, ys, "-", color=color, alpha=0.6, label=f"{family} sweep")
    for arm in arms:
        x, y, x_ci, y_ci = point(arm, measure)
        if y is None:
            continue
        color = FAMILY_STYLE.get(arm["family"]) or ARM_STYLE.get(arm["sampler"], "#2ca02c")
        own = arm["family"] is None or arm["name"] == "standard"
        ax.errorbar(
            x,
            y,
            xerr=[[x - x_ci[0]], [x_ci[1] - x]] if x_ci[0] is not None else None,
            yerr=[[y - y_ci[0]], [y_ci[1] - y]] if y_ci[0] is not None else None,
            fmt="D" if own else "o",
            ms=7 if own else 4,
            color=color,
            elinewidth=0.8,
            capsize=2,
            alpha=0.9,
        )
        ax.annotate(arm["name"], (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xlabel("surprisal (mean NLL per token, nats)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
