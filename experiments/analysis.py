"""Experiment analysis: per metric and arm the difference and relative lift with intervals, SRM, multiplicity.

One row of ``units`` per experimental unit (customer): its ``arm``, the ``day`` of its first exposure (optional:
without it there is one look) and the metric columns. Every metric is reduced to per-arm sums of its columns by
day, so the final answer and the daily looks come from the same arithmetic:

- a mean or a proportion is the per-unit mean; a ratio (sum of numerators over sum of denominators) is
  linearised by the delta method, with the numerator-denominator covariance;
- CUPED: with a pre-period ``covariate``, each arm's value is adjusted by ``theta (mean x_arm - mean x)`` with
  ``theta = cov(y, x) / var(x)`` pooled within arms over all arms; the variance reduction reported is that of the
  difference's variance;
- fixed mode: Welch's interval and p-value, then ``multipletests`` (Holm by default) over all (metric, arm)
  comparisons; sequential mode: the always-valid confidence sequence of `experiments.sequential` at
  ``alpha / m`` for ``m`` comparisons (Bonferroni), valid at any daily look;
- the sample-ratio-mismatch check (chi-square of unit counts against the expected shares) blocks the verdict
  when p < 0.001; the results are still computed so a reviewer sees them.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from experiments.design import METRIC_KINDS, MetricKind
from experiments.errors import ExperimentError
from experiments.sequential import DEFAULT_TUNING, compare_arms, half_width

SRM_THRESHOLD = 0.001
"""A sample-ratio mismatch with a p-value below this blocks the verdict."""

CORRECTIONS: tuple[str, ...] = ("holm", "bonferroni", "fdr_bh", "none")
_MOMENTS = ("n", "a", "b", "aa", "bb", "ab", "x", "xx", "ax", "bx")


@dataclass(frozen=True)
class Metric:
    """A metric to analyse: a per-unit column (or a ratio's numerator and denominator), optionally CUPED."""

    name: str
    kind: MetricKind
    column: str
    denominator: str | None = None
    covariate: str | None = None
    higher_is_better: bool = True
    primary: bool = False


@dataclass(frozen=True)
class MetricResult:
    """One metric, one arm against control."""

    metric: str
    kind: MetricKind
    arm: str
    control: str
    n_control: int
    n_arm: int
    mean_control: float
    mean_arm: float
    difference: float
    ci_low: float
    ci_high: float
    relative_lift: float
    rel_ci_low: float
    rel_ci_high: float
    p_value: float
    p_adjusted: float
    significant: bool
    variance_reduction: float | None
    note: str | None


@dataclass(frozen=True)
class SrmCheck:
    """Sample-ratio mismatch: unit counts per arm against the shares the assignment should give."""

    counts: dict[str, int]
    expected_shares: dict[str, float]
    chi2: float
    p_value: float
    blocked: bool


@dataclass
class ExperimentAnalysis:
    """The whole read-out: results per (metric, arm), the SRM check, daily looks and the verdict."""

    results: list[MetricResult]
    srm: SrmCheck
    looks: pd.DataFrame
    cumulative: pd.DataFrame
    mode: Literal["fixed", "sequential"]
    alpha: float
    correction: str
    verdict: Literal["blocked", "significant", "not_significant"]
    reasons: list[str]
    sequential_tuning: float | None = None
    interval_alpha: float = field(default=0.0)
    """Level of the intervals reported: alpha (fixed) or alpha / m (sequential)."""

    def table(self) -> pd.DataFrame:
        """One row per (metric, arm)."""
        return pd.DataFrame([asdict(r) for r in self.results])

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields: NaN as None, days as ISO dates."""
        return {
            "mode": self.mode,
            "alpha": self.alpha,
            "interval_alpha": self.interval_alpha,
            "correction": self.correction,
            "sequential_tuning": self.sequential_tuning,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "srm": _plain(asdict(self.srm)),
            "results": [_plain(asdict(r)) for r in self.results],
            "looks": _records(self.looks),
            "cumulative": _records(self.cumulative),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [_plain(row) for row in frame.astype(object).to_dict(orient="records")]


# --- validation -------------------------------------------------------------------------------------------------


def _check_shares(expected_shares: Mapping[str, float], control: str) -> dict[str, float]:
    if not isinstance(expected_shares, Mapping) or len(expected_shares) < 2:
        raise ExperimentError("expected_shares: at least two arms are needed")
    for arm, share in expected_shares.items():
        if not isinstance(share, int | float) or not math.isfinite(share) or share <= 0:
            raise ExperimentError(f"expected_shares: arm {arm!r} has share {share!r}, must be > 0")
    total = float(sum(expected_shares.values()))
    if abs(total - 1.0) > 1e-6:
        raise ExperimentError(f"expected_shares: they sum to {total:g}, not 1")
    if control not in expected_shares:
        raise ExperimentError(f"control: {control!r} is not an arm of expected_shares {sorted(expected_shares)}")
    return {str(a): float(s) for a, s in expected_shares.items()}


def _numeric(units: pd.DataFrame, metric: Metric, column: str, role: str) -> pd.Series:
    label = "column" if role == "column" else f"{role} column"
    if column not in units.columns:
        raise ExperimentError(f"metric {metric.name!r}: {label} {column!r} is not in the data")
    values = units[column]
    if pd.api.types.is_bool_dtype(values):
        values = values.astype(float)
    if not pd.api.types.is_numeric_dtype(values):
        raise ExperimentError(f"metric {metric.name!r}: {label} {column!r} is not numeric ({values.dtype})")
    values = values.astype(float)
    if np.isinf(values).any():
        raise ExperimentError(f"metric {metric.name!r}: {label} {column!r} holds infinite values")
    return values


def _check_metrics(metrics: Sequence[Metric]) -> None:
    if not metrics:
        raise ExperimentError("metrics: none given")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ExperimentError(f"metrics: names repeat in {names}")
    for m in metrics:
        if m.kind not in METRIC_KINDS:
            raise ExperimentError(f"metric {m.name!r}: kind {m.kind!r} is not one of {', '.join(METRIC_KINDS)}")
        if m.kind == "ratio" and not m.denominator:
            raise ExperimentError(f"metric {m.name!r}: a ratio needs a denominator column")
        if m.kind != "ratio" and m.denominator:
            raise ExperimentError(f"metric {m.name!r}: only a ratio has a denominator ({m.denominator!r} given)")


# --- the arithmetic: per-arm, per-day sums --------------------------------------------------------------------


def _moments(frame: pd.DataFrame, arms: list[str], n_days: int) -> dict[str, np.ndarray]:
    """Cumulative sums by (arm, look): arrays of shape (arms, days)."""
    arm_code = pd.Categorical(frame["arm"], categories=arms).codes.astype(np.int64)
    cell = arm_code * n_days + frame["_j"].to_numpy(dtype=np.int64)
    a, b, x = (frame[c].to_numpy(dtype=float) for c in ("_a", "_b", "_x"))
    weights = {
        "n": np.ones_like(a),
        "a": a,
        "b": b,
        "aa": a * a,
        "bb": b * b,
        "ab": a * b,
        "x": x,
        "xx": x * x,
        "ax": a * x,
        "bx": b * x,
    }
    size = len(arms) * n_days
    return {
        name: np.cumsum(np.bincount(cell, weights=w, minlength=size).reshape(len(arms), n_days), axis=1)
        for name, w in weights.items()
    }


@dataclass
class _ArmStats:
    n: np.ndarray
    raw_mean: np.ndarray
    raw_var: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def _arm_stats(m: dict[str, np.ndarray], kind: str, cuped: bool) -> tuple[_ArmStats, np.ndarray]:
    """Per arm and look: n, the raw and (CUPED-)adjusted linearised mean and variance; and zero-denominator flags."""
    n = m["n"]
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = n - 1.0
        ma, mb, mx = m["a"] / n, m["b"] / n, m["x"] / n
        var_a = (m["aa"] - n * ma * ma) / dof
        var_b = (m["bb"] - n * mb * mb) / dof
        var_x = (m["xx"] - n * mx * mx) / dof
        cov_ab = (m["ab"] - n * ma * mb) / dof
        cov_ax = (m["ax"] - n * ma * mx) / dof
        cov_bx = (m["bx"] - n * mb * mx) / dof
        if kind == "ratio":
            value = ma / mb
            var_l = (var_a - 2.0 * value * cov_ab + value**2 * var_b) / mb**2
            cov_lx = (cov_ax - value * cov_bx) / mb
        else:
            value, var_l, cov_lx = ma, var_a, cov_ax
        var_l = np.maximum(var_l, 0.0)
        zero_denominator = (mb == 0) & (n > 0)
        if not cuped:
            return _ArmStats(n, value, var_l, value, var_l), zero_denominator
        # theta pooled within arms over all arms, per look.
        weights = np.maximum(dof, 0.0)
        theta = np.nansum(weights * cov_lx, axis=0) / np.nansum(weights * var_x, axis=0)
        theta = np.where(np.isfinite(theta), theta, 0.0)
        mx_all = m["x"].sum(axis=0) / n.sum(axis=0)
        adjusted = value - theta * (mx - mx_all)
        var_adj = np.maximum(var_l - 2.0 * theta * cov_lx + theta**2 * var_x, 0.0)
    return _ArmStats(n, value, var_l, adjusted, var_adj), zero_denominator


# --- analyse ------------------------------------------------------------------------------------------------------


def _prepare_units(units: pd.DataFrame, shares: dict[str, float]) -> pd.DataFrame:
    if not isinstance(units, pd.DataFrame) or units.empty:
        raise ExperimentError("exposures: no exposed units")
    if "arm" not in units.columns:
        raise ExperimentError("units: column 'arm' is missing")
    if units["arm"].isna().any():
        raise ExperimentError(f"arm: {int(units['arm'].isna().sum())} units have no arm")
    frame = units.copy()
    frame["arm"] = frame["arm"].astype(str)
    counts = frame["arm"].value_counts()
    for arm in counts.index:
        if arm not in shares:
            raise ExperimentError(f"arm: {arm!r} ({counts[arm]} units) is not in expected_shares {sorted(shares)}")
    for arm in shares:
        if arm not in counts.index:
            raise ExperimentError(f"arm {arm!r}: no exposed units")
    if "day" in frame.columns:
        if frame["day"].isna().any():
            raise ExperimentError(f"day: {int(frame['day'].isna().sum())} units have no day of first exposure")
        try:
            with warnings.catch_warnings():  # pandas warns before failing on text that is not a date
                warnings.simplefilter("ignore", UserWarning)
                frame["_day"] = pd.to_datetime(frame["day"]).dt.date
        except (ValueError, TypeError) as exc:
            raise ExperimentError(f"day: not dates ({exc})") from None
    else:
        frame["_day"] = None
    days = sorted(set(frame["_day"]), key=lambda d: (d is None, d))
    frame["_j"] = frame["_day"].map({d: j for j, d in enumerate(days)}).astype(int) if len(days) > 1 else 0
    return frame


def _srm(frame: pd.DataFrame, shares: dict[str, float]) -> SrmCheck:
    counts = {arm: int((frame["arm"] == arm).sum()) for arm in shares}
    observed = np.array([counts[a] for a in shares], dtype=float)
    expected = observed.sum() * np.array([shares[a] for a in shares])
    chi2, p_value = stats.chisquare(observed, expected)
    return SrmCheck(
        counts=counts,
        expected_shares=dict(shares),
        chi2=float(chi2),
        p_value=float(p_value),
        blocked=bool(p_value < SRM_THRESHOLD),
    )


def _metric_frame(frame: pd.DataFrame, metric: Metric) -> tuple[pd.DataFrame, int]:
    """The metric's columns as ``_a``, ``_b``, ``_x``, rows with a missing value dropped (their count returned)."""
    a = _numeric(frame, metric, metric.column, "column")
    b = _numeric(frame, metric, metric.denominator, "denominator") if metric.denominator else pd.Series(1.0, a.index)
    x = _numeric(frame, metric, metric.covariate, "covariate") if metric.covariate else pd.Series(0.0, a.index)
    if metric.kind == "proportion":
        bad = a.dropna()[~a.dropna().isin([0.0, 1.0])]
        if not bad.empty:
            raise ExperimentError(
                f"metric {metric.name!r}: column {metric.column!r} must hold 0/1 for a proportion"
                f" (found {bad.iloc[0]:g})"
            )
    if metric.kind == "ratio" and (b.dropna() < 0).any():
        raise ExperimentError(f"metric {metric.name!r}: denominator {metric.denominator!r} has negative values")
    out = pd.DataFrame({"arm": frame["arm"], "_j": frame["_j"], "_a": a, "_b": b, "_x": x})
    complete = out[["_a", "_b", "_x"]].notna().all(axis=1)
    return out[complete], int((~complete).sum())


def analyse(
    units: pd.DataFrame,
    metrics: Sequence[Metric],
    *,
    expected_shares: Mapping[str, float],
    control: str = "control",
    alpha: float = 0.05,
    mode: Literal["fixed", "sequential"] = "fixed",
    correction: Literal["holm", "bonferroni", "fdr_bh", "none"] = "holm",
    sequential_tuning: float | None = None,
) -> ExperimentAnalysis:
    """Analyse an experiment's units: every metric, every arm against control, the SRM check and the verdict.

    Args:
        units: one row per unit with ``arm``, ``day`` (optional) and the metric columns.
        metrics: what to measure; a primary metric decides the verdict (all metrics when none is primary).
        expected_shares: traffic share per arm as assigned (the SRM check's expectation).
        control: the arm the others are compared with.
        alpha: two-sided false-positive rate over all comparisons.
        mode: "fixed" (read once, at the planned end) or "sequential" (always-valid, read any day).
        correction: multiplicity correction of the fixed mode's p-values (sequential: Bonferroni).
        sequential_tuning: units (control plus arm) where the confidence sequence is tightest; fix it before
            the experiment (the design's ``sequential_tuning``); default 5,000.
    """
    if not isinstance(alpha, int | float) or not 0.0 < alpha < 1.0:
        raise ExperimentError(f"alpha: {alpha!r} is outside (0, 1)")
    if mode not in ("fixed", "sequential"):
        raise ExperimentError(f"mode: {mode!r} is not 'fixed' or 'sequential'")
    if correction not in CORRECTIONS:
        raise ExperimentError(f"correction: {correction!r} is not one of {', '.join(CORRECTIONS)}")
    tuning = float(sequential_tuning or DEFAULT_TUNING)
    if tuning <= 0 or not math.isfinite(tuning):
        raise ExperimentError(f"sequential_tuning: {sequential_tuning!r} must be > 0")
    shares = _check_shares(expected_shares, control)
    _check_metrics(metrics)
    frame = _prepare_units(units, shares)
    srm = _srm(frame, shares)

    arms = [control] + [a for a in shares if a != control]
    days = sorted(set(frame["_day"]), key=lambda d: (d is None, d))
    comparisons = len(metrics) * (len(arms) - 1)
    m = comparisons if correction != "none" else 1
    sequential = mode == "sequential"
    interval_alpha = alpha / m if sequential else alpha
    z_rel = float(stats.norm.ppf(1.0 - interval_alpha / 2.0))

    rows: list[dict[str, Any]] = []
    look_rows: list[dict[str, Any]] = []
    cumulative_rows: list[dict[str, Any]] = []
    for metric in metrics:
        data, dropped = _metric_frame(frame, metric)
        moments = _moments(data, arms, len(days))
        arm_stats, zero_den = _arm_stats(moments, metric.kind, metric.covariate is not None)
        if zero_den[:, -1].any():
            arm = arms[int(np.argmax(zero_den[:, -1]))]
            raise ExperimentError(
                f"metric {metric.name!r}: denominator {metric.denominator!r} sums to 0 in arm {arm!r}"
            )
        for i, arm in enumerate(arms):
            for j, day in enumerate(days):
                cumulative_rows.append(
                    {
                        "day": day,
                        "metric": metric.name,
                        "arm": arm,
                        "n": int(arm_stats.n[i, j]),
                        "mean": float(arm_stats.raw_mean[i, j]),
                    }
                )
        for i, arm in enumerate(arms[1:], start=1):
            test = compare_arms(
                arm_stats.mean[0],
                arm_stats.var[0],
                arm_stats.n[0],
                arm_stats.mean[i],
                arm_stats.var[i],
                arm_stats.n[i],
                alpha=interval_alpha,
                sequential=sequential,
                tuning=tuning,
            )
            for j, day in enumerate(days):
                look_rows.append(
                    {
                        "day": day,
                        "metric": metric.name,
                        "arm": arm,
                        "n_control": int(arm_stats.n[0, j]),
                        "n_arm": int(arm_stats.n[i, j]),
                        "difference": float(test.difference[j]),
                        "ci_low": float(test.ci_low[j]),
                        "ci_high": float(test.ci_high[j]),
                        "p_value": float(test.p_value[j]),
                    }
                )
            rows.append(
                _result_row(
                    metric, arm, control, arm_stats, i, test, dropped, sequential, interval_alpha, z_rel, tuning
                )
            )

    p_values = np.array([r["p_value"] for r in rows], dtype=float)
    finite = np.isfinite(p_values)
    adjusted = np.full_like(p_values, np.nan)
    applied: str = correction
    if sequential:
        adjusted[finite] = np.minimum(1.0, p_values[finite] * m)
        applied = f"bonferroni (sequential: alpha / {m} in the confidence sequence)" if m > 1 else "none"
    elif finite.any():
        if correction == "none":
            adjusted[finite] = p_values[finite]
        else:
            adjusted[finite] = multipletests(p_values[finite], alpha=alpha, method=correction)[1]
    results = []
    for row, p_adj in zip(rows, adjusted, strict=True):
        if sequential:
            significant = bool(row["ci_low"] > 0 or row["ci_high"] < 0)
        else:
            significant = bool(np.isfinite(p_adj) and p_adj < alpha)
        results.append(MetricResult(**row, p_adjusted=float(p_adj), significant=significant))

    verdict, reasons = _verdict(results, metrics, srm, alpha, interval_alpha, mode)
    looks = pd.DataFrame(
        look_rows,
        columns=["day", "metric", "arm", "n_control", "n_arm", "difference", "ci_low", "ci_high", "p_value"],
    )
    cumulative = pd.DataFrame(cumulative_rows, columns=["day", "metric", "arm", "n", "mean"])
    return ExperimentAnalysis(
        results=results,
        srm=srm,
        looks=looks,
        cumulative=cumulative,
        mode=mode,
        alpha=float(alpha),
        correction=applied,
        verdict=verdict,
        reasons=reasons,
        sequential_tuning=tuning if sequential else None,
        interval_alpha=interval_alpha,
    )


def _result_row(
    metric: Metric,
    arm: str,
    control: str,
    arm_stats: _ArmStats,
    i: int,
    test: Any,
    dropped: int,
    sequential: bool,
    interval_alpha: float,
    z_rel: float,
    tuning: float,
) -> dict[str, Any]:
    """The final look of one comparison, with the relative lift by the delta method."""
    notes: list[str] = []
    n_c, n_t = float(arm_stats.n[0, -1]), float(arm_stats.n[i, -1])
    m_c, m_t = float(arm_stats.mean[0, -1]), float(arm_stats.mean[i, -1])
    q_c = float(arm_stats.var[0, -1]) / n_c if n_c > 0 else math.nan
    q_t = float(arm_stats.var[i, -1]) / n_t if n_t > 0 else math.nan
    if dropped:
        notes.append(f"{dropped} units with a missing value dropped")
    if min(n_c, n_t) < 2:
        notes.append("fewer than 2 units with values in an arm: no interval")
    if metric.covariate:
        notes.append(f"CUPED on {metric.covariate!r}: means adjusted")
    if m_c == 0:
        notes.append("control mean is 0: relative lift undefined")
        rel = rel_low = rel_high = math.nan
    else:
        rel = m_t / m_c - 1.0
        rel_se = math.sqrt(q_t / m_c**2 + m_t**2 * q_c / m_c**4) if n_c > 0 and n_t > 0 else math.nan
        if sequential:
            width = float(half_width(rel_se, n_c + n_t, interval_alpha, tuning))
        else:
            width = z_rel * rel_se
        rel_low, rel_high = rel - width, rel + width
    if metric.kind == "proportion" and (m_c == 0 or m_t == 0):
        empty = [name for name, mean in ((control, m_c), (arm, m_t)) if mean == 0]
        notes.append(f"no conversions in {', '.join(repr(e) for e in empty)}")
    reduction: float | None = None
    if metric.covariate:
        raw = float(arm_stats.raw_var[0, -1]) / n_c + float(arm_stats.raw_var[i, -1]) / n_t
        reduction = 1.0 - (q_c + q_t) / raw if raw > 0 else 0.0
    return {
        "metric": metric.name,
        "kind": metric.kind,
        "arm": arm,
        "control": control,
        "n_control": int(n_c),
        "n_arm": int(n_t),
        "mean_control": m_c,
        "mean_arm": m_t,
        "difference": float(test.difference[-1]),
        "ci_low": float(test.ci_low[-1]),
        "ci_high": float(test.ci_high[-1]),
        "relative_lift": rel,
        "rel_ci_low": rel_low,
        "rel_ci_high": rel_high,
        "p_value": float(test.p_value[-1]),
        "variance_reduction": reduction,
        "note": "; ".join(notes) or None,
    }


def _verdict(
    results: list[MetricResult],
    metrics: Sequence[Metric],
    srm: SrmCheck,
    alpha: float,
    interval_alpha: float,
    mode: str,
) -> tuple[Literal["blocked", "significant", "not_significant"], list[str]]:
    reasons: list[str] = []
    if srm.blocked:
        counts = ", ".join(f"{arm} {n:,}" for arm, n in srm.counts.items())
        expected = " / ".join(f"{share:.0%}" for share in srm.expected_shares.values())
        reasons.append(
            f"sample-ratio mismatch: p = {srm.p_value:.2g} < {SRM_THRESHOLD:g} (units {counts}; expected {expected}):"
            " the assignment or the exposure log is broken, the results below are not to be trusted"
        )
    primary = {m.name for m in metrics if m.primary} or {m.name for m in metrics}
    level = f"{100 * (1 - interval_alpha):.4g}%"
    deciding = [r for r in results if r.metric in primary]
    for r in results:
        kind = "always-valid " if mode == "sequential" else ""
        direction = (
            "better"
            if (r.difference > 0) == next(m.higher_is_better for m in metrics if m.name == r.metric)
            else "worse"
        )
        if not math.isfinite(r.difference) or not math.isfinite(r.ci_low):
            reasons.append(f"{r.metric}: {r.arm} vs {r.control}: no estimate (too few units with values)")
        elif r.significant:
            reasons.append(
                f"{r.metric}: {r.arm} vs {r.control} {r.difference:+.4g} ({level} {kind}CI {r.ci_low:.4g} to"
                f" {r.ci_high:.4g}, adjusted p = {r.p_adjusted:.2g}): significant, {direction}"
            )
        else:
            reasons.append(
                f"{r.metric}: {r.arm} vs {r.control} {r.difference:+.4g} ({level} {kind}CI {r.ci_low:.4g} to"
                f" {r.ci_high:.4g}, adjusted p = {r.p_adjusted:.2g}): not significant at alpha {alpha:g}"
            )
        if r.note:
            reasons.append(f"{r.metric} / {r.arm}: {r.note}")
    if srm.blocked:
        return "blocked", reasons
    if any(r.significant for r in deciding):
        return "significant", reasons
    return "not_significant", reasons
