"""The retention-offer analysis against the generator's truth: does the reported interval hold the true effect?

The synthetic world knows, for every customer of its retention-offer test, the probability of
churning within the test's window without the offer and with it (`_truth/treatment_effect.parquet`:
`p_churn_if_control`, `p_churn_if_treated`). The estimand is the mean true effect of the offer on
churn over the test's customers, mean(p_treated - p_control) (negative: the offer keeps customers).

Coverage: 200 resampled experiments on the same customers. Seed s redraws the assignment (50/50)
and each customer's outcome from their true probability in the drawn arm, and the experiment is
analysed by `experiments.analysis.analyse` (fixed horizon, alpha 0.05) without and with the CUPED
covariate. The share of the 200 intervals holding the estimand is the coverage (target >= 0.93);
CUPED must narrow the mean interval. The covariate is the CUPAC prediction fitted, cross-fitted, on
the observed test's outcomes: it is a fixed function of pre-period features, independent of the
redrawn assignments and outcomes, so it is a valid covariate for every resampled experiment.

Read by evaluation only (tests, the demo, benchmarks), never by an analysis a user acts on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.errors import ExperimentError
from experiments.units import OFFER_METRIC

COVERAGE_TARGET = 0.93
SIMULATIONS = 200
TRUTH_FILE = "treatment_effect.parquet"
RECORDS_FILE = "source_records.parquet"


def read_truth(truth_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The truth's treatment table and its record -> person map (ExperimentError naming the missing file)."""
    effect, records = truth_dir / TRUTH_FILE, truth_dir / RECORDS_FILE
    for path in (effect, records):
        if not path.is_file():
            raise ExperimentError(f"truth: no {path.name} in {truth_dir} (a generated world's _truth folder)")
    columns = ["person_id", "in_test", "treated", "p_churn_if_control", "p_churn_if_treated", "true_uplift"]
    return pd.read_parquet(effect, columns=columns), pd.read_parquet(
        records, columns=["source_table", "record_id", "person_id"]
    )


def customer_persons(crosswalk: pd.DataFrame, source_records: pd.DataFrame) -> pd.Series:
    """customer_key -> the true person behind all its records (customers merged across persons are left out)."""
    keys = source_records["source_table"].astype(str) + ":" + source_records["record_id"].astype(str)
    by_record = pd.Series(source_records["person_id"].to_numpy(), index=keys.to_numpy())
    by_record = by_record[~by_record.index.duplicated()]
    linked = crosswalk.assign(person_id=crosswalk["record_key"].map(by_record)).dropna(subset=["person_id"])
    persons = linked.groupby("customer_key")["person_id"].agg(["nunique", "first"])
    return persons.loc[persons["nunique"] == 1, "first"]


def offer_truth(
    units: pd.DataFrame, crosswalk: pd.DataFrame, source_records: pd.DataFrame, effect: pd.DataFrame
) -> pd.DataFrame:
    """The offer test's units with their true churn probabilities without and with the offer.

    Units whose customer maps to no single person, or to a person the truth has not in the test,
    are left out (a wrongly merged identity has no one true response).
    """
    persons = customer_persons(crosswalk, source_records)
    by_person = effect[effect["in_test"].astype(bool)].drop_duplicates("person_id").set_index("person_id")
    person = units["unit"].astype(str).map(persons)
    out = units.assign(
        person_id=person.to_numpy(),
        p_control=person.map(by_person["p_churn_if_control"]).to_numpy(dtype=float),
        p_treated=person.map(by_person["p_churn_if_treated"]).to_numpy(dtype=float),
        truly_treated=person.map(by_person["treated"]).to_numpy(),
    )
    out = out.dropna(subset=["p_control", "p_treated"]).reset_index(drop=True)
    if out.empty:
        raise ExperimentError("truth: none of the offer test's customers has a true response in the truth")
    return out


def true_effect(truth: pd.DataFrame) -> float:
    """The estimand: mean(p_treated - p_control) over the units (the offer's true effect on churn)."""
    return float((truth["p_treated"] - truth["p_control"]).mean())


