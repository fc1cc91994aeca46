"""The leakage guard of a user's own table: columns that give the answer away, and label windows that cross stages.

A bring-your-own table arrives with whatever its owner exported, and exports often hold
the answer in disguise: a status column written when the customer left, a total that is
the duration times a monthly price. A model trained on them scores brilliantly on test and
is useless in production. Before training, every candidate input is measured on the
training rows only:

- against the label: the column's AUC alone, in either direction (numbers as they are,
  missing values as their own lowest level; categories by a cross-fitted target-rate
  encoding, so a level seen once cannot predict itself);
- with `--duration`, against the duration: the absolute Spearman correlation of the column,
  and of the column divided by (and dividing) every other numeric column. A rank
  correlation near 1 is a near-monotone function of the duration; the ratio catches a
  product (total = tenure x monthly charges: total / monthly charges is the tenure). Of
  the two columns of such a pair, the one closer to the duration alone is excluded.

Columns at or above the thresholds (`leakage` in the training config) are excluded, each
with one warning naming it and the figure; `--keep COL` keeps one, and both lists are
recorded in the run. With `--split-by` and `--horizon`, a training row whose label window
(its snapshot + the horizon) runs past the first validation snapshot, or a validation row's
past the first test snapshot, would be scored on outcomes the earlier stage saw: refused.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from models.config import LeakageConfig
from models.own_tables import TrainingInputError
from models.splits import LabelledTable

log = logging.getLogger("custintel.models")

SAMPLE_ROWS = 20_000  # the guard's rows at most (seeded sample of the training rows): enough for AUC and ranks
PAIR_ROWS = 5_000  # rows for the ratio checks (one rank correlation per pair of numeric columns)
PAIR_FLOOR = 0.2  # a column paired only when it, or its partner, ranks with the duration at least this much alone


@dataclass(frozen=True)
class Leak:
    """One column that gives the label or the duration away, with the figure that shows it."""

    column: str
    target: str  # "label" | "duration"
    target_column: str
    measure: str  # "AUC" | "|Spearman|"
    value: float
    via: str | None = None  # "TotalCharges / MonthlyCharges" when a ratio with another column reproduces it

    def describe(self) -> str:
        """'TotalCharges: |Spearman| 0.999 with duration tenure (as TotalCharges / MonthlyCharges)'."""
        how = f" (as {self.via})" if self.via else ""
        return f"{self.column}: {self.measure} {self.value:.3f} with {self.target} {self.target_column}{how}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None} | {"value": round(self.value, 4)}


@dataclass(frozen=True)
class LeakReport:
    """What the guard found: the columns excluded, those kept by `--keep`, and the thresholds used."""

    excluded: tuple[Leak, ...]
    kept: tuple[Leak, ...]
    thresholds: dict[str, float]
    rows: int  # training rows measured

    def lines(self, label: str, duration: str | None) -> list[str]:
        """What the guard did, one line per column, for the training summary."""
        out = [f"leak guard: {x.describe()}: excluded; --keep {x.column} to keep it" for x in self.excluded]
        out += [f"leak guard: {x.describe()}: kept (--keep {x.column})" for x in self.kept]
        if not out:
            what = f"label {label}" + (f" or the duration {duration}" if duration else "")
            out.append(f"leak guard: no column gives the {what} away (measured on {self.rows:,} training rows)")
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run's lineage."""
        return {
            "excluded": [leak.as_dict() for leak in self.excluded],
            "kept": [leak.as_dict() for leak in self.kept],
            "thresholds": self.thresholds,
            "rows_measured": self.rows,
        }


