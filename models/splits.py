"""Which rows train, validate and test: by cutoff for the feature store, by time or at random for a user's table.

Rows of one customer and cutoff never straddle stages; across cutoffs, the config's
horizon check (`TimeSplit.check_horizon`) guarantees no training label reaches into a
later stage's cutoff. A model calibrated on the newest labelled data takes a fourth
stage, `calibration`: a share of the test stage's customers, picked by a salted hash of
the customer key, so a customer is in the calibration rows or the test rows, never both.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from models.config import TimeSplit

if TYPE_CHECKING:
    from models.tabular import TabularSchema

STAGES = ("train", "valid", "test")
CALIBRATION = "calibration"  # held out of the test stage to fit the calibrator on (see hold_out_for_calibration)


class SplitError(ValueError):
    """A stage would be empty, or the data cannot be split as asked."""


@dataclass(frozen=True)
class LabelledTable:
    """Rows to learn from: features, a binary label, the stage of every row, and what is not a feature."""

    frame: pd.DataFrame
    id_column: str
    label: str
    stage: pd.Series  # "train" | "valid" | "test" | "calibration" | "unused", aligned with frame
    snapshot: str | None = None  # the column holding each row's cutoff, if any
    duration: str | None = None  # time to the event (or to censoring), for the survival model
    event: str | None = None  # whether the event was observed
    not_features: tuple[str, ...] = ()  # other labels and outcomes in the frame
    weight: str | None = None  # per-row training weight (e.g. undoing negative sampling)
    lineage: str = ""  # where the rows came from (for the run's dataset record)
    label_definition: str = ""  # what the label means, in words (runs and cards say it)
    schema: TabularSchema | None = None  # the features, when decided before training (a user's own table)
    schema_report: tuple[dict[str, str], ...] = ()  # every column's type, role and why (logged with the run)

    def rows(self, stage: str) -> pd.DataFrame:
        """The frame's rows of one stage."""
        return self.frame[self.stage.to_numpy() == stage]

    @property
    def excluded(self) -> list[str]:
        """Columns that must never be model inputs."""
        cols = [self.id_column, self.label, self.snapshot, self.duration, self.event, self.weight, *self.not_features]
        return [c for c in cols if c]


def stage_by_cutoff(as_of: pd.Series, split: TimeSplit) -> pd.Series:
    """Stage of each row from its cutoff; rows at cutoffs the split does not name are 'unused'."""
    days = pd.to_datetime(as_of).dt.date
    stage = pd.Series("unused", index=as_of.index, dtype=object)
    for name, cutoffs in zip(STAGES, (split.train_as_of, split.valid_as_of, split.test_as_of), strict=True):
        stage[days.isin(set(cutoffs)).to_numpy()] = name
    _check_filled(stage)
    return stage


