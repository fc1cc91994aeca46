"""Bias audits: a model's decisions and errors per sensitive group, with Fairlearn's MetricFrame.

Pure functions over the scored test rows and the customers' sensitive attributes (joined
for the audit only). Groups smaller than the policy's minimum are reported with their
numbers but left out of the between-group summaries, which are what the gate judges.

Calibration enters as a disparity between groups, `calibration_ratio`: each group's
observed rate over its mean prediction (O/E), and the smallest O/E over the largest. A
model that is off by the same factor for everyone (the base rate moved after training)
has a ratio of 1 and is judged by the gate's separate, overall calibration check; a model
that under-predicts one group relative to the others has a ratio below 1. The ratio is
scale-free on purpose: churn and purchases are rare, and a group with a base rate of 0.03
and one with 0.15 missed by the same 20% have gaps of 0.006 and 0.03, which an absolute
difference would call a disparity and a ratio does not. Its noise is that of groups whose
outcomes follow the model's predictions scaled by the overall O/E (no disparity), from
their sizes and predicted rates (see `models.evaluation.calibration_in_the_large`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import precision_score, roc_auc_score

from governance.policy import SensitiveFeature
from models import evaluation as ev

UNKNOWN = "unknown"


@dataclass
class FeatureAudit:
    """One sensitive feature (or intersection): per-group numbers and the between-group summaries."""

    feature: str
    groups: pd.DataFrame  # one row per group: rows, gated, then the metrics
    summary: dict[str, float] = field(default_factory=dict)
    # metric -> its standard error from the groups' sizes (sampling noise the gate allows for)
    noise: dict[str, float] = field(default_factory=dict)
    # metric -> the groups at either end: (lowest group, its value, highest group, its value)
    extremes: dict[str, tuple[str, float, str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes None)."""
        groups = self.groups.reset_index().astype(object).where(self.groups.reset_index().notna(), None)
        return {
            "feature": self.feature,
            "groups": groups.to_dict(orient="records"),
            "summary": {k: _finite(v) for k, v in self.summary.items()},
            "noise": {k: _finite(v) for k, v in self.noise.items()},
            "extremes": {k: [lo, _finite(lv), hi, _finite(hv)] for k, (lo, lv, hi, hv) in self.extremes.items()},
        }


