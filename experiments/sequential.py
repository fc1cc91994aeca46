"""Always-valid confidence sequences for a difference of means, so that a daily look is safe.

The boundary is the two-sided normal-mixture boundary of Howard, Ramdas, McAuliffe and Sekhon (2021,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", eq. 14) in the parametrisation GrowthBook's
sequential mode uses. For an estimate of a difference whose variance is ``s2 / n`` after ``n`` units in total
(``s2 = n * se**2``), the half-width at level ``alpha`` is::

    sqrt(s2) * sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * log(sqrt(n rho^2 + 1) / alpha))

The mixing parameter ``rho`` is the one tuning parameter: it makes the sequence tightest at ``tuning`` units,
``rho = sqrt((-2 log alpha + log(-2 log alpha + 1)) / tuning)``. Choose ``tuning`` before the experiment starts
(the design's planned total; GrowthBook's default is 5,000): any fixed value keeps the guarantee, a value fitted
to the data does not. The guarantee is asymptotic (the variance is estimated, the estimate taken as normal), as in
GrowthBook and Spotify's confidence sequences.

All functions take NumPy arrays (or floats) and broadcast, so the calibration test runs 10,000 experiments with
their daily looks in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

DEFAULT_TUNING = 5_000
"""Units in total at which the confidence sequence is tightest when no design gives a planned total."""

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike


def mixture_rho(alpha: float, tuning: float) -> float:
    """The normal mixture's parameter that makes the boundary tightest at ``tuning`` units (Howard et al. 2021)."""
    log_term = -2.0 * np.log(alpha)
    return float(np.sqrt((log_term + np.log(log_term + 1.0)) / tuning))


def half_width(se: ArrayLike, n: ArrayLike, alpha: float, tuning: float = DEFAULT_TUNING) -> FloatArray:
    """Half-width of the always-valid interval for an estimate with standard error ``se`` after ``n`` units.

    ``n`` counts the units of both arms together; ``se`` is the usual (fixed-horizon) standard error.
    """
    se_a = np.asarray(se, dtype=float)
    n_a = np.asarray(n, dtype=float)
    rho2 = mixture_rho(alpha, tuning) ** 2
    s2 = n_a * se_a**2
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.sqrt(s2 * 2.0 * (n_a * rho2 + 1.0) / (n_a**2 * rho2) * np.log(np.sqrt(n_a * rho2 + 1.0) / alpha))
    return np.asarray(width, dtype=float)


def critical_z(n: ArrayLike, alpha: float, tuning: float = DEFAULT_TUNING) -> FloatArray:
    """The boundary in standard errors: the estimate is significant when ``|estimate| / se`` exceeds it."""
    return half_width(np.ones_like(np.asarray(n, dtype=float)), n, alpha, tuning)


def always_valid_p(
    estimate: ArrayLike, se: ArrayLike, n: ArrayLike, alpha: float, tuning: float = DEFAULT_TUNING
) -> FloatArray:
    """The smallest level at which the confidence sequence (with ``rho`` fixed by ``alpha``) excludes 0.

    ``p <= alpha`` exactly when the interval of :func:`half_width` at ``alpha`` excludes zero; a zero standard
    error with a zero estimate gives 1.
    """
    est = np.asarray(estimate, dtype=float)
    se_a = np.asarray(se, dtype=float)
    n_a = np.asarray(n, dtype=float)
    rho2 = mixture_rho(alpha, tuning) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = np.where(se_a > 0, (est / se_a) ** 2, np.where(est == 0, 0.0, np.inf))
        # half_width^2 = se^2 (n rho^2 + 1) / (n rho^2) * log((n rho^2 + 1) / p^2), solved for p.
        log_p = 0.5 * np.log(n_a * rho2 + 1.0) - 0.5 * z2 * n_a * rho2 / (n_a * rho2 + 1.0)
    return np.asarray(np.minimum(1.0, np.exp(log_p)), dtype=float)


@dataclass(frozen=True)
class Comparison:
    """One arm against control (arrays when given arrays): the difference with its interval and p-value."""

    difference: FloatArray
    se: FloatArray
    ci_low: FloatArray
    ci_high: FloatArray
    p_value: FloatArray


def compare_arms(
    mean_control: ArrayLike,
    var_control: ArrayLike,
    n_control: ArrayLike,
    mean_arm: ArrayLike,
    var_arm: ArrayLike,
    n_arm: ArrayLike,
    *,
    alpha: float,
    sequential: bool,
    tuning: float = DEFAULT_TUNING,
) -> Comparison:
    """The test `analyse()` and `simulated_power()` both run: arm minus control from per-arm means and variances.

    Fixed horizon: Welch's t interval and p-value (Welch-Satterthwaite degrees of freedom). Sequential: the
    always-valid interval of :func:`half_width` and its p-value. Variances are per unit (ddof 1).
    """
    m_c, v_c, n_c = (np.asarray(a, dtype=float) for a in (mean_control, var_control, n_control))
    m_t, v_t, n_t = (np.asarray(a, dtype=float) for a in (mean_arm, var_arm, n_arm))
    diff = m_t - m_c
    with np.errstate(divide="ignore", invalid="ignore"):
        q_c, q_t = v_c / n_c, v_t / n_t
        se = np.sqrt(q_c + q_t)
        if sequential:
            width = half_width(se, n_c + n_t, alpha, tuning)
            p = always_valid_p(diff, se, n_c + n_t, alpha, tuning)
        else:
            df = (q_c + q_t) ** 2 / (q_c**2 / (n_c - 1.0) + q_t**2 / (n_t - 1.0))
            width = stats.t.ppf(1.0 - alpha / 2.0, df) * se
            p = 2.0 * stats.t.sf(np.abs(diff) / se, df)
        # No variation in either arm: the interval is the point, p is 1 without a difference and 0 with one.
        # Too few units (an undefined se) leave everything undefined.
        width = np.where(se > 0, width, np.where(se == 0, 0.0, np.nan))
        p = np.where(se > 0, p, np.where(se == 0, np.where(diff == 0, 1.0, 0.0), np.nan))
    return Comparison(
        difference=np.asarray(diff, dtype=float),
        se=np.asarray(se, dtype=float),
        ci_low=np.asarray(diff - width, dtype=float),
        ci_high=np.asarray(diff + width, dtype=float),
        p_value=np.asarray(p, dtype=float),
    )
