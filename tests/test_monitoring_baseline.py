"""The monitoring baseline: newest-cutoff reference, natural movement, and thresholds that ignore the calendar.

Small generated panels of customers over monthly cutoffs: an input that only ages, one that only
jitters, one with seasons, and served rows six months after the newest training cutoff, with and
without a real shift.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from models.splits import LabelledTable
from monitoring import reports
from monitoring.baseline import (
    BaselineError,
    build_baseline,
    compare_window,
    labelled_reference,
    months_between,
    pair_distance,
    reference_sample,
    select_reference,
    served_cutoff,
)
from monitoring.drift import column_drift, column_kinds, spread
from monitoring.policy import ColumnTest, DriftPolicy, FamilyMonitoring, NaturalMovement, RetrainPolicy, Triggers
from monitoring.triggers import Evidence, decide

CUTOFFS = [dt.date(2024, m, 1) for m in range(1, 13)]
SERVED = dt.date(2025, 6, 1)  # six months after the newest training cutoff
COLUMNS = ["tenure_days", "sessions", "seasonal", "channel"]
NOW = dt.datetime(2025, 6, 10, tzinfo=dt.UTC)


def _rows(day: dt.date, customers: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """The customers active at `day`: tenure ages with the calendar, sessions jitter, `seasonal` follows the month."""
    rng = np.random.default_rng(seed)
    # signed up over five years, most before the first cutoff: the population mostly ages
    signup = pd.to_datetime("2019-01-01") + pd.to_timedelta(np.arange(customers) * (1900 / customers), unit="D")
    active = signup < pd.Timestamp(day)
    n = int(active.sum())
    season = 2.0 * np.cos(2 * np.pi * day.month / 12)
    channels = np.array(["store", "web", "partner"])
    return pd.DataFrame(
        {
            "customer_key": [f"c{i:05d}" for i in np.flatnonzero(active)],
            "as_of": day,
            "tenure_days": (pd.Timestamp(day) - signup[active]).days.to_numpy(dtype=float),
            "sessions": rng.poisson(3.0 + shift, n),
            "seasonal": rng.normal(season, 1.0, n),
            "channel": rng.choice(channels, n, p=[0.5 - 0.3 * shift, 0.3 + 0.3 * shift, 0.2]),
        }
    )


def _logged(customers: int = 2500) -> pd.DataFrame:
    return pd.concat([_rows(d, customers, seed=i) for i, d in enumerate(CUTOFFS)], ignore_index=True)


def _tests(policy: DriftPolicy, columns: list[str]) -> dict[str, tuple[str, float | None]]:
    return {c: (policy.test_for(c).method, policy.test_for(c).threshold) for c in columns}


@pytest.fixture(scope="module")
def logged() -> pd.DataFrame:
    return _logged()


def _compare(logged: pd.DataFrame, current: pd.DataFrame, policy: DriftPolicy | None = None) -> object:
    policy = policy or DriftPolicy()
    kinds = column_kinds(logged, COLUMNS)
    return compare_window(logged, current, kinds, _tests(policy, COLUMNS), policy)


def test_an_input_that_only_ages_is_not_flagged_but_was_against_pooled_cutoffs(logged: pd.DataFrame) -> None:
    served = _rows(SERVED, 2500, seed=99)
    now = _compare(logged, served)
    verdicts = {c.column: c for c in now.drift.columns}  # type: ignore[attr-defined]
    assert not any(c.drifted for c in now.drift.columns), verdicts  # type: ignore[attr-defined]
    baseline = now.baseline  # type: ignore[attr-defined]
    assert baseline.reference_as_of == CUTOFFS[-1] and baseline.served_as_of == SERVED
    assert baseline.gap_months == pytest.approx(months_between(CUTOFFS[-1], SERVED)) and 5.9 < baseline.gap_months < 6.1
    tenure = verdicts["tenure_days"]
    assert tenure.score > 0.1 and tenure.allowance > tenure.score - 0.1  # ageing alone would have been "drift"
    # before issue 17: every logged cutoff pooled, no natural movement
    before = DriftPolicy(reference="all_cutoffs", natural_movement=NaturalMovement(enabled=False))
    pooled = {c.column: c for c in _compare(logged, served, before).drift.columns}  # type: ignore[attr-defined]
    assert pooled["tenure_days"].drifted and pooled["tenure_days"].allowance == 0


def test_an_input_whose_distribution_shifts_is_flagged(logged: pd.DataFrame) -> None:
    served = _rows(SERVED, 2500, seed=99, shift=0.8)
    verdicts = {c.column: c for c in _compare(logged, served).drift.columns}  # type: ignore[attr-defined]
    assert verdicts["sessions"].drifted and verdicts["channel"].drifted
    assert verdicts["channel"].method == "jensenshannon" and verdicts["sessions"].method == "wasserstein"
    assert not verdicts["tenure_days"].drifted and not verdicts["seasonal"].drifted


def test_an_input_that_only_jitters_gets_almost_no_allowance(logged: pd.DataFrame) -> None:
    baseline = _compare(logged, _rows(SERVED, 2500, seed=99)).baseline  # type: ignore[attr-defined]
    sessions = baseline.movement["sessions"]
    # the raw distance between two cutoffs' independent draws is several hundredths; the noise is taken off
    assert sessions.per_month * baseline.gap_months < 0.03
    assert baseline.movement["tenure_days"].trend * baseline.gap_months > 0.1


def test_a_seasonal_input_is_allowed_its_month_to_month_movement(logged: pd.DataFrame) -> None:
    """December to June is a trough-to-peak swing; over the year the seasonal input has no trend at all."""
    served = _rows(SERVED, 2500, seed=99)
    compared = _compare(logged, served)
    seasonal = {c.column: c for c in compared.drift.columns}["seasonal"]  # type: ignore[attr-defined]
    movement = compared.baseline.movement["seasonal"]  # type: ignore[attr-defined]
    assert seasonal.score > 3 and not seasonal.drifted
    assert movement.typical > 5 * movement.trend
    # with the trend alone (what ageing needs), the season would read as drift
    assert seasonal.score > 0.1 + movement.trend * compared.baseline.gap_months  # type: ignore[attr-defined]


def test_thresholds_come_from_the_policy(logged: pd.DataFrame) -> None:
    served = _rows(SERVED, 2500, seed=99)
    kinds = column_kinds(logged, COLUMNS)
    policy = DriftPolicy(per_column={"tenure_days": ColumnTest(method="wasserstein", threshold=0.3)})
    baseline = build_baseline(logged, served, kinds, _tests(policy, COLUMNS), policy)
    method, threshold = baseline.tests["tenure_days"]
    assert method == "wasserstein" and threshold == pytest.approx(0.3 + baseline.allowances["tenure_days"])
    assert baseline.tests["channel"][1] == pytest.approx(0.1 + baseline.allowances["channel"])
    # switched off: the policy's thresholds as they are, and the ageing input is flagged
    off = DriftPolicy(natural_movement=NaturalMovement(enabled=False))
    plain = build_baseline(logged, served, kinds, _tests(off, COLUMNS), off)
    assert plain.tests["tenure_days"] == ("wasserstein", 0.1) and not plain.allowances and not plain.movement
    assert plain.reference_as_of == CUTOFFS[-1]  # still the newest cutoff: like with like
    # the look-back bounds the cutoffs the movement is measured on
    short = DriftPolicy(natural_movement=NaturalMovement(lookback_months=3))
    recent = build_baseline(logged, served, kinds, _tests(short, COLUMNS), short)
    assert recent.cutoffs == tuple(CUTOFFS[-4:]) and recent.movement["tenure_days"].pairs == 3
    record = recent.as_dict()
    assert record["reference_as_of"] == "2024-12-01" and record["movement_cutoffs"][0] == "2024-09-01"
    assert record["columns"]["tenure_days"]["allowance"] == pytest.approx(recent.allowances["tenure_days"])
    assert record["rows_per_cutoff"]["2024-12-01"] == len(recent.reference)


def test_a_small_reference_gets_a_distance_test_and_an_explicit_p_value_test_no_allowance() -> None:
    """At most 1,000 reference values: Evidently's default would be a p-value test, to which no movement adds up."""
    small = _logged(customers=900)
    served = _rows(SERVED, 900, seed=99)
    kinds = column_kinds(small, COLUMNS)
    compared = compare_window(small, served, kinds, {}, DriftPolicy())
    baseline = compared.baseline
    assert baseline.tests["tenure_days"][0] == "wasserstein" and baseline.allowances["tenure_days"] > 0
    assert baseline.tests["channel"][0] == "jensenshannon"
    assert any("tenure_days: few reference values, wasserstein instead of a p-value test" in n for n in baseline.notes)
    verdicts = {c.column: c for c in compared.drift.columns}
    assert not any(verdicts[c].drifted for c in ("tenure_days", "sessions", "channel"))  # ageing: no drift
    named = DriftPolicy(per_column={"tenure_days": ColumnTest(method="ks")})
    explicit = build_baseline(small, served, kinds, _tests(named, COLUMNS), named)
    assert explicit.tests["tenure_days"] == ("ks", 0.05) and "tenure_days" not in explicit.allowances
    assert any("tenure_days: ks is not a distance" in n for n in explicit.notes)
    # natural movement switched off: Evidently's own choice, the p-value test
    off = DriftPolicy(natural_movement=NaturalMovement(enabled=False))
    assert build_baseline(small, served, kinds, {}, off).tests["tenure_days"] == ("ks", 0.05)