def stage_by_time(times: pd.Series, shares: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> pd.Series:
    """Earliest rows train, later ones validate, the latest test; rows with the same time share a stage."""
    t = pd.to_datetime(times, errors="coerce")
    if t.isna().any():
        raise SplitError(f"{int(t.isna().sum())} row(s) have no readable time; a time split needs one on every row")
    ranks = t.rank(method="min", pct=True)
    edges = np.cumsum(shares)
    stage = pd.Series(
        np.where(ranks <= edges[0], "train", np.where(ranks <= edges[1], "valid", "test")), index=times.index
    )
    _check_filled(stage)
    return stage


def stage_at_random(labels: pd.Series, seed: int, shares: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> pd.Series:
    """A stratified random split, for a snapshot table with no time column (one point in time).

    A stage whose share is 0 is left empty on purpose.
    """
    rng = np.random.default_rng(seed)
    stage = pd.Series("train", index=labels.index, dtype=object)
    for _, idx in labels.groupby(labels.fillna("missing").astype(str)).groups.items():
        pos = rng.permutation(np.asarray(idx))
        n_valid, n_test = int(round(shares[1] * pos.size)), int(round(shares[2] * pos.size))
        stage[pos[:n_valid]] = "valid"
        stage[pos[n_valid : n_valid + n_test]] = "test"
    _check_filled(stage, [s for s, share in zip(STAGES, shares, strict=True) if share > 0])
    return stage


def stage_latest_per_group(
    groups: pd.Series, times: pd.Series, shares: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> pd.Series:
    """Each group's latest rows test, the ones before them validate, its earlier ones train (leave-last-out by share).

    For interaction logs split per user: every user with enough rows has a history and a
    holdout, which a global time split does not give (a user active only late has no history).
    Within a group rows go by time, equal times in row order; a group's test and validation
    counts are its size times the shares, rounded, so a user with few rows may hold out none.
    """
    t = pd.to_datetime(times, errors="coerce")
    if t.isna().any():
        raise SplitError(f"{int(t.isna().sum())} row(s) have no readable time; a time split needs one on every row")
    order = pd.DataFrame({"group": groups.astype(str).to_numpy(), "time": t.to_numpy(), "pos": np.arange(len(t))})
    order = order.sort_values(["group", "time", "pos"], kind="stable")
    by_group = order.groupby("group", sort=False)["pos"]
    size = by_group.transform("size").to_numpy()
    from_end = size - by_group.cumcount().to_numpy() - 1  # 0: the group's latest row
    n_test = np.round(shares[2] * size)
    n_valid = np.round(shares[1] * size)
    labels = np.where(from_end < n_test, "test", np.where(from_end < n_test + n_valid, "valid", "train"))
    stage = np.empty(len(t), dtype=object)
    stage[order["pos"].to_numpy()] = labels
    out = pd.Series(stage, index=times.index, dtype=object)
    _check_filled(out, [s for s, share in zip(STAGES, shares, strict=True) if share > 0])
    return out


def key_fractions(keys: pd.Series, salt: str) -> np.ndarray:
    """A number in [0, 1) per key from a salted SHA-256: stable across runs, machines and row orders."""
    values = keys.astype(str).to_numpy()
    prefix = salt.encode() + b"\x00"
    digests = [int.from_bytes(hashlib.sha256(prefix + v.encode()).digest()[:8], "big") for v in values]
    return np.asarray(digests, dtype=np.float64) / 2.0**64


def hold_out_for_calibration(table: LabelledTable, share: float, salt: str) -> LabelledTable:
    """The table with a hashed `share` of the test stage's customers moved to the `calibration` stage.

    Chosen per customer key, so a customer's test rows (at every test cutoff) are all
    calibration rows or all test rows; the train and valid stages are untouched, so the
    split's horizon checks still hold. A table that already has calibration rows is returned as is.
    """
    if not 0 < share < 1:
        raise SplitError(f"calibration_share must be between 0 and 1, not {share}")
    if (table.stage == CALIBRATION).any():
        return table
    test = (table.stage == "test").to_numpy()
    picked = np.zeros(len(table.frame), dtype=bool)
    picked[test] = key_fractions(table.frame.loc[test, table.id_column], salt) < share
    stage = table.stage.copy()
    stage[picked] = CALIBRATION
    _check_filled(stage, ["test", CALIBRATION])
    return dataclasses.replace(table, stage=stage)


def latest_snapshot(frame: pd.DataFrame, snapshot: str | None) -> pd.DataFrame:
    """The rows of the newest cutoff (all rows when there is no cutoff column)."""
    if snapshot is None or frame.empty:
        return frame
    newest = frame[snapshot].max()
    return frame[frame[snapshot] == newest]


def _check_filled(stage: pd.Series, stages: Sequence[str] = STAGES) -> None:
    empty = [s for s in stages if not (stage == s).any()]
    if empty:
        raise SplitError(f"the split leaves no rows for {', '.join(empty)}")


def cutoff_days(values: pd.Series) -> list[dt.date]:
    """The distinct cutoffs of a column, oldest first."""
    return sorted(set(pd.to_datetime(values).dt.date))
