"""What served rows are compared with: the reference rows, and how far each input moves on its own.

A customer population ages: tenure grows with every month, "days since" inputs lengthen while
history accumulates, yearly windows fill, seasons come and go. Judged against training rows from
months earlier, the served rows of an unchanged population read as drift (issue 17: on a world
without drift, 15 of 59 churn inputs were flagged against the pooled training cutoffs), and a real
shift in a few inputs drowns in that noise. Two corrections, both measured on the champion's own
logged rows, so nothing here knows what a column means:

1. **Like with like.** The reference is the newest training cutoff the run logged (the one nearest
   to what is served), not every cutoff pooled.
2. **Natural movement.** Per input, how far it moved per month between the logged cutoffs, in the
   verdict's own statistic (normed Wasserstein or Jensen-Shannon distance, normed by the reference
   cutoff's spread): the larger of
   - the *trend*: the distance between the oldest and the newest cutoff of the look-back, per month
     (ageing, a steady change of mix), and
   - the *typical month-to-month movement*: the median over consecutive cutoffs of the distance per
     month (seasons and other back-and-forth movement, whose net trend over a year can be nil).
   Each distance first loses its sampling noise: the mean distance between the two cutoffs' rows
   shuffled together (a permutation null), so an input that only jitters gets no allowance.
   The verdict's threshold becomes the policy's threshold + that rate x the months between the
   reference cutoff and the served rows' cutoff. Both statistics are metrics, so by the triangle
   inequality a movement of r per month cannot carry a population further than r x months: the
   allowance is what the calendar alone explains, and a shift beyond it is drift.

p-value tests (K-S, chi-square, Z) and PSI are not distances that add up over months. Where the
policy says `auto` and Evidently would pick a p-value test (a reference of at most 1,000 values:
a small customer base, or a sparse input such as days since a rare event), the column gets
Evidently's distance test instead, so its movement applies; a p-value test or PSI the policy names
explicitly gets no allowance. The decision records either.

`reference_sample` picks the rows a training run logs (the newest cutoff and a panel of customers
at every earlier cutoff; `labelled_reference` applies it to a model's labelled table);
`build_baseline` turns them into the reference and the per-column tests at monitoring time.
Pure: frames in, frames and numbers out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.splits import LabelledTable
from monitoring.drift import (
    DEFAULT_THRESHOLDS,
    METRIC_TESTS,
    P_VALUE_TESTS,
    ColumnDrift,
    DatasetDrift,
    Kind,
    chosen_method,
    clean,
    column_drift,
    dataset_drift,
    distance_method,
    spread,
)
from monitoring.policy import DriftPolicy

KEYS = ("customer_key", "as_of")
DAYS_PER_MONTH = 365.25 / 12


class BaselineError(ValueError):
    """The logged reference cannot be used as asked; the message names the column."""


@dataclass(frozen=True)
class Movement:
    """One input's natural movement per month between logged cutoffs, in its test's units."""

    column: str
    method: str
    trend: float
    typical: float
    pairs: int

    @property
    def per_month(self) -> float:
        """The larger of the trend and the typical month-to-month movement."""
        return max(self.trend, self.typical)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "method": self.method,
            "trend_per_month": self.trend,
            "typical_per_month": self.typical,
            "per_month": self.per_month,
            "pairs": self.pairs,
        }


@dataclass(frozen=True)
class Baseline:
    """The reference rows, the tests the served window gets, and what they were built from."""

    reference: pd.DataFrame
    mode: str
    reference_as_of: dt.date | None
    served_as_of: dt.date | None
    gap_months: float
    cutoffs: tuple[dt.date, ...]
    rows_per_cutoff: dict[str, int]
    tests: dict[str, tuple[str, float | None]]
    allowances: dict[str, float] = field(default_factory=dict)
    movement: dict[str, Movement] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (without the rows): what the decision was judged against."""
        columns: dict[str, Any] = {}
        for column, (method, threshold) in self.tests.items():
            entry: dict[str, Any] = {"method": method, "threshold": threshold,
                                     "allowance": self.allowances.get(column, 0.0)}  # fmt: skip
            if column in self.movement:
                entry.update(self.movement[column].as_dict())
            columns[column] = entry
        return {
            "mode": self.mode,
            "reference_as_of": None if self.reference_as_of is None else self.reference_as_of.isoformat(),
            "reference_rows": len(self.reference),
            "served_as_of": None if self.served_as_of is None else self.served_as_of.isoformat(),
            "gap_months": self.gap_months,
            "movement_cutoffs": [d.isoformat() for d in self.cutoffs],
            "rows_per_cutoff": self.rows_per_cutoff,
            "notes": self.notes,
            "columns": columns,
        }

    def describe(self) -> str:
        """One line for trigger details: which rows, which cutoff, how far from the served one."""
        if self.reference_as_of is None:
            return f"against {len(self.reference):,} logged training rows (all cutoffs)"
        text = f"against {len(self.reference):,} rows as of {self.reference_as_of}"
        if self.movement:
            text += (
                f" + natural movement over {self.gap_months:.1f} months "
                f"(measured on {len(self.cutoffs)} cutoffs {self.cutoffs[0]}..{self.cutoffs[-1]})"
            )
        return text