def test_one_cutoff_or_no_cutoffs_mean_no_movement(logged: pd.DataFrame) -> None:
    served = _rows(SERVED, 2500, seed=99)
    kinds = column_kinds(logged, COLUMNS)
    one = logged[logged["as_of"] == CUTOFFS[-1]]
    baseline = build_baseline(one, served, kinds, {}, DriftPolicy())
    assert not baseline.movement and any("one logged cutoff" in n for n in baseline.notes)
    legacy = build_baseline(logged.drop(columns="as_of"), served, kinds, {}, DriftPolicy())
    assert legacy.reference_as_of is None and len(legacy.reference) == len(logged) and "no cutoffs" in legacy.notes[0]
    unknown = build_baseline(logged, served.drop(columns="as_of"), kinds, {}, DriftPolicy())
    assert unknown.gap_months == 0 and not unknown.allowances and "no cutoff" in unknown.notes[0]
    with pytest.raises(BaselineError, match="no column 'sessions'"):
        build_baseline(logged.drop(columns="sessions"), served, kinds, {}, DriftPolicy())


@pytest.mark.parametrize(
    ("method", "kind", "make"),
    [
        ("wasserstein", "num", lambda rng, n, s: rng.lognormal(2 + s, 1, n)),
        ("wasserstein", "num", lambda rng, n, s: rng.poisson(2 + s, n).astype(float)),
        (
            "jensenshannon",
            "cat",
            lambda rng, n, s: rng.choice(["a", "b", "c"], n, p=[0.5 - 0.2 * s, 0.3, 0.2 + 0.2 * s]),
        ),
        ("jensenshannon", "num", lambda rng, n, s: rng.normal(s, 1, n)),  # binned (Sturges) over both sides
        ("jensenshannon", "num", lambda rng, n, s: rng.integers(0, 4 + int(s), n).astype(float)),  # shares
    ],
    ids=["wasserstein", "wasserstein-counts", "js-categories", "js-binned", "js-values"],
)
def test_the_movement_is_measured_in_the_verdicts_own_statistic(method: str, kind: str, make: object) -> None:
    rng = np.random.default_rng(3)
    first, second = make(rng, 3000, 0.0), make(rng, 2500, 1.0)  # type: ignore[operator]
    scale = spread(pd.Series(first)) if method == "wasserstein" else 1.0
    raw, noise = pair_distance(method, first, second, kind, scale, 4, np.random.default_rng(0))  # type: ignore[arg-type]
    verdict = column_drift("x", pd.Series(first), pd.Series(second), kind, method)  # type: ignore[arg-type]
    assert verdict is not None and raw == pytest.approx(verdict.score, rel=1e-9, abs=1e-12)
    same, same_noise = pair_distance(method, first, make(rng, 2500, 0.0), kind, scale, 4, np.random.default_rng(0))  # type: ignore[operator,arg-type]
    assert 0 < noise < raw and same < 3 * same_noise + 0.01  # an unchanged input moves by about its noise
    with pytest.raises(ValueError, match="not a distance"):
        pair_distance("ks", first, second, kind, scale, 1, rng)  # type: ignore[arg-type]