@dataclass(frozen=True)
class Coverage:
    """What 200 resampled analyses reported, against the true mean effect."""

    simulations: int
    units: int
    estimand: float
    coverage: float  # share of the raw intervals holding the estimand
    coverage_cuped: float | None
    mean_width: float
    mean_width_cuped: float | None
    width_reduction: float | None  # 1 - mean width with CUPED / without
    mean_variance_reduction: float | None  # as analyse reports it
    blocked: int  # resampled analyses whose verdict was blocked (a chance sample-ratio mismatch)
    alpha: float
    # The variance reduction a perfect pre-period covariate (the true churn probability itself) would give:
    # var(p) / var(y). For a rare binary outcome most of the variance is the coin flip, so this bound is small.
    oracle_variance_reduction: float
    target: float = COVERAGE_TARGET

    @property
    def met(self) -> bool:
        """Coverage at or above the target for every analysis run, and CUPED narrower when it ran."""
        covered = self.coverage >= self.target and (self.coverage_cuped is None or self.coverage_cuped >= self.target)
        narrower = self.width_reduction is None or self.width_reduction > 0
        return covered and narrower

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, with whether the targets are met."""
        return {**asdict(self), "met": self.met}

    def lines(self) -> list[str]:
        """The coverage in words (CLI, report)."""
        out = [
            f"true mean effect of the offer on churn: {self.estimand:+.4f} over {self.units:,} customers",
            f"{self.simulations} resampled analyses: {self.coverage:.1%} of the {1 - self.alpha:.0%} intervals hold it "
            f"(target >= {self.target:.0%}), mean width {self.mean_width:.4f}",
        ]
        if self.coverage_cuped is not None and self.mean_width_cuped is not None:
            out.append(
                f"with CUPED: {self.coverage_cuped:.1%} hold it, mean width {self.mean_width_cuped:.4f} "
                f"({self.width_reduction or 0:.1%} narrower; "
                f"variance reduction {self.mean_variance_reduction or 0:.1%}, "
                f"of at most {self.oracle_variance_reduction:.1%} a perfect covariate could give)"
            )
        return out


def resampled_coverage(
    truth: pd.DataFrame,
    covariate: str | None = None,
    *,
    seeds: Sequence[int] = range(SIMULATIONS),
    alpha: float = 0.05,
) -> Coverage:
    """Coverage of the true mean effect by `analyse`'s intervals over resampled experiments (one per seed).

    `truth` as `offer_truth` gives it (unit, day, p_control, p_treated), with the `covariate` column
    when CUPED is to be compared. Seed s draws the arms and outcomes with `numpy.random.default_rng(s)`.
    """
    from experiments.analysis import Metric, analyse

    if covariate is not None and covariate not in truth.columns:
        raise ExperimentError(f"covariate: column {covariate!r} is not in the truth frame")
    n = len(truth)
    p_control = truth["p_control"].to_numpy(dtype=float)
    p_treated = truth["p_treated"].to_numpy(dtype=float)
    estimand = true_effect(truth)
    shares = {"control": 0.5, "treatment": 0.5}
    metrics = [Metric(OFFER_METRIC, "proportion", OFFER_METRIC, higher_is_better=False, primary=True)]
    if covariate is not None:
        metrics.append(
            Metric(f"{OFFER_METRIC}_cuped", "proportion", OFFER_METRIC, covariate=covariate, higher_is_better=False)
        )
    base = pd.DataFrame({"day": truth["day"].to_numpy() if "day" in truth.columns else pd.Timestamp(0).date()})
    if covariate is not None:
        base[covariate] = truth[covariate].to_numpy(dtype=float)
    raw: list[tuple[float, float]] = []
    cuped: list[tuple[float, float]] = []
    reductions: list[float] = []
    blocked = 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        treated = rng.random(n) < 0.5
        churned = rng.random(n) < np.where(treated, p_treated, p_control)
        units = base.assign(arm=np.where(treated, "treatment", "control"), **{OFFER_METRIC: churned.astype(float)})
        analysis = analyse(units, metrics, expected_shares=shares, alpha=alpha, mode="fixed", correction="none")
        blocked += analysis.verdict == "blocked"
        for r in analysis.results:
            if r.metric == OFFER_METRIC:
                raw.append((r.ci_low, r.ci_high))
            else:
                cuped.append((r.ci_low, r.ci_high))
                if r.variance_reduction is not None:
                    reductions.append(r.variance_reduction)
    if not raw:
        raise ExperimentError("truth: no resampled analysis reported an interval")

    def share_covering(intervals: list[tuple[float, float]]) -> float:
        a = np.asarray(intervals, dtype=float)
        return float(((a[:, 0] <= estimand) & (estimand <= a[:, 1])).mean())

    def mean_width(intervals: list[tuple[float, float]]) -> float:
        a = np.asarray(intervals, dtype=float)
        return float((a[:, 1] - a[:, 0]).mean())

    width = mean_width(raw)
    width_cuped = mean_width(cuped) if cuped else None
    return Coverage(
        simulations=len(raw),
        units=n,
        estimand=estimand,
        coverage=share_covering(raw),
        coverage_cuped=share_covering(cuped) if cuped else None,
        mean_width=width,
        mean_width_cuped=width_cuped,
        width_reduction=None if width_cuped is None else 1 - width_cuped / width,
        mean_variance_reduction=float(np.mean(reductions)) if reductions else None,
        blocked=blocked,
        alpha=alpha,
        oracle_variance_reduction=_oracle_reduction(p_control),
    )


def _oracle_reduction(p: np.ndarray) -> float:
    """var(p) / var(y) for y ~ Bernoulli(p): the share of the outcome's variance any covariate can explain."""
    mean = float(p.mean())
    total = mean * (1 - mean)
    return float(p.var() / total) if total > 0 else float("nan")


def observed_against_truth(truth: pd.DataFrame, ci_low: float, ci_high: float, difference: float) -> dict[str, Any]:
    """The observed test's reported difference and interval beside the true mean effect over its customers."""
    estimand = true_effect(truth)
    return {
        "true_effect": estimand,
        "difference": float(difference),
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "covered": bool(ci_low <= estimand <= ci_high),
        "units": len(truth),
        "line": (
            f"true mean effect {estimand:+.4f} over {len(truth):,} customers; reported {difference:+.4f} "
            f"[{ci_low:+.4f}, {ci_high:+.4f}]: {'inside' if ci_low <= estimand <= ci_high else 'OUTSIDE'} the interval"
        ),
    }
