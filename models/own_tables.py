"""A user's own tables (not the feature store): read, checked and split for training.

`custintel train churn --table` trains on a snapshot table with a binary label, and
`custintel train recommendation --interactions` on an interactions log. Every problem with
the file is a `TrainingInputError` naming the file, the column and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from models.recommendation import Interactions, check_interactions
from models.splits import LabelledTable, stage_at_random, stage_by_time, stage_latest_per_group

SplitMethod = Literal["per-user", "global", "random"]


class TrainingInputError(ValueError):
    """A user's own table cannot be trained on; the message names the file, column and reason."""


@dataclass(frozen=True)
class OwnTable:
    """A user's snapshot table for churn: one row per customer (and snapshot), a binary label."""

    path: Path
    id_column: str
    label: str
    split_by: str | None = None  # a date column: earlier rows train, later ones test
    duration: str | None = None  # time to the event or censoring: also fit the survival model


@dataclass(frozen=True)
class OwnInteractions:
    """A user's interactions table for recommendation."""

    path: Path
    user: str
    item: str
    weight: str | None = None
    time: str | None = None  # with it the holdout is the latest interactions; without, a random share
    split: SplitMethod | None = None  # None: per-user with a time column, random without


def read_own_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a frame (column types inferred)."""
    if not path.is_file():
        raise TrainingInputError(f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv", ".inter"):
            return pd.read_csv(path, sep=None, engine="python")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise TrainingInputError(f"{path} cannot be read: {exc}") from exc
    raise TrainingInputError(f"{path}: expected a .csv or .parquet file, not {suffix or 'no extension'}")


def own_churn_table(own: OwnTable, seed: int) -> LabelledTable:
    """A user's table as labelled rows: label checked to be binary, split by time or at random."""
    frame = read_own_table(own.path)
    for role, col in (("--id", own.id_column), ("--label", own.label), ("--split-by", own.split_by),
                      ("--duration", own.duration)):  # fmt: skip
        if col and col not in frame.columns:
            raise TrainingInputError(
                f"{own.path}: {role} column {col!r} is not in the table; it has {list(frame.columns)}"
            )
    label = frame[own.label]
    known = label.dropna()
    values = set(known.astype(str).str.lower().unique())
    truthy, falsy = {"1", "true", "yes", "y", "t", "1.0"}, {"0", "false", "no", "n", "f", "0.0"}
    if not values <= truthy | falsy or len(values) < 2:
        raise TrainingInputError(
            f"{own.path}: label column {own.label!r} must be binary (0/1, true/false, yes/no) with both classes; "
            f"found {sorted(values)[:10]}"
        )
    frame = frame.assign(**{own.label: label.map(lambda v: None if pd.isna(v) else str(v).lower() in truthy)})
    if frame[own.id_column].duplicated().any() and not own.split_by:
        raise TrainingInputError(
            f"{own.path}: ids in {own.id_column!r} repeat; give --split-by <date column> for repeated snapshots"
        )
    stage = stage_by_time(frame[own.split_by]) if own.split_by else stage_at_random(frame[own.label], seed)
    return LabelledTable(
        frame=frame,
        id_column=own.id_column,
        label=own.label,
        stage=stage,
        snapshot=own.split_by,
        duration=own.duration,
        event=own.label if own.duration else None,
        lineage=str(own.path.resolve()),
    )


def own_interactions(own: OwnInteractions, seed: int) -> tuple[Interactions, Interactions]:
    """(validation, test) splits of a user's interactions, 80/10/10 by the split method.

    per-user (the default with a time column): each user's latest 10% of interactions test,
    the 10% before them validate (leave-last-out by share: every active user has a history).
    global: one time cutoff for everyone (a user seen only late has no history to score from).
    random (the default without a time column): each user's interactions at random.
    The test history is everything before the test holdout (train + validation rows); the
    validation history is the train rows only. Items a user already interacted with are
    not recommended again.
    """
    frame = read_own_table(own.path)
    try:
        rows = check_interactions(frame, own.user, own.item, own.weight)
    except ValueError as exc:
        raise TrainingInputError(f"{own.path}: {exc}") from exc
    method = own.split or ("per-user" if own.time else "random")
    if method != "random":
        if not own.time:
            raise TrainingInputError(f"{own.path}: --split {method} needs --time (the column that orders interactions)")
        if own.time not in frame.columns:
            raise TrainingInputError(f"{own.path}: --time column {own.time!r} is not in the table")
        times = frame[own.time]
        if pd.api.types.is_numeric_dtype(times):  # epoch seconds, as most interaction logs store them
            times = pd.to_datetime(times, unit="s", errors="coerce")
        try:
            if method == "global":
                stage = stage_by_time(times, (0.8, 0.1, 0.1))
            else:
                stage = stage_latest_per_group(rows["user"], times, (0.8, 0.1, 0.1))
        except ValueError as exc:
            raise TrainingInputError(f"{own.path}: --time column {own.time!r}: {exc}") from exc
    else:
        # Each user's interactions split 80/10/10 at random (RecBole's 'RS' split grouped by user).
        stage = stage_at_random(rows["user"], seed, (0.8, 0.1, 0.1))
    st = stage.to_numpy()
    catalogue = tuple(sorted(rows["item"].unique()))

    def part(history: pd.Series, holdout: str) -> Interactions:
        return Interactions(rows[history.to_numpy()].assign(held=True), rows[st == holdout][["user", "item"]],
                            None, catalogue)  # fmt: skip

    return part(stage == "train", "valid"), part(stage.isin(["train", "valid"]), "test")
