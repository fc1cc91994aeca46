"""Quasi-experiments for changes that cannot be randomised: synthetic control and difference-in-differences.

`synthetic_control` (Abadie, Diamond & Hainmueller 2010) builds the treated unit's counterfactual as a
convex combination of donor units: non-negative weights summing to 1, fitted by least squares on the
pre-period outcomes (each pre period weighted equally; covariates may join them; no nested V search).
Inference is by placebos in space: every donor in turn is treated as if it had been treated, fitted on
the other donors, and the treated unit's post/pre RMSPE ratio is ranked among theirs (the permutation
p-value). The interval for the average post-period effect comes from the placebos' average post-period
gaps, which are the estimation errors of units that were not treated: [effect - q(1 - a/2), effect - q(a/2)]
of that distribution, over the placebos whose pre-period fit is not more than 5 times worse (in RMSPE)
than the treated unit's (ADH's filter). With 38 donors a 95% interval is close to the extremes: it is
coarse by construction, and says so in `interval_method`.

`diff_in_diff` fits two-way fixed effects (unit and time dummies) by OLS with standard errors clustered
by unit (statsmodels), and an event-study regression with one lead per pre period (the last pre period
is the reference) whose joint Wald test is the pre-trend check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from experiments.errors import ExperimentError

MIN_PRE_PERIODS = 3
PLACEBO_RMSPE_FILTER = 5.0


@dataclass(frozen=True)
class SyntheticControlResult:
    """A fitted synthetic control: weights, the gap series, the effect and its placebo inference."""

    treated: str
    start: Any
    weights: dict[str, float]  # donor -> weight (>= 0, sum 1); donors with weight < 1e-6 left out
    observed: pd.Series  # the treated unit's outcome, indexed by time
    synthetic: pd.Series  # its synthetic counterpart
    gap: pd.Series  # observed - synthetic
    pre_rmspe: float
    post_rmspe: float
    average_effect: float  # mean gap over the post period
    final_effect: float  # the gap in the last period
    ci_low: float
    ci_high: float
    interval_method: str
    p_value: float | None  # placebo-in-space rank of the post/pre RMSPE ratio; None without placebos
    placebos: pd.DataFrame = field(repr=False)  # unit, pre_rmspe, post_rmspe, ratio, average_gap
    placebo_gaps: pd.DataFrame = field(repr=False)  # time x placebo unit

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary (series as {time: value})."""

        def series(s: pd.Series) -> dict[str, float]:
            return {str(k): float(v) for k, v in s.items()}

        return {
            "treated": self.treated, "start": str(self.start), "weights": self.weights,
            "pre_rmspe": self.pre_rmspe, "post_rmspe": self.post_rmspe, "average_effect": self.average_effect,
            "final_effect": self.final_effect, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "interval_method": self.interval_method, "p_value": self.p_value, "gap": series(self.gap),
            "observed": series(self.observed), "synthetic": series(self.synthetic),
            "placebos": self.placebos.to_dict(orient="records"),
        }  # fmt: skip


