"""Uplift evaluation on a randomised experiment's own data: Qini curve, AUUC, the random and perfect baselines.

Units are sorted by a targeting score (highest first). For the top k units, with N_t and N_c the treated
and control totals of the whole experiment and m the mean outcome of all units,

    qini(k) = (Y_t(k) - m n_t(k)) - (Y_c(k) - m n_c(k)) * N_t / N_c

the treated outcomes among the top k minus the control outcomes among them rescaled to the treated
group's size (Radcliffe 2007), on outcomes centred at m. Centring changes no end point (qini(N) =
Y_T - Y_C N_t / N_c, the incremental conversions of treating everyone) but removes the term
m (n_t(k) - n_c(k) N_t / N_c), which is pure chance imbalance of the arms within the top k and, for a
common outcome (retention: m ~ 0.9), would swamp the signal; it also makes the curve the same, up to sign,
for an outcome and its complement (retained vs churned). The x axis is the share targeted, k / N. Units
with tied scores are one block (the curve is linear across it): ties are not ordered by chance.

- random: the straight line from 0 to qini(N) (targeting at random gains the average uplift per unit).
- perfect: the best ordering given the observed outcomes. Each unit contributes y - m when treated and
  -(y - m) N_t / N_c in control; the contributions sorted descending give the largest qini(k) any
  ordering can reach at every k. For a 0/1 outcome: treated responders first, then control
  non-responders, then treated non-responders, control responders last (the usual definition). The
  perfect curve is concave, so it lies above the random line.
- auuc: area under the qini curve (share on x, incremental conversions on y); qini: auuc minus the
  random line's area (the Qini coefficient); normalised: qini / (perfect's auuc - random's area).

Because the perfect curve is pointwise at or above any model's curve, normalised <= 1 and auuc <= the
perfect auuc hold by construction (causalml #407 and #279: users saw Qini > 1 and unstable AUUC).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from experiments.errors import ExperimentError

TARGET_SHARES = (0.1, 0.2, 0.3)


@dataclass(frozen=True)
class UpliftSummary:
    """A targeting score's Qini and AUUC against the random and perfect baselines (share on the x axis)."""

    qini: float  # area between the model's qini curve and the random line
    auuc: float  # area under the model's qini curve
    normalised: float  # qini / perfect_qini; <= 1; nan when the perfect curve is the random line
    perfect: float  # perfect model's qini (area between its curve and the random line)
    perfect_auuc: float
    random: float  # area under the random line (= total incremental / 2)
    total_incremental: float  # qini(N): Y_T - Y_C * N_t / N_c
    n: int
    n_treated: int
    n_control: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return asdict(self)