def test_the_reference_sample_keeps_the_newest_cutoff_and_the_same_customers_before(logged: pd.DataFrame) -> None:
    frame = logged.assign(churned=0, product_id="p1")
    frame = pd.concat([frame, frame.assign(product_id="p2")], ignore_index=True)  # one row per product
    sample = reference_sample(frame, ["sessions", "channel"], rows=1200, history_rows=300, seed=1)
    assert list(sample.columns) == ["customer_key", "as_of", "sessions", "channel"]
    counts = sample.groupby("as_of").size()
    assert counts[CUTOFFS[-1]] == 1200 and (counts.drop(CUTOFFS[-1]) == 300).all()
    assert not sample.duplicated(["customer_key", "as_of"]).any()
    # a panel: the customers drawn at an earlier cutoff are drawn again at the later ones
    first = set(sample.loc[sample["as_of"] == CUTOFFS[0], "customer_key"])
    later = set(sample.loc[sample["as_of"] == CUTOFFS[-1], "customer_key"])
    assert first <= later
    assert sample.equals(reference_sample(frame, ["sessions", "channel"], 1200, 300, seed=1))  # seeded
    assert len(reference_sample(frame.drop(columns="as_of"), ["sessions"], 500, 100)) == 500
    with pytest.raises(BaselineError, match="no column 'nps'"):
        reference_sample(frame, ["sessions", "nps"], 100, 10)
    assert len(select_reference(sample, DriftPolicy())) == 1200
    assert len(select_reference(sample, DriftPolicy(reference="all_cutoffs"))) == len(sample)