def convex_weights(target: np.ndarray, donors: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 minimising ||target - donors @ w||^2 (donors: periods x units).

    Solved as non-negative least squares with the sum-to-one constraint appended as a heavily weighted
    row (Lawson-Hanson, exact for the non-negativity; the sum is then 1 to ~1e-8 and renormalised): a
    thousand times faster than a general-purpose SLSQP, which matters with one fit per placebo.
    """
    n = donors.shape[1]
    if n == 1:
        return np.ones(1)
    scale = float(np.mean(np.abs(target))) or 1.0
    penalty = 1e3
    a = np.vstack([donors / scale, np.full(n, penalty)])
    b = np.append(target / scale, penalty)
    w, _ = nnls(a, b, maxiter=50 * n)
    total = float(w.sum())
    return np.asarray(w / total) if total > 0 else np.full(n, 1.0 / n)


def _rmspe(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if len(values) else math.nan


def _check_panel(panel: pd.DataFrame, treated: str, start: Any) -> tuple[pd.DataFrame, np.ndarray]:
    if not isinstance(panel, pd.DataFrame) or panel.empty:
        raise ExperimentError("panel: empty; give a wide frame, one row per period and one column per unit")
    if treated not in panel.columns:
        raise ExperimentError(f"treated: unit {treated!r} is not a column of the panel ({panel.shape[1]} units)")
    if panel.shape[1] < 3:
        raise ExperimentError("panel: need the treated unit and at least 2 donor units")
    panel = panel.sort_index()
    if panel.index.has_duplicates:
        raise ExperimentError("panel: a period appears more than once in the index")
    try:
        values = panel.apply(pd.to_numeric, errors="raise").astype(float)
    except (ValueError, TypeError) as exc:
        raise ExperimentError(f"panel: outcomes must be numbers ({exc})") from None
    missing = values.isna().sum()
    if missing.any():
        worst = missing[missing > 0]
        raise ExperimentError(
            f"panel: {int(worst.sum())} missing outcome(s), e.g. unit {worst.index[0]!r}; fill or drop them first"
        )
    try:
        pre = np.asarray(values.index < start)
    except TypeError:
        raise ExperimentError(f"start: {start!r} cannot be compared with the panel's periods") from None
    if not pre.any() or pre.all():
        raise ExperimentError(
            f"start: {start!r} is outside the panel's periods ({values.index[0]} .. {values.index[-1]}); "
            "it must leave periods before and after it"
        )
    if pre.sum() < MIN_PRE_PERIODS:
        raise ExperimentError(f"start: only {int(pre.sum())} pre-period(s); need at least {MIN_PRE_PERIODS}")
    return values, pre


def _fit_one(values: pd.DataFrame, unit: str, donors: list[str], pre: np.ndarray,
             predictors: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Weights for `unit` from `donors` and its gap series; `predictors` (rows x units, standardised) join the fit."""
    y = values[unit].to_numpy()
    pool = values[donors].to_numpy()
    target, base = y[pre], pool[pre]
    if predictors is not None:
        target = np.concatenate([target, predictors[unit].to_numpy()])
        base = np.vstack([base, predictors[donors].to_numpy()])
    w = convex_weights(target, base)
    return w, y - pool @ w


def _predictors(values: pd.DataFrame, pre: np.ndarray, covariates: pd.DataFrame | None) -> pd.DataFrame | None:
    """Pre-period outcomes and covariates as rows x units, each row divided by its sd across units (equal V)."""
    if covariates is None:
        return None
    if not isinstance(covariates, pd.DataFrame) or covariates.empty:
        raise ExperimentError("covariates: give a frame indexed by unit, one column per predictor")
    covariates = covariates.copy()
    covariates.index = [str(u) for u in covariates.index]
    missing = [u for u in values.columns if u not in covariates.index]
    if missing:
        raise ExperimentError(f"covariates: unit {missing[0]!r} has no row ({len(missing)} unit(s) missing)")
    try:
        numbers = covariates.loc[list(values.columns)].apply(pd.to_numeric, errors="raise").astype(float)
    except (ValueError, TypeError) as exc:
        raise ExperimentError(f"covariates: values must be numbers ({exc})") from None
    if numbers.isna().any().any():
        column = numbers.columns[numbers.isna().any()][0]
        raise ExperimentError(f"covariates: column {column!r} has missing values")
    rows = pd.concat([values[pre], numbers.T], axis=0)
    sd = rows.std(axis=1).replace(0.0, 1.0)
    return rows.div(sd, axis=0)


def synthetic_control(
    panel: pd.DataFrame,
    treated: str,
    start: Any,
    *,
    placebos: bool = True,
    alpha: float = 0.05,
    covariates: pd.DataFrame | None = None,
) -> SyntheticControlResult:
    """Fit a synthetic control for `treated` from the other columns of a wide panel (periods x units).

    `start` is the first treated period: periods before it fit the weights. With `placebos`, every donor
    is refitted as a fake treated unit for the permutation p-value and the interval (see the module).
    `covariates` (indexed by unit, one column per predictor, e.g. pre-period income) join the pre-period
    outcomes as predictors; every predictor row is then divided by its sd across units and weighted equally
    (no nested search for V).
    """
    if not 0 < alpha < 1:
        raise ExperimentError(f"alpha: {alpha} must be between 0 and 1")
    values, pre = _check_panel(panel, treated, start)
    donors = [str(c) for c in values.columns if c != treated]
    values.columns = [str(c) for c in values.columns]
    treated = str(treated)
    predictors = _predictors(values, pre, covariates)
    w, gap = _fit_one(values, treated, donors, pre, predictors)
    post = ~pre
    pre_rmspe, post_rmspe = _rmspe(gap[pre]), _rmspe(gap[post])
    average = float(gap[post].mean())
    rows: list[dict[str, Any]] = []
    gaps: dict[str, np.ndarray] = {}
    if placebos:
        for unit in donors:
            others = [d for d in donors if d != unit]
            _, placebo_gap = _fit_one(values, unit, others, pre, predictors)
            gaps[unit] = placebo_gap
            pr, po = _rmspe(placebo_gap[pre]), _rmspe(placebo_gap[post])
            rows.append({"unit": unit, "pre_rmspe": pr, "post_rmspe": po, "ratio": po / pr if pr > 0 else math.inf,
                         "average_gap": float(placebo_gap[post].mean())})  # fmt: skip
    table = pd.DataFrame(rows, columns=["unit", "pre_rmspe", "post_rmspe", "ratio", "average_gap"])
    p_value: float | None = None
    ci_low = ci_high = math.nan
    method = "none (no placebos)"
    if placebos:
        ratio = post_rmspe / pre_rmspe if pre_rmspe > 0 else math.inf
        p_value = float((1 + int((table["ratio"] >= ratio).sum())) / (1 + len(table)))
        kept = table[table["pre_rmspe"] <= PLACEBO_RMSPE_FILTER * pre_rmspe]["average_gap"].to_numpy()
        if len(kept) >= 2:
            lo, hi = np.quantile(kept, [alpha / 2, 1 - alpha / 2])
            ci_low, ci_high = average - float(hi), average - float(lo)
        method = (
            f"placebo-in-space: the average effect minus the {alpha / 2:g} and {1 - alpha / 2:g} quantiles of "
            f"{len(kept)} placebos' average post-period gaps (placebos with pre-RMSPE <= "
            f"{PLACEBO_RMSPE_FILTER:g} x the treated unit's)"
        )
    synthetic = values[treated] - gap
    return SyntheticControlResult(
        treated=treated, start=start,
        weights={d: float(x) for d, x in sorted(zip(donors, w, strict=True), key=lambda t: -t[1]) if x >= 1e-6},
        observed=values[treated], synthetic=synthetic, gap=pd.Series(gap, index=values.index, name="gap"),
        pre_rmspe=pre_rmspe, post_rmspe=post_rmspe, average_effect=average, final_effect=float(gap[-1]),
        ci_low=ci_low, ci_high=ci_high, interval_method=method, p_value=p_value, placebos=table,
        placebo_gaps=pd.DataFrame(gaps, index=values.index),
    )  # fmt: skip


def long_to_wide(frame: pd.DataFrame, *, unit: str, time: str, outcome: str) -> pd.DataFrame:
    """A long frame (unit, time, outcome) as the wide panel `synthetic_control` takes."""
    for name, column in (("unit", unit), ("time", time), ("outcome", outcome)):
        if column not in frame.columns:
            raise ExperimentError(f"{name}: column {column!r} is not in the data")
    if frame.duplicated([unit, time]).any():
        raise ExperimentError(f"{time}: a unit has more than one row for a period")
    return frame.pivot(index=time, columns=unit, values=outcome)


# --- difference-in-differences -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DidResult:
    """A two-way fixed-effects difference-in-differences estimate with its pre-trend check."""

    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    n_units: int
    n_treated: int
    n_periods: int
    n_obs: int
    pre_trend_p: float | None  # joint Wald test that every lead is 0; None with fewer than 2 pre periods
    leads: pd.DataFrame  # event study: time, relative (periods to start), estimate, ci_low, ci_high
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "estimate": self.estimate, "se": self.se, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "p_value": self.p_value, "n_units": self.n_units, "n_treated": self.n_treated,
            "n_periods": self.n_periods, "n_obs": self.n_obs, "pre_trend_p": self.pre_trend_p,
            "leads": self.leads.to_dict(orient="records"), "notes": self.notes,
        }  # fmt: skip