def single_feature_auc(values: pd.Series, y: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """How well one column alone separates the classes: AUC in the better direction (0.5 to 1).

    Numbers (and dates, as their time stamps) are ranked as they are, missing values as a
    level below every number (missingness itself can leak). Other columns are encoded by
    each level's churn rate learnt on the other folds (smoothed towards the overall rate;
    levels unseen there get the overall rate), so an id unique to its row scores 0.5.
    """
    y = np.asarray(y, dtype="int64")
    if np.unique(y).size < 2 or len(values) != y.size:
        return 0.5
    score = _as_number(values)
    if score is None:
        score = _target_rate(values, y, seed, folds)
    if np.all(score == score[0]):
        return 0.5
    auc = float(roc_auc_score(y, score))
    return max(auc, 1.0 - auc)


def _as_number(values: pd.Series) -> np.ndarray | None:
    """The column as floats with missing values below every number, or None for a column of categories."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("float64").to_numpy(na_value=-1.0)
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.to_datetime(values)
        v = np.where(stamps.isna(), np.nan, stamps.astype("int64").astype("float64"))
    elif pd.api.types.is_numeric_dtype(values):
        v = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    else:
        return None
    finite = v[np.isfinite(v)]
    low = float(finite.min()) - 1.0 if finite.size else 0.0
    return np.where(np.isfinite(v), v, low)


def _target_rate(values: pd.Series, y: np.ndarray, seed: int, folds: int, smoothing: float = 10.0) -> np.ndarray:
    """Cross-fitted, smoothed target rate of each row's level (missing is a level of its own)."""
    text = values.astype("object").where(values.notna(), "\x00missing").astype(str).to_numpy()
    fold = np.random.default_rng(seed).integers(0, folds, y.size)
    out = np.empty(y.size, dtype="float64")
    prior = float(y.mean())  # one prior for every fold: a per-fold prior would rank the folds by their churn rate
    for k in range(folds):
        fit, apply = fold != k, fold == k
        if not apply.any():
            continue
        stats = pd.DataFrame({"level": text[fit], "y": y[fit]}).groupby("level")["y"].agg(["sum", "count"])
        rate = (stats["sum"] + smoothing * prior) / (stats["count"] + smoothing)
        out[apply] = pd.Series(text[apply]).map(rate).fillna(prior).to_numpy(dtype="float64")
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """|Spearman| of two arrays on the rows where both are finite (0 when either is constant there)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return 0.0
    ra, rb = pd.Series(a[ok]).rank().to_numpy(), pd.Series(b[ok]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return abs(float(np.corrcoef(ra, rb)[0, 1]))


def duration_leaks(frame: pd.DataFrame, candidates: Sequence[str], duration: str, threshold: float) -> list[Leak]:
    """Columns that alone, or divided by (or dividing) another numeric column, rank like the duration."""
    target = pd.to_numeric(frame[duration], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    numeric = {}
    for c in candidates:
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]):
            numeric[c] = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    alone = {c: _spearman(v, target) for c, v in numeric.items()}
    found: dict[str, Leak] = {}
    for c, rho in alone.items():
        if rho >= threshold:
            found[c] = Leak(c, "duration", duration, "|Spearman|", rho)
    # The pairs: a product (or quotient) with the duration ranks with it somewhat on its own, so only columns that
    # do (PAIR_FLOOR) are paired, with every numeric column, on a sample: 200 columns stay a few seconds.
    names = sorted(numeric)
    pick = np.random.default_rng(0).permutation(target.size)[:PAIR_ROWS]
    target = target[pick]
    numeric = {c: v[pick] for c, v in numeric.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if (a in found and b in found) or max(alone[a], alone[b]) < PAIR_FLOOR:
                    continue
                ratio = numeric[a] / numeric[b]  # b / a ranks in reverse: the same |Spearman|
                rho = _spearman(ratio, target)
                if rho < threshold:
                    continue
                culprit, other = (a, b) if alone[a] >= alone[b] else (b, a)
                if culprit not in found:
                    found[culprit] = Leak(culprit, "duration", duration, "|Spearman|", rho, f"{culprit} / {other}")
    return [found[c] for c in candidates if c in found]


def find_leaks(
    frame: pd.DataFrame,
    candidates: Sequence[str],
    label: str,
    duration: str | None,
    config: LeakageConfig,
    seed: int = 0,
) -> list[Leak]:
    """Every candidate column at or above a threshold, measured on `frame` (the training rows), in column order."""
    rows = frame[frame[label].notna()]
    if len(rows) > SAMPLE_ROWS:
        rows = rows.sample(SAMPLE_ROWS, random_state=seed)
    y = rows[label].astype(bool).to_numpy(dtype="int64")
    leaks: dict[str, Leak] = {}
    for c in candidates:
        auc = single_feature_auc(rows[c], y, seed)
        if auc >= config.label_auc:
            leaks[c] = Leak(c, "label", label, "AUC", auc)
    if duration:
        for leak in duration_leaks(rows, [c for c in candidates if c not in leaks], duration, config.duration_spearman):
            leaks[leak.column] = leak
    return [leaks[c] for c in candidates if c in leaks]


def guard_table(
    table: LabelledTable, config: LeakageConfig, keep: Iterable[str] = (), seed: int = 0
) -> tuple[LabelledTable, LeakReport]:
    """The table with its leaking columns made non-features, and what was found; each exclusion is warned.

    Measured on the training rows only (the guard must not look at validation or test labels).
    `keep` names columns to keep whatever they score; naming a column the table lacks is an error.
    """
    keep = tuple(dict.fromkeys(keep))
    unknown = [c for c in keep if c not in table.frame.columns]
    if unknown:
        raise TrainingInputError(
            f"{table.lineage}: --keep column(s) {unknown} are not in the table; it has {list(table.frame.columns)}"
        )
    excluded = set(table.excluded)
    # the features decided before training (a user's table), else every column that is not a role
    candidates = table.schema.features if table.schema else [c for c in table.frame.columns if c not in excluded]
    train = table.rows("train")
    leaks = find_leaks(train, candidates, table.label, table.duration, config, seed)
    dropped = tuple(leak for leak in leaks if leak.column not in keep)
    kept = tuple(leak for leak in leaks if leak.column in keep)
    for leak in dropped:
        log.warning("leak guard: %s: excluded; --keep %s to keep it", leak.describe(), leak.column)
    for leak in kept:
        log.warning("leak guard: %s: kept (--keep %s)", leak.describe(), leak.column)
    report = LeakReport(dropped, kept, config.model_dump(), int(train[table.label].notna().sum()))
    if not dropped:
        return table, report
    gone = [leak.column for leak in dropped]
    schema = table.schema
    if schema is not None:
        schema = dataclasses.replace(
            schema,
            numeric=[c for c in schema.numeric if c not in gone],
            categorical=[c for c in schema.categorical if c not in gone],
            dropped={**schema.dropped, **{leak.column: f"leak guard: {leak.describe()}" for leak in dropped}},
        )
    return dataclasses.replace(table, not_features=(*table.not_features, *gone), schema=schema), report


def annotate_schema(schema: list[dict[str, str]], report: LeakReport) -> list[dict[str, str]]:
    """The schema's rows with each excluded column's note saying why: the guard's figure, not 'id or label'."""
    why = {leak.column: leak for leak in report.excluded}
    kept = {leak.column: leak for leak in report.kept}
    rows = []
    for row in schema:
        column = row.get("column", "")
        if column in why:
            leak = why[column]
            figure = f"{leak.measure} {leak.value:.3f} with {leak.target} {leak.target_column}"
            row = {**row, "role": "dropped", "note": f"leak guard: {figure}"}
        elif column in kept and not row.get("note"):
            row = {**row, "note": f"kept by --keep (leak guard: {kept[column].measure} {kept[column].value:.3f})"}
        rows.append(row)
    return rows


def check_label_windows(table: LabelledTable, horizon_days: int) -> None:
    """Refuse a time split where a stage's label windows (snapshot + horizon) run past the next stage's first snapshot.

    A label observed up to `horizon_days` after its snapshot: a training row at a snapshot
    within the horizon of the first validation snapshot has an outcome that happened during
    validation, so validation would score what training saw.
    """
    if table.snapshot is None:
        return
    when = pd.to_datetime(table.frame[table.snapshot], errors="coerce")
    span = pd.Timedelta(days=horizon_days)
    problems = []
    for earlier, later in (("train", "valid"), ("valid", "test")):
        mine = when[(table.stage == earlier).to_numpy()]
        theirs = when[(table.stage == later).to_numpy()]
        if mine.empty or theirs.empty:
            continue
        first_later = theirs.min()
        crossing = mine[mine + span > first_later]
        if not crossing.empty:
            problems.append(
                f"{len(crossing):,} {earlier} rows (snapshots {_day(crossing.min())} to {_day(crossing.max())}) have "
                f"label windows (+{horizon_days} days) running past the first {later} snapshot {_day(first_later)}"
            )
    if problems:
        raise TrainingInputError(
            f"{table.lineage}: --split-by {table.snapshot} with --horizon {horizon_days}: {'; '.join(problems)}; "
            f"drop the snapshots within {horizon_days} days before each later stage, or give snapshots further apart"
        )


def _day(value: Any) -> str:
    return str(pd.Timestamp(value).date()) if not pd.isna(value) else "?"


def guard_own_table(
    table: LabelledTable, config: LeakageConfig, keep: Iterable[str], horizon_days: int | None, seed: int = 0
) -> tuple[LabelledTable, LeakReport]:
    """Both guards on a user's table, before anything trains: label windows across stages, then leaking columns."""
    if horizon_days is not None:
        check_label_windows(table, horizon_days)
    elif table.snapshot is not None:
        log.warning(
            "--split-by %s without --horizon: whether training labels' windows run past the validation snapshots "
            "cannot be checked; give --horizon DAYS (the label's window)", table.snapshot
        )  # fmt: skip
    return guard_table(table, config, keep, seed)
