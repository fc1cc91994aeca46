"""Public data: the NSW job-training trial's experimental earnings effect (Dehejia and Wahba 1999).

`causaldata`'s ``nsw_mixtape`` (185 treated, 260 controls) ships inside its sdist; it is read by path (the
package is never imported). Dehejia and Wahba's experimental estimate on this sample is $1,794 (se 633, the
pooled-variance OLS standard error); `analyse()` reports Welch's interval, whose standard error is the
heteroscedasticity-robust HC2 one (671).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from experiments.analysis import Metric, analyse

PUBLISHED_ESTIMATE = 1794.0
PUBLISHED_SE = 633.0


@pytest.fixture(scope="module")
def nsw() -> pd.DataFrame:
    spec = importlib.util.find_spec("causaldata")
    assert spec is not None and spec.origin is not None, "causaldata is a dev dependency (pyproject)"
    path = Path(spec.origin).parent / "nsw_mixtape" / "nsw_mixtape.dta"
    frame = pd.read_stata(path)
    return frame.assign(arm=frame["treat"].map({1: "treatment", 0: "control"}))


def shares(frame: pd.DataFrame) -> dict[str, float]:
    # The trial's own split (about 42% treated): no sample-ratio mismatch by construction.
    counts = frame["arm"].value_counts(normalize=True)
    return {str(arm): float(share) for arm, share in counts.items()}


def test_nsw_experimental_earnings_effect(nsw: pd.DataFrame) -> None:
    analysis = analyse(nsw, [Metric("re78", "mean", "re78", primary=True)], expected_shares=shares(nsw))
    r = analysis.results[0]
    assert (r.n_control, r.n_arm) == (260, 185)
    assert r.mean_control == pytest.approx(4554.80, abs=0.01)
    assert r.mean_arm == pytest.approx(6349.14, abs=0.01)
    assert r.difference == pytest.approx(PUBLISHED_ESTIMATE, abs=1.0)  # 1,794.34
    assert r.ci_low < PUBLISHED_ESTIMATE < r.ci_high
    # Welch's standard error is the robust (HC2) one of the same regression; the published 633 is the classical.
    ols = smf.ols("re78 ~ treat", nsw).fit()
    assert ols.params["treat"] == pytest.approx(r.difference, rel=1e-6)
    assert ols.bse["treat"] == pytest.approx(PUBLISHED_SE, abs=0.5)
    df = stats.t.ppf(0.975, 400)  # the Welch df here is about 330: the quantile differs in the third digit
    se = (r.ci_high - r.ci_low) / 2 / df
    assert se == pytest.approx(ols.HC2_se["treat"], rel=0.005)
    # Welch's interval [474, 3115] holds the published estimate +- 1.96 x 633.
    assert r.ci_low == pytest.approx(474.0, abs=1.0)
    assert r.ci_high == pytest.approx(3114.7, abs=1.0)
    assert r.ci_low < PUBLISHED_ESTIMATE - 1.96 * PUBLISHED_SE
    assert r.ci_high > PUBLISHED_ESTIMATE + 1.96 * PUBLISHED_SE
    assert r.p_value == pytest.approx(0.0079, abs=2e-4)
    assert r.relative_lift == pytest.approx(0.394, abs=1e-3)
    assert r.significant and analysis.verdict == "significant"
    assert not analysis.srm.blocked


def test_nsw_with_cuped_on_pre_period_earnings(nsw: pd.DataFrame) -> None:
    plain, cuped = analyse(
        nsw,
        [Metric("re78", "mean", "re78"), Metric("re78_cuped", "mean", "re78", covariate="re75")],
        expected_shares=shares(nsw),
        correction="none",
    ).results
    # 1975 earnings barely predict 1978 earnings here (r = 0.085): CUPED can only shave a little.
    assert cuped.variance_reduction is not None
    assert 0.0 <= cuped.variance_reduction < 0.05
    assert cuped.variance_reduction == pytest.approx(0.006, abs=0.002)
    assert plain.ci_low < cuped.difference < plain.ci_high
    assert cuped.difference == pytest.approx(1750.2, abs=1.0)
    assert cuped.ci_high - cuped.ci_low <= plain.ci_high - plain.ci_low