def _binary(frame: pd.DataFrame, column: str, field_name: str) -> pd.Series:
    values = frame[column]
    if values.isna().any():
        raise ExperimentError(f"{field_name}: column {column!r} has missing values")
    if pd.api.types.is_bool_dtype(values):
        return values.astype(int)
    if not pd.api.types.is_numeric_dtype(values) or not set(pd.unique(values)) <= {0, 1}:
        raise ExperimentError(f"{field_name}: column {column!r} must hold 0/1 (or true/false)")
    return values.astype(int)


def diff_in_diff(
    frame: pd.DataFrame, *, unit: str, time: str, outcome: str, treated: str, post: str, alpha: float = 0.05
) -> DidResult:
    """Difference-in-differences on a long frame: outcome ~ treated x post + unit + time, SEs clustered by unit.

    `treated` marks the units that are ever treated (constant per unit), `post` the periods from the change
    on (constant per period). The event study replaces treated x post by treated x each period (the last
    pre period is the reference); its pre-period coefficients are the leads, tested jointly.
    """
    import statsmodels.api as sm

    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise ExperimentError("frame: empty; give one row per unit and period")
    for name, column in (("unit", unit), ("time", time), ("outcome", outcome), ("treated", treated), ("post", post)):
        if column not in frame.columns:
            raise ExperimentError(f"{name}: column {column!r} is not in the data")
    data = frame[list(dict.fromkeys([unit, time, outcome, treated, post]))].copy()
    if data[[unit, time]].isna().any().any():
        raise ExperimentError(f"{unit}: unit or time is missing in some rows")
    y = pd.to_numeric(data[outcome], errors="coerce")
    if y.isna().any():
        raise ExperimentError(f"outcome: column {outcome!r} has {int(y.isna().sum())} missing or non-numeric value(s)")
    data[outcome] = y.astype(float)
    data[treated] = _binary(data, treated, "treated")
    data[post] = _binary(data, post, "post")
    if data.duplicated([unit, time]).any():
        raise ExperimentError("time: a unit has more than one row for a period")
    if (data.groupby(unit)[treated].nunique() > 1).any():
        raise ExperimentError(f"treated: column {treated!r} must be constant within a unit (ever treated)")
    if (data.groupby(time)[post].nunique() > 1).any():
        raise ExperimentError(f"post: column {post!r} must be constant within a period")
    n_treated = int(data.groupby(unit)[treated].first().sum())
    n_units = int(data[unit].nunique())
    if n_treated == 0 or n_treated == n_units:
        raise ExperimentError("treated: need both treated and untreated units")
    periods = sorted(data[time].unique())
    post_of = data.groupby(time)[post].first()
    pre_periods = [t for t in periods if not post_of[t]]
    post_periods = [t for t in periods if post_of[t]]
    if not pre_periods or not post_periods:
        raise ExperimentError("post: need periods both before and after the change")
    notes: list[str] = []
    if n_units < 20:
        notes.append(f"only {n_units} clusters (units): cluster-robust standard errors are unreliable below ~20-30")

    unit_d = pd.get_dummies(data[unit].astype(str), prefix="u", drop_first=True, dtype=float)
    time_d = pd.get_dummies(data[time].astype(str), prefix="t", drop_first=True, dtype=float)
    groups = pd.factorize(data[unit])[0]
    did = (data[treated] * data[post]).astype(float).rename("did")
    design = pd.concat([pd.Series(1.0, index=data.index, name="const"), did, unit_d, time_d], axis=1)
    fit = sm.OLS(data[outcome], design).fit(cov_type="cluster", cov_kwds={"groups": groups})
    z = float(fit.params["did"])
    se = float(fit.bse["did"])
    low, high = fit.conf_int(alpha=alpha).loc["did"]

    reference = pre_periods[-1]
    event_cols = {}
    for t in periods:
        if t == reference:
            continue
        event_cols[f"e_{t}"] = ((data[time] == t) & (data[treated] == 1)).astype(float)
    events = pd.DataFrame(event_cols, index=data.index)
    event_fit = sm.OLS(data[outcome], pd.concat([design.drop(columns="did"), events], axis=1)).fit(
        cov_type="cluster", cov_kwds={"groups": groups}
    )
    intervals = event_fit.conf_int(alpha=alpha)
    lead_rows = []
    for i, t in enumerate(periods):
        name = f"e_{t}"
        relative = i - periods.index(reference) - 1
        if t == reference:
            lead_rows.append({"time": t, "relative": relative, "estimate": 0.0, "ci_low": 0.0, "ci_high": 0.0})
        else:
            low_t, high_t = intervals.loc[name]
            lead_rows.append({"time": t, "relative": relative, "estimate": float(event_fit.params[name]),
                              "ci_low": float(low_t), "ci_high": float(high_t)})  # fmt: skip
    leads = [f"e_{t}" for t in pre_periods[:-1]]
    pre_trend_p: float | None = None
    if leads:
        restriction = np.zeros((len(leads), len(event_fit.params)))
        for row, name in enumerate(leads):
            restriction[row, list(event_fit.params.index).index(name)] = 1.0
        test = event_fit.wald_test(restriction, scalar=True)
        pre_trend_p = float(test.pvalue)
        if pre_trend_p < alpha:
            notes.append(f"pre-trend check failed: the leads are jointly non-zero (p = {pre_trend_p:.3g} < {alpha})")
    else:
        notes.append("one pre period: no pre-trend check possible")
    return DidResult(
        estimate=z, se=se, ci_low=float(low), ci_high=float(high), p_value=float(fit.pvalues["did"]),
        n_units=n_units, n_treated=n_treated, n_periods=len(periods), n_obs=len(data), pre_trend_p=pre_trend_p,
        leads=pd.DataFrame(lead_rows), notes=notes,
    )  # fmt: skip
