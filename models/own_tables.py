"""A user's own tables (not the feature store): read, checked and split for training.

`custintel train churn --table` trains on a snapshot table with a binary label, and
`custintel train recommendation --interactions` on an interactions log. Every problem with
the file is a `TrainingInputError` naming the file, the column and the reason.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from models.splits import LabelledTable, SplitError, stage_at_random, stage_by_time, stage_latest_per_group
from models.table_types import (
    FALSE_VALUES,
    MISSING_TOKENS,
    TRUE_VALUES,
    Role,
    TableTypeError,
    TypedTable,
    read_schema,
    read_text_table,
    type_columns,
)

if TYPE_CHECKING:
    from models.recommendation import Interactions

SplitMethod = Literal["per-user", "global", "random"]
MIN_ROWS = 10  # fewer rows cannot fill a train, a validation and a test stage with both classes
MIN_PER_CLASS = 3  # a stratified split puts at least one row of each class in each stage


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
    schema: Path | str | None = None  # a --schema file overriding the inferred column types
    keep: tuple[str, ...] = ()  # columns the leakage guard flags but the user keeps (models.leakage)
    horizon_days: int | None = None  # the label's window: churned within this many days of the snapshot
    capacity: int | None = None  # customers contacted a week (unset: churn.contact_share of those scored)


@dataclass(frozen=True)
class OwnInteractions:
    """A user's interactions table for recommendation."""

    path: Path
    user: str
    item: str
    weight: str | None = None
    time: str | None = None  # with it the holdout is the latest interactions; without, a random share
    schema: Path | str | None = None  # a --schema file overriding the inferred column types
    split: SplitMethod | None = None  # None: per-user with a time column, random without