def _validate(y: Any, treated: Any, scores: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    outcome = np.asarray(y, dtype=float).ravel()
    if outcome.size == 0:
        raise ExperimentError("y: no units")
    if not np.isfinite(outcome).all():
        raise ExperimentError("y: outcomes must be finite numbers (no NaN)")
    arm = np.asarray(treated).ravel()
    if arm.shape != outcome.shape:
        raise ExperimentError(f"treated: {arm.size} values for {outcome.size} outcomes")
    try:
        arm_f = arm.astype(float)
    except (TypeError, ValueError):
        raise ExperimentError("treated: must be 0/1 (or true/false)") from None
    if not np.isin(arm_f, (0.0, 1.0)).all():
        raise ExperimentError("treated: must be 0/1 (or true/false)")
    if arm_f.sum() == 0 or arm_f.sum() == arm_f.size:
        raise ExperimentError("treated: need both treated and control units")
    for name, score in scores.items():
        s = np.asarray(score, dtype=float).ravel()
        if s.shape != outcome.shape:
            raise ExperimentError(f"score {name!r}: {s.size} values for {outcome.size} outcomes")
        if not np.isfinite(s).all():
            raise ExperimentError(f"score {name!r}: scores must be finite numbers (no NaN)")
    return outcome, arm_f.astype(bool)


def _curve_points(
    y: np.ndarray, treated: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(k, n_t(k), y_t(k), n_c(k), y_c(k)) at 0 and the end of every block of tied scores."""
    w = np.ones_like(y) if weight is None else weight
    order = np.argsort(-score, kind="stable")
    s, yo, to, wo = score[order], y[order], treated[order], w[order]
    nt, nc = np.cumsum(wo * to), np.cumsum(wo * ~to)
    yt, yc = np.cumsum(wo * yo * to), np.cumsum(wo * yo * ~to)
    k = np.cumsum(wo)
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]), len(s) - 1)  # last index of each tie block

    def at(a: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], a[ends]])

    return at(k), at(nt), at(yt), at(nc), at(yc)


def _qini_values(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    centred = y - y.mean()
    k, nt, yt, nc, yc = _curve_points(centred, treated, score)
    ratio = nt[-1] / nc[-1]
    return k / k[-1], yt - yc * ratio, float(ratio)


def _perfect_values(y: np.ndarray, treated: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    centred = y - y.mean()
    contribution = np.where(treated, centred, -centred * ratio)
    gains = np.concatenate([[0.0], np.cumsum(np.sort(contribution)[::-1])])
    return np.arange(len(gains)) / len(y), gains


def _area(x: np.ndarray, g: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (g[1:] + g[:-1]) / 2.0))


def uplift_summary(y: Any, treated: Any, score: Any) -> UpliftSummary:
    """Qini, AUUC and normalised Qini of one targeting score (see the module for the definitions)."""
    outcome, arm = _validate(y, treated, {"score": score})
    x, g, ratio = _qini_values(outcome, arm, np.asarray(score, dtype=float).ravel())
    px, pg = _perfect_values(outcome, arm, ratio)
    total = float(g[-1])
    random_area = total / 2.0
    auuc, perfect_auuc = _area(x, g), _area(px, pg)
    qini, perfect = auuc - random_area, perfect_auuc - random_area
    normalised = qini / perfect if perfect > 1e-12 * max(1.0, abs(perfect_auuc)) else math.nan
    return UpliftSummary(
        qini=qini, auuc=auuc, normalised=normalised, perfect=perfect, perfect_auuc=perfect_auuc, random=random_area,
        total_incremental=total, n=int(outcome.size), n_treated=int(arm.sum()), n_control=int((~arm).sum()),
    )  # fmt: skip


def qini_curve(y: Any, treated: Any, score: Any, *, points: int = 100) -> pd.DataFrame:
    """The model's Qini curve with the random and perfect ones, at `points` + 1 evenly spaced target shares."""
    if points < 1:
        raise ExperimentError(f"points: {points} must be at least 1")
    outcome, arm = _validate(y, treated, {"score": score})
    x, g, ratio = _qini_values(outcome, arm, np.asarray(score, dtype=float).ravel())
    px, pg = _perfect_values(outcome, arm, ratio)
    share = np.linspace(0.0, 1.0, points + 1)
    return pd.DataFrame({
        "share_targeted": share, "qini": np.interp(share, x, g), "random": share * g[-1],
        "perfect": np.interp(share, px, pg),
    })  # fmt: skip


def _incremental_at(y: np.ndarray, treated: np.ndarray, score: np.ndarray, shares: Sequence[float],
                    weight: np.ndarray | None) -> list[float]:  # fmt: skip
    """(treated rate - control rate) x targeted units, among the top share of units (nan when an arm is empty)."""
    k, nt, yt, nc, yc = _curve_points(y, treated, score, weight)
    out = []
    for share in shares:
        i = int(np.searchsorted(k, share * k[-1] - 1e-9))  # the first block end covering the share
        i = min(i, len(k) - 1)
        if nt[i] <= 0 or nc[i] <= 0:
            out.append(math.nan)
        else:
            out.append(float((yt[i] / nt[i] - yc[i] / nc[i]) * k[i]))
    return out


def compare_targeting(
    y: Any,
    treated: Any,
    scores: Mapping[str, Any],
    *,
    shares: Sequence[float] = TARGET_SHARES,
    bootstrap: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per targeting policy (score) on the same experiment, with a `random` row to beat.

    Columns: qini, auuc, normalised, and the incremental conversions if the top 10/20/30% were treated,
    each with a (Poisson) bootstrap percentile interval.

    Incremental conversions at a share: (treated rate - control rate) among the targeted units x their number.
    A `random` row gives what targeting at random earns (the experiment's average uplift x the units).
    """
    if not scores:
        raise ExperimentError("scores: give at least one targeting score")
    for share in shares:
        if not 0 < share <= 1:
            raise ExperimentError(f"shares: {share} must be in (0, 1]")
    outcome, arm = _validate(y, treated, scores)
    rng = np.random.default_rng(seed)
    weights = rng.poisson(1.0, size=(bootstrap, outcome.size)).astype(float) if bootstrap > 0 else None
    rows = []
    average = float(outcome[arm].mean() - outcome[~arm].mean())
    random_row: dict[str, Any] = {"policy": "random", "qini": 0.0, "auuc": None, "normalised": 0.0}
    for share in shares:
        random_row[f"incremental_{share:.0%}"] = average * share * outcome.size
        random_row[f"incremental_{share:.0%}_low"] = math.nan
        random_row[f"incremental_{share:.0%}_high"] = math.nan
    for name, score in scores.items():
        s = np.asarray(score, dtype=float).ravel()
        summary = uplift_summary(outcome, arm, s)
        random_row["auuc"] = summary.random
        row: dict[str, Any] = {"policy": name, "qini": summary.qini, "auuc": summary.auuc,
                               "normalised": summary.normalised}  # fmt: skip
        point = _incremental_at(outcome, arm, s, shares, None)
        draws = np.array([_incremental_at(outcome, arm, s, shares, w) for w in weights]) if weights is not None \
            else np.full((1, len(shares)), math.nan)  # fmt: skip
        for j, share in enumerate(shares):
            column = f"incremental_{share:.0%}"
            row[column] = point[j]
            finite = draws[:, j][np.isfinite(draws[:, j])]
            low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2]) if len(finite) >= 2 else (math.nan, math.nan)
            row[f"{column}_low"], row[f"{column}_high"] = float(low), float(high)
        rows.append(row)
    rows.append(random_row)
    return pd.DataFrame(rows)