def as_dates(values: pd.Series) -> pd.Series:
    """Cutoffs as `datetime.date` (whatever Parquet, JSON or pandas made of them)."""
    return pd.to_datetime(values).dt.date


def months_between(earlier: dt.date, later: dt.date) -> float:
    """Months (of average length) from one date to another; negative when `later` is earlier."""
    return (later - earlier).days / DAYS_PER_MONTH


def reference_sample(
    frame: pd.DataFrame, columns: list[str], rows: int, history_rows: int, seed: int = 0
) -> pd.DataFrame:
    """The rows a training run logs as its monitoring reference, from the model's labelled frame.

    `frame` holds every stage's rows (train, valid, test) with `customer_key` and `as_of`: the
    newest cutoff keeps up to `rows` rows (what served traffic is compared with), each earlier
    cutoff up to `history_rows` (they measure the natural movement). The same customers are taken
    at every cutoff (one seeded order of customers), so the movement between cutoffs is the
    population's, not two samples' luck. Rows that repeat a customer at a cutoff (one per product)
    are kept once. Without `as_of` it is a plain seeded sample of `rows` rows.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BaselineError(f"the labelled frame has no column {missing[0]!r} (a model input)")
    keys = [k for k in KEYS if k in frame.columns]
    data = frame.drop_duplicates(subset=keys) if keys else frame
    if "as_of" not in data.columns:
        picked = data if len(data) <= rows else data.sample(n=rows, random_state=seed)
        return picked[keys + columns].reset_index(drop=True)
    data = data.assign(as_of=as_dates(data["as_of"]))
    rng = np.random.default_rng(seed)
    if "customer_key" in data.columns:
        customers = pd.unique(data["customer_key"].astype(str))
        rank = pd.Series(rng.permutation(len(customers)), index=customers)
        order = data["customer_key"].astype(str).map(rank).to_numpy()
    else:
        order = rng.permutation(len(data))
    data = data.assign(_order=order)
    newest = data["as_of"].max()
    parts = []
    for day, part in data.groupby("as_of", sort=True):
        limit = rows if day == newest else history_rows
        parts.append(part.nsmallest(limit, "_order"))
    picked = pd.concat(parts).sort_values(["as_of", "_order"])
    return picked[keys + columns].reset_index(drop=True)


def labelled_reference(data: LabelledTable, columns: list[str], rows: int, history_rows: int) -> pd.DataFrame:
    """The monitoring reference of a model trained on `data`: `reference_sample` of the rows it used.

    Every stage's rows (train, validation, calibration, test: the newest cutoff is the test one),
    not the cutoffs the split left unused; the table's id and snapshot columns are named
    `customer_key` and `as_of` (a user's own table has its own names). `columns`: the model inputs.
    """
    frame = data.frame[data.stage.to_numpy() != "unused"]
    names = {data.id_column: "customer_key", **({data.snapshot: "as_of"} if data.snapshot else {})}
    return reference_sample(frame.rename(columns=names), columns, rows, history_rows, seed=0)


def served_cutoff(current: pd.DataFrame) -> dt.date | None:
    """The cutoff of the served rows' features: the median of their `as_of` (None when not logged)."""
    if "as_of" not in current.columns:
        return None
    days = pd.to_datetime(current["as_of"], errors="coerce").dropna()
    if days.empty:
        return None
    return days.sort_values().iloc[len(days) // 2].date()


def _codes(pooled: np.ndarray, first: np.ndarray, kind: Kind) -> tuple[np.ndarray, int]:
    """Each pooled value's bin or category, as `monitoring.drift` bins them for Jensen-Shannon."""
    if kind == "num" and pd.Series(first).nunique() > 20:
        values = pooled.astype(float)
        edges = np.histogram_bin_edges(values, bins="sturges")
        bins = len(edges) - 1
        return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1), bins
    codes, uniques = pd.factorize(pooled)
    return codes, len(uniques)


def pair_distance(
    method: str,
    first: np.ndarray,
    second: np.ndarray,
    kind: Kind,
    scale: float,
    shuffles: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """The distance between two cutoffs' values, and its sampling noise (both cleaned, non-empty).

    The noise is the mean distance over `shuffles` random splits of the pooled values into two
    groups of the same sizes (a permutation null: what the two cutoffs would show if nothing had
    moved). One sort or one binning serves the distance and every shuffle: the normed Wasserstein
    distance is the area between the two empirical CDFs over the pooled sorted values, the
    Jensen-Shannon distance compares bin counts; both equal `monitoring.drift`'s statistic.
    """
    from scipy.spatial import distance as scipy_distance

    pooled = np.concatenate([first, second])
    n1, n2 = len(first), len(second)
    is_first = np.zeros(len(pooled), dtype=bool)
    is_first[:n1] = True
    if method == "wasserstein":
        order = np.argsort(pooled, kind="stable")
        gaps = np.diff(pooled[order].astype(float))

        def measured(labels: np.ndarray) -> float:
            below_first = np.cumsum(labels[:-1]) / n1
            below_second = np.cumsum(~labels[:-1]) / n2
            return float(np.sum(np.abs(below_first - below_second) * gaps)) / scale

        raw = measured(is_first[order])
        noise = [measured(rng.permutation(is_first)) for _ in range(shuffles)]
    elif method == "jensenshannon":
        codes, bins = _codes(pooled, first, kind)

        def measured(labels: np.ndarray) -> float:
            a = np.bincount(codes[labels], minlength=bins) / n1
            b = np.bincount(codes[~labels], minlength=bins) / n2
            return float(scipy_distance.jensenshannon(a, b))

        raw = measured(is_first)
        noise = [measured(rng.permutation(is_first)) for _ in range(shuffles)]
    else:
        raise ValueError(f"{method!r} is not a distance that adds up over time; metric tests: {sorted(METRIC_TESTS)}")
    return raw, float(np.mean(noise))


def measure_movement(
    by_cutoff: dict[dt.date, np.ndarray],
    column: str,
    method: str,
    kind: Kind,
    scale: float,
    shuffles: int,
    rng: np.random.Generator,
) -> Movement | None:
    """One input's trend and typical month-to-month movement (see the module); None with fewer than two cutoffs."""
    days = sorted(d for d, v in by_cutoff.items() if len(v))
    if len(days) < 2:
        return None

    def moved(a: dt.date, b: dt.date) -> float:
        raw, noise = pair_distance(method, by_cutoff[a], by_cutoff[b], kind, scale, shuffles, rng)
        return max(0.0, raw - noise) / months_between(a, b)

    steps = [moved(a, b) for a, b in zip(days[:-1], days[1:], strict=True)]
    trend = steps[0] if len(days) == 2 else moved(days[0], days[-1])
    return Movement(column, method, float(trend), float(np.median(steps)), len(steps))


def select_reference(logged: pd.DataFrame, policy: DriftPolicy) -> pd.DataFrame:
    """The logged rows served traffic is compared with: the newest cutoff's (every row for `all_cutoffs`)."""
    if policy.reference == "all_cutoffs" or "as_of" not in logged.columns or logged.empty:
        return logged.reset_index(drop=True)
    days = as_dates(logged["as_of"])
    return logged[(days == days.max()).to_numpy()].reset_index(drop=True)


def build_baseline(
    logged: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, Kind],
    tests: dict[str, tuple[str, float | None]],
    policy: DriftPolicy,
    served_as_of: dt.date | None = None,
) -> Baseline:
    """The reference rows and each column's test (method, threshold + natural movement) for a served window.

    `logged` is the run's monitoring reference (with `as_of` when the run logged cutoffs), with
    every column of `kinds` (model inputs, and the prediction when it is judged); `tests` holds
    the policy's (method, threshold) per column; `served_as_of` the served features' cutoff
    (default: `served_cutoff(current)`).
    """
    missing = [c for c in kinds if c not in logged.columns]
    if missing:
        raise BaselineError(f"the logged reference has no column {missing[0]!r}")
    served_as_of = served_as_of or served_cutoff(current)
    base = {c: tests.get(c, ("auto", None)) for c in kinds}
    if policy.reference == "all_cutoffs" or "as_of" not in logged.columns or logged.empty:
        note = (
            "reference: every logged row (policy drift.reference: all_cutoffs)"
            if policy.reference == "all_cutoffs"
            else "the logged reference has no cutoffs (as_of): every row is the reference, no natural movement"
        )
        return Baseline(logged.reset_index(drop=True), "all_cutoffs", None, served_as_of, 0.0, (), {},
                        base, notes=[note])  # fmt: skip
    days = as_dates(logged["as_of"])
    by_day: dict[dt.date, pd.DataFrame] = {d: logged[(days == d).to_numpy()] for d in sorted(set(days.tolist()))}
    newest = max(by_day)
    reference = by_day[newest].reset_index(drop=True)
    lookback = policy.natural_movement.lookback_months
    cutoffs = tuple(d for d in by_day if 0 <= months_between(d, newest) <= lookback + 0.5)
    counts = {d.isoformat(): len(by_day[d]) for d in cutoffs}
    gap = abs(months_between(newest, served_as_of)) if served_as_of is not None else 0.0
    notes: list[str] = []
    if served_as_of is None:
        notes.append("the served rows carry no cutoff (as_of): no natural movement allowed")
    resolved: dict[str, tuple[str, float | None]] = {}
    allowances: dict[str, float] = {}
    movement: dict[str, Movement] = {}
    measure = policy.natural_movement.enabled and len(cutoffs) >= 2 and gap > 0
    if policy.natural_movement.enabled and len(cutoffs) < 2:
        notes.append(f"one logged cutoff ({newest}): no natural movement can be measured")
    rng = np.random.default_rng(policy.natural_movement.seed)
    groups = {d: by_day[d] for d in cutoffs} if measure else {}
    for column, kind in kinds.items():
        method, threshold = base[column]
        chosen = chosen_method(reference[column], current[column], kind, method) if column in current else None
        if chosen is None:  # no verdict possible (a side without values): the drift step says so
            resolved[column] = (method, threshold)
            continue
        if measure and method == "auto" and chosen in P_VALUE_TESTS:
            # Evidently's default for a reference of at most 1,000 values is a p-value test, which no
            # movement can be added to: its distance test instead (a statistic of Evidently's all the same).
            chosen = distance_method(clean(reference[column]), clean(current[column]), kind)
            notes.append(f"{column}: few reference values, {chosen} instead of a p-value test: its movement applies")
        limit = DEFAULT_THRESHOLDS[chosen] if threshold is None else threshold
        if measure and chosen in METRIC_TESTS:
            scale = spread(clean(reference[column])) if chosen == "wasserstein" else 1.0
            values = {d: clean(g[column]).to_numpy() for d, g in groups.items()}
            moved = measure_movement(values, column, chosen, kind, scale, policy.natural_movement.permutations, rng)
            if moved is not None:
                movement[column] = moved
                allowances[column] = moved.per_month * gap
                limit += allowances[column]
        elif measure:
            notes.append(f"{column}: {chosen} is not a distance that adds up over months: no natural movement")
        resolved[column] = (chosen, limit)
    return Baseline(reference, "newest_cutoff", newest, served_as_of, gap, cutoffs, counts, resolved,
                    allowances, movement, notes)  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """A served window judged against its baseline: every input's verdict, and the prediction's."""

    baseline: Baseline
    drift: DatasetDrift
    prediction: ColumnDrift | None


def compare_window(
    logged: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, Kind],
    tests: dict[str, tuple[str, float | None]],
    policy: DriftPolicy,
    served_as_of: dt.date | None = None,
    prediction: str | None = None,
) -> Comparison:
    """Judge a served window: the baseline (reference rows, natural movement), each input's verdict, the score's.

    `prediction` names the score column present in both `logged` (the champion's scores of the
    logged rows) and `current`; it gets its own natural movement like an input.
    """
    judged: dict[str, Kind] = {**kinds, prediction: "num"} if prediction else dict(kinds)
    baseline = build_baseline(logged, current, judged, tests, policy, served_as_of)
    drift = dataset_drift(baseline.reference, current, kinds, baseline.tests, policy.drift_share, baseline.allowances)
    score = None
    if prediction:
        method, threshold = baseline.tests[prediction]
        score = column_drift(
            prediction, baseline.reference[prediction], current[prediction], "num", method, threshold,
            baseline.allowances.get(prediction, 0.0),
        )  # fmt: skip
    return Comparison(baseline, drift, score)