@dataclass
class Audit:
    """A model's whole audit on its test rows."""

    family: str
    rows: int
    selection: str  # how a row counts as selected, in words
    min_group_size: int
    features: list[FeatureAudit]
    # all rows: observed rate, mean prediction, their ratio (the factor groups are compared after)
    overall: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for `audit.json` and the model card."""
        return {
            "family": self.family,
            "rows": self.rows,
            "selection": self.selection,
            "min_group_size": self.min_group_size,
            "overall": {k: _finite(v) for k, v in self.overall.items()},
            "features": [f.to_dict() for f in self.features],
        }


def _finite(v: float) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def age_band(birth: pd.Series, on: pd.Series, edges: Sequence[int]) -> pd.Series:
    """'<25', '25-34', ..., '65+' from birth dates at the given dates; 'unknown' where the birth date is."""
    born = pd.to_datetime(birth, errors="coerce")
    at = pd.to_datetime(on, errors="coerce")
    years = (at - born).dt.days / 365.25
    labels = [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]
    bands = pd.cut(years, bins=[-np.inf, *edges, np.inf], right=False, labels=labels)
    return bands.astype(object).where(years.notna(), UNKNOWN).astype(str)


def sensitive_attributes(
    rows: pd.DataFrame,
    golden: pd.DataFrame,
    definitions: Mapping[str, SensitiveFeature],
    id_column: str = "customer_key",
    snapshot: str | None = None,
) -> pd.DataFrame:
    """Each test row's sensitive attributes (as strings, 'unknown' where missing), aligned with `rows`.

    An attribute whose column is absent is 'unknown' throughout (the fairness check then
    fails as not auditable, unless waived).

    `golden` is the identity store's golden records (customer_key and attributes); a
    feature-sourced attribute is read from `rows` itself. Ages are taken at the row's
    snapshot date (today when the rows have none).
    """
    keyed = rows[[id_column]].merge(
        golden.rename(columns={"customer_key": id_column}), on=id_column, how="left", validate="many_to_one"
    )
    on = rows[snapshot] if snapshot and snapshot in rows.columns else pd.Series(dt.date.today(), index=rows.index)
    out = {}
    for name, spec in definitions.items():
        source = keyed if spec.source == "golden_records" else rows
        if spec.column not in source.columns:  # e.g. a user's own table: nothing to audit by, and the gate says so
            out[name] = np.full(len(rows), UNKNOWN, dtype=object)
            continue
        values = source[spec.column].reset_index(drop=True)
        if spec.age_bands:
            out[name] = age_band(values, on.reset_index(drop=True), spec.age_bands).to_numpy()
        else:
            out[name] = values.astype(object).where(values.notna(), UNKNOWN).astype(str).to_numpy()
    return pd.DataFrame(out, index=rows.index)


def with_intersections(
    attributes: pd.DataFrame, features: Sequence[str], intersections: Sequence[Sequence[str]]
) -> pd.DataFrame:
    """The audited columns: each feature, and each intersection as 'a×b' with values 'x|y'."""
    out = attributes[list(features)].copy()
    for group in intersections:
        out["×".join(group)] = attributes[list(group)].astype(str).agg("|".join, axis=1)
    return out


def _auc(y_true: np.ndarray, y_score: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    if np.unique(y_true).size < 2:
        return float("nan")
    return float(roc_auc_score(y_true, y_score, sample_weight=sample_weight))


def _mean_pred(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    return float(np.average(np.asarray(y_pred, dtype=float), weights=sample_weight))


def _mean_true(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    return float(np.average(np.asarray(y_true, dtype=float), weights=sample_weight))


def _precision(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    return float(precision_score(y_true, y_pred, zero_division=0, sample_weight=sample_weight))


def _rows(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(len(y_true))


Metric = Callable[..., float]
_ON_DECISIONS: dict[str, Metric] = {
    "selection_rate": selection_rate,
    "tpr": true_positive_rate,
    "fpr": false_positive_rate,
    "precision": _precision,
}
_ON_SCORES: dict[str, Metric] = {"auc": _auc, "mean_score": _mean_pred, "observed_rate": _mean_true}


def _frame(
    metrics: dict[str, Metric], y: np.ndarray, pred: np.ndarray, groups: pd.Series, weight: np.ndarray | None
) -> pd.DataFrame:
    params = {name: {"sample_weight": weight} for name in metrics} if weight is not None else None
    mf = MetricFrame(metrics=metrics, y_true=y, y_pred=pred, sensitive_features=groups, sample_params=params)
    return pd.DataFrame(mf.by_group)


# The count each rate is a share of: its binomial standard error is sqrt(p (1 - p) / n).
_DENOMINATOR = {"selection_rate": "rows", "tpr": "positives", "fpr": "negatives", "precision": "selected",
                "hit_rate": "rows", "fallback_share": "rows"}  # fmt: skip


def _standard_error(groups: pd.DataFrame, metric: str, group: str) -> float:
    value = float(groups[metric].astype(float)[group])
    if metric == "auc":  # Hanley & McNeil (1982)
        n1, n0 = float(groups["positives"].astype(float)[group]), float(groups["negatives"].astype(float)[group])
        q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
        var = (value * (1 - value) + (n1 - 1) * (q1 - value**2) + (n0 - 1) * (q2 - value**2)) / max(n1 * n0, 1)
        return float(np.sqrt(max(var, 0.0)))
    column = _DENOMINATOR.get(metric)
    if column is None:
        return 0.0  # e.g. coverage, measured on equal-sized samples: no binomial error to allow for
    n = float(groups[column].astype(float)[group])
    return float(np.sqrt(value * (1 - value) / n)) if n > 0 else float("inf")


def _spread(groups: pd.DataFrame, metric: str) -> tuple[float, float, tuple[str, float, str, float], float, float]:
    """Largest - smallest, smallest / largest, the two groups, and the standard errors of the difference and ratio.

    Over the gated groups with a value.
    """
    values = groups.loc[groups["gated"], metric].astype(float).dropna()
    if len(values) < 2:
        return float("nan"), float("nan"), ("", float("nan"), "", float("nan")), float("nan"), float("nan")
    lo, hi = values.idxmin(), values.idxmax()
    se_lo, se_hi = _standard_error(groups, metric, str(lo)), _standard_error(groups, metric, str(hi))
    ratio = values[lo] / values[hi] if values[hi] > 0 else float("nan")
    se_ratio = (
        ratio * np.sqrt((se_lo / max(values[lo], 1e-12)) ** 2 + (se_hi / values[hi]) ** 2)
        if values[hi] > 0
        else float("nan")
    )
    ends = (str(lo), float(values[lo]), str(hi), float(values[hi]))
    return float(values[hi] - values[lo]), float(ratio), ends, float(np.hypot(se_lo, se_hi)), float(se_ratio)


def _counts(y: np.ndarray, pred: np.ndarray, groups: pd.Series) -> pd.DataFrame:
    frame = pd.DataFrame({"group": groups.to_numpy(), "y": y, "sel": pred})
    out = frame.groupby("group").agg(positives=("y", "sum"), selected=("sel", "sum"), rows=("y", "size"))
    out["negatives"] = out["rows"] - out["positives"]
    out.index = out.index.astype(str)
    return out[["positives", "negatives", "selected"]].astype(float)


def _gated(table: pd.DataFrame, min_group_size: int) -> pd.Series:
    """Big enough, and not 'unknown' on any part of the group (an intersection's too)."""
    known = pd.Series([UNKNOWN not in str(g).split("|") for g in table.index], index=table.index)
    return (table["rows"] >= min_group_size) & known


def _calibration_ratio(
    table: pd.DataFrame, noise: Mapping[str, float]
) -> tuple[float, tuple[str, float, str, float], float]:
    """Smallest / largest O/E of the gated groups, the two groups, and the ratio's noise under no disparity.

    Under that null each group's O/E is the overall factor c, so the ratio is 1 with the
    standard error sqrt(rse_lo^2 + rse_hi^2), rse = a group's O/E standard error over c.
    """
    values = table.loc[table["gated"], "observed_to_predicted"].astype(float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), ("", float("nan"), "", float("nan")), float("nan")
    lo, hi = str(values.idxmin()), str(values.idxmax())
    ratio = float(values[lo] / values[hi]) if values[hi] > 0 else float("nan")
    return ratio, (lo, float(values[lo]), hi, float(values[hi])), float(np.hypot(noise[lo], noise[hi]))


def _relative_noise(
    y: np.ndarray, score: np.ndarray, weight: np.ndarray | None, groups: pd.Series, factor: float
) -> dict[str, float]:
    """Each group's O/E standard error relative to `factor` (the O/E every group has if none is singled out)."""
    out = {}
    labels = groups.to_numpy()
    for group in pd.unique(labels):
        member = labels == group
        w = None if weight is None else weight[member]
        calibration = ev.calibration_in_the_large(y[member], score[member], w, factor)
        out[str(group)] = calibration.se_ratio / factor if factor > 0 else float("nan")
    return out


def audit_classifier(
    family: str,
    y: np.ndarray,
    score: np.ndarray,
    selected: np.ndarray,
    audited: pd.DataFrame,
    min_group_size: int,
    selection: str,
    weight: np.ndarray | None = None,
    outcome_known: bool = True,
) -> Audit:
    """Per-group selection rate, TPR, FPR, precision, AUC and calibration, and their between-group spreads.

    `audited`: one column per sensitive feature or intersection, aligned with `y`.
    `outcome_known=False` (e.g. an uplift model, whose per-row effect is never observed)
    audits who gets selected only. Each spread carries its standard error, from the
    groups' sizes, so the gate can tell a real gap from sampling noise.
    """
    y = np.asarray(y, dtype=int)
    pred = np.asarray(selected, dtype=int)
    s = np.asarray(score, dtype=float)
    on_decisions = _ON_DECISIONS if outcome_known else {"selection_rate": selection_rate}
    on_scores = _ON_SCORES if outcome_known else {"mean_score": _mean_pred}
    overall: dict[str, float] = {}
    if outcome_known and len(y):
        whole = ev.calibration_in_the_large(y, s, weight)
        overall = {"observed_rate": whole.observed, "mean_score": whole.predicted, "observed_to_predicted": whole.ratio}
    features = []
    for name in audited.columns:
        groups_of = audited[name].astype(str).reset_index(drop=True)
        table = pd.concat(
            [
                _frame({"rows": _rows}, y, pred, groups_of, None),
                _frame(on_decisions, y, pred, groups_of, weight),
                _frame(on_scores, y, s, groups_of, weight),
            ],
            axis=1,
        )
        table.index = table.index.astype(str)
        table.index.name = "group"
        table = table.join(_counts(y, pred, groups_of))
        table.insert(1, "gated", _gated(table, min_group_size))
        audit = FeatureAudit(name, table)
        diff, ratio, ends, se_diff, se_ratio = _spread(table, "selection_rate")
        audit.summary.update(demographic_parity_difference=diff, demographic_parity_ratio=ratio)
        audit.noise.update(demographic_parity_difference=se_diff, demographic_parity_ratio=se_ratio)
        audit.extremes.update(demographic_parity_difference=ends, demographic_parity_ratio=ends)
        if outcome_known:
            table["calibration_gap"] = table["observed_rate"] - table["mean_score"]
            for metric in ("tpr", "fpr", "precision", "auc"):
                diff, _, ends, se_diff, _ = _spread(table, metric)
                audit.summary[f"{metric}_difference"], audit.noise[f"{metric}_difference"] = diff, se_diff
                audit.extremes[f"{metric}_difference"] = ends
            eo = "fpr" if audit.summary["fpr_difference"] > audit.summary["tpr_difference"] else "tpr"
            audit.summary["equalized_odds_difference"] = audit.summary[f"{eo}_difference"]
            audit.noise["equalized_odds_difference"] = audit.noise[f"{eo}_difference"]
            audit.extremes["equalized_odds_difference"] = audit.extremes[f"{eo}_difference"]
            predicted = table["mean_score"].astype(float)
            table["observed_to_predicted"] = (table["observed_rate"].astype(float) / predicted).where(predicted > 0)
            factor = overall.get("observed_to_predicted", float("nan"))
            noise = _relative_noise(y, s, weight, groups_of, factor)
            ratio, ends, se_ratio = _calibration_ratio(table, noise)
            audit.summary["calibration_ratio"], audit.noise["calibration_ratio"] = ratio, se_ratio
            audit.extremes["calibration_ratio"] = ends
        features.append(audit)
    return Audit(family, len(y), selection, min_group_size, features, overall)


def audit_recommender(
    hits: np.ndarray,
    fallback: np.ndarray,
    recommended: Sequence[Sequence[str]],
    audited: pd.DataFrame,
    catalogue_size: int,
    min_group_size: int,
    seed: int = 0,
) -> Audit:
    """Per-group hit rate, share served by the popularity fallback, and catalogue coverage (exposure).

    Coverage grows with a group's size, so it is measured on `min_group_size` customers
    drawn from each gated group: groups are compared on equal footing.
    """
    hits = np.asarray(hits, dtype=float)
    fallback = np.asarray(fallback, dtype=float)
    rng = np.random.default_rng(seed)
    features = []
    for name in audited.columns:
        groups_of = audited[name].astype(str).reset_index(drop=True)
        table = _frame(
            {"rows": _rows, "hit_rate": _mean_true, "fallback_share": _mean_pred}, hits, fallback, groups_of, None
        )
        table.index = table.index.astype(str)
        table.index.name = "group"
        table.insert(1, "gated", _gated(table, min_group_size))
        coverage = {}
        for group in table.index:
            members = np.flatnonzero(groups_of.to_numpy() == group)
            if len(members) >= min_group_size:
                members = rng.choice(members, size=min_group_size, replace=False)
            items = {item for i in members.tolist() for item in recommended[i]}
            coverage[group] = len(items) / catalogue_size if catalogue_size else float("nan")
        table["coverage"] = pd.Series(coverage)
        audit = FeatureAudit(name, table)
        diff, ratio, ends, se_diff, se_ratio = _spread(table, "hit_rate")
        audit.summary.update(hit_rate_ratio=ratio, hit_rate_difference=diff)
        audit.noise.update(hit_rate_ratio=se_ratio, hit_rate_difference=se_diff)
        audit.extremes.update(hit_rate_ratio=ends, hit_rate_difference=ends)
        _, ratio, ends, _, se_ratio = _spread(table, "coverage")
        audit.summary["coverage_ratio"], audit.noise["coverage_ratio"], audit.extremes["coverage_ratio"] = (
            ratio,
            se_ratio,
            ends,
        )
        diff, _, ends, se_diff, _ = _spread(table, "fallback_share")
        audit.summary["fallback_share_difference"], audit.noise["fallback_share_difference"] = diff, se_diff
        audit.extremes["fallback_share_difference"] = ends
        features.append(audit)
    return Audit("recommendation", len(hits), "the top-k list after the business rules", min_group_size, features)
