"""Figures a reviewer looks at: ROC, precision-recall, calibration, gains, importance, Qini, recall@k.

Each function returns a matplotlib `Figure` built without pyplot (no global state, no
display needed); the registry logs them into the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(5.5, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def roc_figure(y: np.ndarray, scores: Mapping[str, np.ndarray], title: str = "ROC") -> Figure:
    """ROC curves of one or more scores (e.g. the model and the oracle) on the same labels."""
    fig, ax = _figure(title, "false positive rate", "true positive rate")
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.legend(loc="lower right")
    return fig


def pr_figure(y: np.ndarray, scores: Mapping[str, np.ndarray], title: str = "Precision-recall") -> Figure:
    """Precision-recall curves, with the base rate as the no-skill line."""
    fig, ax = _figure(title, "recall", "precision")
    for name, p in scores.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=name)
    ax.axhline(float(np.mean(y)), linestyle="--", color="grey", label="base rate")
    ax.legend(loc="upper right")
    return fig


def calibration_figure(table: pd.DataFrame, title: str = "Calibration") -> Figure:
    """Observed rate against mean predicted probability per score bin."""
    fig, ax = _figure(title, "mean predicted probability", "observed rate")
    ax.plot(table["mean_predicted"], table["observed_rate"], "o-", label="model")
    top = float(max(table["mean_predicted"].max(), table["observed_rate"].max()))
    ax.plot([0, top], [0, top], "--", color="grey", label="perfect")
    ax.legend(loc="upper left")
    return fig


def gain_figure(table: pd.DataFrame, title: str = "Cumulative gains") -> Figure:
    """Share of positives captured by contacting the top share of customers."""
    fig, ax = _figure(title, "share contacted (highest scores first)", "share of positives captured")
    ax.plot([0, *table["top_share"]], [0, *table["positives_captured"]], "o-", label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.legend(loc="lower right")
    return fig


def importance_figure(names: Sequence[str], values: Sequence[float], top: int = 25) -> Figure:
    """The `top` features by importance (total gain), largest at the top."""
    order = np.argsort(np.asarray(values, dtype=float))[::-1][:top][::-1]
    fig = Figure(figsize=(6.5, max(3.0, 0.25 * len(order) + 1)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.barh([names[i] for i in order], [float(values[i]) for i in order])
    ax.set_title("Feature importance (total gain)")
    ax.set_xlabel("gain")
    return fig


def qini_figure(tables: Mapping[str, pd.DataFrame], title: str = "Qini curve") -> Figure:
    """Qini curves (model, oracle) with the random-targeting line of the first."""
    fig, ax = _figure(title, "share targeted (highest predicted uplift first)", "incremental positives")
    for name, t in tables.items():
        ax.plot(t["share"], t["qini"], label=name)
    first = next(iter(tables.values()))
    ax.plot(first["share"], first["random"], "--", color="grey", label="random")
    ax.legend(loc="upper left")
    return fig


def recall_at_k_figure(curves: Mapping[str, Mapping[int, float]], title: str = "Recall@k") -> Figure:
    """Recall@k against k for each recommender (model, popularity, oracle)."""
    fig, ax = _figure(title, "k", "recall@k")
    for name, points in curves.items():
        ks = sorted(points)
        ax.plot(ks, [points[k] for k in ks], "o-", label=name)
    ax.legend(loc="lower right")
    return fig
