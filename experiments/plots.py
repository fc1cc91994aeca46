"""The two pictures of an experiment's read-out: the lift over time with its bounds, the arms' running metric.

Built on matplotlib's `Figure` without pyplot (no global state, no display), written as PNG files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from experiments.analysis import ExperimentAnalysis
from experiments.errors import ExperimentError


def _rows(frame: pd.DataFrame, analysis: ExperimentAnalysis, metric: str) -> pd.DataFrame:
    known = sorted({r.metric for r in analysis.results})
    if metric not in known:
        raise ExperimentError(f"metric: {metric!r} is not in the analysis ({', '.join(known)})")
    return frame[frame["metric"] == metric]


def _x(days: pd.Series) -> list[Any]:
    """Days as dates; a read-out without days has a single look, drawn at position 1."""
    return [d if d is not None else i + 1 for i, d in enumerate(days)]


def _save(fig: Figure, ax: Axes, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_lift_over_time(analysis: ExperimentAnalysis, metric: str, path: Path) -> Path:
    """PNG of the difference (arm minus control) at each daily look with its interval and the zero line.

    The interval is the one a daily look shows: the always-valid sequence in sequential mode, the fixed-horizon
    interval (valid only at the planned end) in fixed mode.
    """
    looks = _rows(analysis.looks, analysis, metric)
    fig = Figure(figsize=(7.0, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    bound = "always-valid" if analysis.mode == "sequential" else "fixed-horizon"
    level = f"{100 * (1 - (analysis.interval_alpha or analysis.alpha)):.3g}%"
    for arm, rows in looks.groupby("arm", sort=False):
        x = _x(rows["day"])
        ax.plot(x, rows["difference"], marker="o", markersize=3, label=f"{arm} minus control")
        ax.fill_between(x, rows["ci_low"], rows["ci_high"], alpha=0.2, label=f"{arm}: {level} {bound} interval")
    ax.axhline(0.0, color="black", linewidth=1, linestyle="--", label="no effect")
    ax.set_title(f"{metric}: difference from control over time")
    ax.set_xlabel("day of first exposure (cumulative)")
    ax.set_ylabel(f"difference in {metric}")
    return _save(fig, ax, path)


def plot_cumulative(analysis: ExperimentAnalysis, metric: str, path: Path) -> Path:
    """PNG of each arm's running value of the metric, day by day (all units exposed so far)."""
    cumulative = _rows(analysis.cumulative, analysis, metric)
    fig = Figure(figsize=(7.0, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for arm, rows in cumulative.groupby("arm", sort=False):
        ax.plot(_x(rows["day"]), rows["mean"], marker="o", markersize=3, label=str(arm))
    ax.set_title(f"{metric}: each arm's running value")
    ax.set_xlabel("day of first exposure (cumulative)")
    ax.set_ylabel(metric)
    return _save(fig, ax, path)