def test_the_served_cutoff_is_the_median_of_the_logged_as_of() -> None:
    frame = pd.DataFrame({"as_of": ["2025-06-01"] * 3 + ["2025-07-01"] * 2 + [None]})
    assert served_cutoff(frame) == dt.date(2025, 6, 1)
    assert served_cutoff(pd.DataFrame({"x": [1]})) is None
    assert served_cutoff(pd.DataFrame({"as_of": [None, None]})) is None


def test_the_decision_and_evidentlys_report_use_the_same_raised_thresholds(logged: pd.DataFrame) -> None:
    served = _rows(SERVED, 2500, seed=99, shift=0.8)
    kinds = column_kinds(logged, COLUMNS)
    sample = reference_sample(logged, COLUMNS, 1500, 1500)  # Evidently on a few thousand rows: seconds
    compared = compare_window(sample, served, kinds, {}, DriftPolicy())
    verdicts = {c.column: c for c in compared.drift.columns}
    assert verdicts["tenure_days"].allowance > 0 and not verdicts["tenure_days"].drifted
    snapshot = reports.evidently_drift(
        compared.baseline.reference, served, kinds, compared.baseline.tests, 0.5, with_prediction=False
    )
    assert reports.evidently_verdicts(snapshot) == {c: v.drifted for c, v in verdicts.items()}
    scores = reports.evidently_scores(snapshot)
    for column, verdict in verdicts.items():
        assert scores[column] == pytest.approx(verdict.score, rel=1e-6, abs=1e-9)
    # the trigger details name the reference and the natural movement inside a threshold
    rules = FamilyMonitoring(key_features=["sessions", "tenure_days"], triggers=Triggers(drifted_share=0.9))
    evidence = Evidence(
        family="churn", model="m", version="1", rows=len(served), min_rows=100, drift=compared.drift,
        reference=compared.baseline.describe(),
    )  # fmt: skip
    decision = decide(rules, RetrainPolicy(min_new_months=0), evidence, NOW)
    checks = {c.trigger: c for c in decision.checks}
    assert "as of 2024-12-01 + natural movement over 6.0 months" in checks["drifted_share"].detail
    assert checks["key_feature_drift"].fired and "sessions (wasserstein" in checks["key_feature_drift"].detail
    assert "natural movement" in checks["key_feature_drift"].detail


def test_a_labelled_tables_reference_uses_its_own_id_and_snapshot_columns_and_only_staged_rows(
    logged: pd.DataFrame,
) -> None:
    own = logged.rename(columns={"customer_key": "account", "as_of": "snapshot_date"}).assign(churned=0)
    newest = own["snapshot_date"] == CUTOFFS[-1]
    stage = pd.Series(np.where(newest, "unused", "train"), index=own.index)  # a split that leaves the newest out
    table = LabelledTable(own, id_column="account", label="churned", stage=stage, snapshot="snapshot_date")
    sample = labelled_reference(table, ["sessions", "channel"], rows=1000, history_rows=200)
    assert list(sample.columns) == ["customer_key", "as_of", "sessions", "channel"]
    assert sample["as_of"].max() == CUTOFFS[-2]  # the newest cutoff the model learned from, not the unused one
    assert (sample.groupby("as_of").size().drop(CUTOFFS[-2]) == 200).all()
    unsnapped = LabelledTable(own.drop(columns="snapshot_date"), "account", "churned", stage)
    assert len(labelled_reference(unsnapped, ["sessions"], rows=500, history_rows=100)) == 500