def read_own_table(path: Path) -> pd.DataFrame:
    """A CSV (or other delimited text) file as strings, or a Parquet file with its own types."""
    if not path.is_file():
        raise TrainingInputError(f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv", ".inter", ".dat", ".data"):
            return read_text_table(path)
    except TableTypeError as exc:
        raise TrainingInputError(str(exc)) from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise TrainingInputError(f"{path} cannot be read: {str(exc).strip().splitlines()[0]}") from None
    raise TrainingInputError(f"{path}: expected a .csv or .parquet file, not {suffix or 'no extension'}")


def check_present(path: Path, frame: pd.DataFrame, options: dict[str, str]) -> None:
    """Each column an option names is in the table (`options`: column -> the option that named it)."""
    for col, option in options.items():
        if col not in frame.columns:
            raise TrainingInputError(
                f"{path}: {option} column {col!r} is not in the table; it has {list(frame.columns)}"
            )


def typed_table(
    path: Path,
    frame: pd.DataFrame,
    roles: dict[str, Role],
    options: dict[str, str],
    schema: Path | str | None,
    classes: dict[str, str] | None = None,
) -> TypedTable:
    """The frame typed by `type_columns`, its errors as `TrainingInputError`s naming the option's column.

    `classes`: data classes the caller knows (an item column is a product's, not a person's);
    the `--schema` file's override them.
    """
    check_present(path, frame, options)
    try:
        overrides, schema_classes = read_schema(Path(schema)) if schema else ({}, {})
        named = {col: f"{option} column" for col, option in options.items()}
        return type_columns(
            frame, roles, str(path), overrides, f"--schema {schema}", named, {**(classes or {}), **schema_classes}
        )
    except TableTypeError as exc:
        raise TrainingInputError(str(exc)) from None


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


def check_own_table(own: OwnTable) -> TypedTable:
    """Read, type and check a churn table: every problem is one `TrainingInputError` naming the file and column.

    Run by the command line before any orchestration starts, and again (cheaply) by the flow.
    """
    frame = read_own_table(own.path)
    roles: dict[str, Role] = {own.id_column: "id", own.label: "label"}
    if own.split_by:
        roles[own.split_by] = "split"
    if own.duration:
        roles[own.duration] = "duration"
    named = [c for c in (own.id_column, own.label, own.split_by, own.duration) if c]
    if len(set(named)) < len(named):
        raise TrainingInputError(f"{own.path}: --id, --label, --split-by and --duration must name different columns")
    options = {own.id_column: "--id", own.label: "--label"}
    options.update({c: o for c, o in ((own.split_by, "--split-by"), (own.duration, "--duration")) if c})
    check_present(own.path, frame, options)
    label = frame[own.label]
    text = label.dropna().astype(str).str.strip()
    text = text[~text.str.lower().isin(MISSING_TOKENS)]
    classes = sorted(text.str.lower().unique())
    if not set(classes) <= TRUE_VALUES | FALSE_VALUES:
        if len(classes) > 2:
            shown = ", ".join(repr(c) for c in sorted(text.unique())[:10])
            raise TrainingInputError(
                f"{own.path}: label column {own.label!r} has {len(classes)} classes ({shown}); "
                "churn needs a binary label (0/1, true/false, yes/no)"
            )
        raise TrainingInputError(
            f"{own.path}: label column {own.label!r} must be binary (0/1, true/false, yes/no); found {classes}"
        )
    if len(frame) < MIN_ROWS:
        raise TrainingInputError(f"{own.path} has {_rows(len(frame))}; at least {MIN_ROWS} are needed")
    churned = text.str.lower().isin(TRUE_VALUES)
    counts = {"true": int(churned.sum()), "false": int((~churned).sum())}
    if min(counts.values()) == 0:
        raise TrainingInputError(
            f"{own.path}: label column {own.label!r} has one class only ({classes[0]!r} on every labelled row); "
            "both churned and retained rows are needed"
        )
    if not own.split_by and min(counts.values()) < MIN_PER_CLASS:
        rare = min(counts, key=lambda k: counts[k])
        raise TrainingInputError(
            f"{own.path}: label column {own.label!r} has {_rows(counts[rare])} of class {rare}; "
            f"at least {MIN_PER_CLASS} of each are needed (one per train, validation and test stage)"
        )
    typed = typed_table(own.path, frame, roles, options, own.schema)
    ids = typed.frame[own.id_column]
    if ids.isna().any():
        raise TrainingInputError(
            f"{own.path}: --id column {own.id_column!r} is blank on {_rows(int(ids.isna().sum()))}"
        )
    if ids.duplicated().any() and not own.split_by:
        example = ids[ids.duplicated()].iloc[0]
        raise TrainingInputError(
            f"{own.path}: ids in {own.id_column!r} repeat ({int(ids.duplicated().sum())} repeats, e.g. {example!r}); "
            "give --split-by <date column> for repeated snapshots"
        )
    if own.split_by and (dup := typed.frame.duplicated([own.id_column, own.split_by])).any():
        raise TrainingInputError(
            f"{own.path}: ids in {own.id_column!r} repeat within a date of {own.split_by!r} "
            f"({int(dup.sum())} repeats, e.g. {ids[dup].iloc[0]!r}); one row per id and date is expected"
        )
    if not typed.numeric and not typed.categorical:
        raise TrainingInputError(f"{own.path}: no usable feature column; every column was left out: {typed.dropped}")
    if own.split_by:
        _check_time_split(own, typed.frame)
    return typed


def _check_time_split(own: OwnTable, frame: pd.DataFrame) -> None:
    """Each stage of the time split holds rows of both classes (a stage's AUC needs them)."""
    assert own.split_by is not None
    try:
        stage = stage_by_time(frame[own.split_by])
    except SplitError as exc:
        raise TrainingInputError(f"{own.path}: --split-by column {own.split_by!r}: {exc}") from None
    label = frame[own.label].astype(str).str.strip().str.lower()
    known = frame[own.label].notna().to_numpy()
    for name in ("train", "valid", "test"):
        rows = (stage == name).to_numpy() & known
        if label[rows].isin(TRUE_VALUES).nunique() < 2:
            days = frame.loc[(stage == name).to_numpy(), own.split_by]
            held = "one class only" if rows.any() else "no labelled row"
            raise TrainingInputError(
                f"{own.path}: with --split-by {own.split_by!r}, the {name} rows ({days.min():%Y-%m-%d} to "
                f"{days.max():%Y-%m-%d}) hold {held}; a time split needs both classes in every stage"
            )


def own_churn_table(own: OwnTable, seed: int, checked: TypedTable | None = None) -> LabelledTable:
    """A user's table as labelled rows: checked (`check_own_table`), split by time or at random.

    `checked`: the table as `check_own_table` already read and typed it (not read again).
    """
    from models.tabular import TabularSchema  # here: checking a table needs no scikit-learn

    typed = checked or check_own_table(own)
    label = typed.frame[own.label]
    frame = typed.frame.assign(
        **{own.label: label.map(lambda v: None if pd.isna(v) else str(v).strip().lower() in TRUE_VALUES)}
    )
    try:
        stage = stage_by_time(frame[own.split_by]) if own.split_by else stage_at_random(frame[own.label], seed)
    except SplitError as exc:
        raise TrainingInputError(f"{own.path}: {exc}") from None
    return LabelledTable(
        frame=frame,
        id_column=own.id_column,
        label=own.label,
        stage=stage,
        snapshot=own.split_by,
        duration=own.duration,
        event=own.label if own.duration else None,
        lineage=str(own.path.resolve()),
        schema=TabularSchema(list(typed.numeric), list(typed.categorical), typed.dropped),
        schema_report=tuple(typed.describe()),
    )


def check_own_interactions(own: OwnInteractions) -> TypedTable:
    """Read, type and check an interactions table (ids as strings, weights and times readable, two users and items)."""
    frame = read_own_table(own.path)
    roles: dict[str, Role] = {own.user: "id", own.item: "id"}
    if own.weight:
        roles[own.weight] = "weight"
    if own.time:
        roles[own.time] = "split"
    options = {own.user: "--user", own.item: "--item"}
    options.update({c: o for c, o in ((own.weight, "--weight"), (own.time, "--time")) if c})
    if len(options) < 2 + bool(own.weight) + bool(own.time):
        raise TrainingInputError(f"{own.path}: --user, --item, --weight and --time must name different columns")
    # The item is a product's id, not a person's.
    typed = typed_table(own.path, frame, roles, options, own.schema, {own.item: "behavioural"})
    for option, col in (("--user", own.user), ("--item", own.item)):
        values = typed.frame[col]
        if values.isna().any():
            raise TrainingInputError(
                f"{own.path}: {option} column {col!r} is blank on {_rows(int(values.isna().sum()))}"
            )
        if values.nunique() < 2:
            raise TrainingInputError(
                f"{own.path}: {option} column {col!r} has {values.nunique()} distinct value(s); at least 2 are needed"
            )
    reports = tuple(
        r if r.column in roles else type(r)(r.column, r.type, "unused", "not an input of the recommender")
        for r in typed.columns
    )
    return TypedTable(typed.frame, reports, (), ())


def own_interactions(
    own: OwnInteractions, seed: int, checked: TypedTable | None = None
) -> tuple[Interactions, Interactions]:
    """(validation, test) splits of a user's interactions, 80/10/10 by the split method.

    per-user (the default with a time column): each user's latest 10% of interactions test,
    the 10% before them validate (leave-last-out by share: every active user has a history).
    global: one time cutoff for everyone (a user seen only late has no history to score from).
    random (the default without a time column): each user's interactions at random.
    The test history is everything before the test holdout (train + validation rows); the
    validation history is the train rows only. Items a user already interacted with are
    not recommended again. `checked`: the table as `check_own_interactions` already read it.
    """
    from models.recommendation import Interactions, check_interactions  # here: checking needs no MLflow

    frame = (checked or check_own_interactions(own)).frame
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


def own_online_rows(
    path: Path,
    id_column: str,
    split_by: str | None = None,
    exclude: tuple[str, ...] = (),
    schema: Path | str | None = None,
    today: dt.date | None = None,
) -> tuple[pd.DataFrame, TypedTable]:
    """A user's table as online rows: the latest row per id, typed exactly as training types it.

    Returns (`customer_key`, `as_of` and the feature columns; the typed table with every
    column's decision). With `split_by` each id's newest row is kept and its date is the
    row's `as_of`; without, the table is one snapshot as of `today`. Columns in `exclude`
    (the label, outcomes) are never written; the id must be unique without `split_by`.
    """
    frame = read_own_table(path)
    missing = [c for c in exclude if c not in frame.columns]
    if missing:
        raise TrainingInputError(f"{path}: --exclude column {missing[0]!r} is not in the table")
    roles: dict[str, Role] = {id_column: "id", **dict.fromkeys(exclude, "dropped")}
    options = {id_column: "--id"}
    if split_by:
        roles[split_by], options[split_by] = "split", "--split-by"
    typed = typed_table(path, frame.drop(columns=list(exclude)), roles, options, schema)
    rows = typed.frame
    if rows[id_column].isna().any():
        raise TrainingInputError(
            f"{path}: --id column {id_column!r} is blank on {_rows(int(rows[id_column].isna().sum()))}"
        )
    if split_by:
        rows = rows.sort_values(split_by, kind="stable").drop_duplicates(id_column, keep="last")
        as_of: pd.Series = pd.to_datetime(rows[split_by]).dt.date
    else:
        repeated = rows[id_column].duplicated()
        if repeated.any():
            raise TrainingInputError(
                f"{path}: ids in {id_column!r} repeat ({int(repeated.sum())} repeats); give --split-by <date column> "
                "to keep each id's newest row"
            )
        as_of = pd.Series([today or dt.datetime.now(dt.UTC).date()] * len(rows), index=rows.index, dtype=object)
    features = [*typed.numeric, *typed.categorical]
    out = pd.DataFrame({"customer_key": rows[id_column].astype(str), "as_of": as_of})
    for col in typed.numeric:
        out[col] = pd.to_numeric(rows[col], errors="coerce").astype("float64")
    for col in typed.categorical:
        out[col] = rows[col].astype("object").where(rows[col].notna(), None)
    return out[["customer_key", "as_of", *features]].reset_index(drop=True), typed
