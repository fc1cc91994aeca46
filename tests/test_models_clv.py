"""BG/NBD, the probability-alive baseline of non-contractual churn: checked against the paper and by simulation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.clv import BGNBD, BGNBDFitError, fit_bgnbd


def _cdnow() -> pd.DataFrame:
    # CDNOW's 2,357 customers (39 weeks), as shipped inside the lifetimes wheel (installed for its data only)
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations
    return pd.read_csv(Path(spec.submodule_search_locations[0]) / "datasets" / "cdnow_customers_summary.csv")


def test_fit_reproduces_the_papers_cdnow_estimates() -> None:
    d = _cdnow()
    model = fit_bgnbd(d["frequency"], d["recency"], d["T"])
    # Fader, Hardie & Lee (2005), "Counting your customers the easy way", section 5
    assert (model.r, model.alpha, model.a, model.b) == pytest.approx((0.243, 4.414, 0.793, 2.426), abs=2e-3)


def _simulate(model: BGNBD, n: int, age: float, horizon: float, seed: int) -> tuple[np.ndarray, ...]:
    """Customers who first bought `age` before the cutoff: (x, t_x, T, bought within the horizon after it)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(model.r, 1 / model.alpha, n)
    p = rng.beta(model.a, model.b, n)
    x, t_x, bought = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    for i in range(n):
        t, alive = 0.0, True
        while alive:
            t += rng.exponential(1 / lam[i])
            if t >= age + horizon:
                break
            if t < age:
                x[i], t_x[i] = x[i] + 1, t
            else:
                bought[i] = True
                break
            alive = rng.random() >= p[i]
    return x, t_x, np.full(n, age), bought


def test_no_purchase_probabilities_are_calibrated_on_simulated_customers() -> None:
    truth = BGNBD(r=0.8, alpha=20.0, a=0.6, b=3.0)
    x, t_x, T, bought = _simulate(truth, 4000, age=180.0, horizon=60.0, seed=1)
    fitted = fit_bgnbd(x, t_x, T)
    assert fitted.r == pytest.approx(truth.r, rel=0.2) and fitted.alpha == pytest.approx(truth.alpha, rel=0.3)
    churn = fitted.p_no_purchase(60.0, x, t_x, T)
    assert churn.mean() == pytest.approx(1 - bought.mean(), abs=0.02)
    # ranking: customers who went silent long ago are the likeliest to stay silent
    high, low = churn >= np.quantile(churn, 0.8), churn <= np.quantile(churn, 0.2)
    assert (1 - bought[high].mean()) > (1 - bought[low].mean()) + 0.3


def test_probability_alive_follows_the_history() -> None:
    model = BGNBD(r=0.24, alpha=4.4, a=0.79, b=2.43)
    # no repeat purchase: alive (dropout only follows a purchase)
    assert model.p_alive(np.array([0.0]), np.array([0.0]), np.array([30.0]))[0] == 1.0
    recent, stale = model.p_alive(np.array([5.0, 5.0]), np.array([29.0, 5.0]), np.array([30.0, 30.0]))
    assert 0 < stale < recent <= 1
    short, long = (model.p_no_purchase(h, np.array([3.0]), np.array([20.0]), np.array([30.0]))[0] for h in (7, 90))
    assert 0 < long < short < 1


def test_no_history_cannot_be_fitted() -> None:
    with pytest.raises(BGNBDFitError, match="no customer has a purchase history"):
        fit_bgnbd(np.zeros(3), np.zeros(3), np.zeros(3))
