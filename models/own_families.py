"""A user's own tables for the uplift and propensity families (churn and recommendation: `own_tables`).

`custintel train uplift --table F --id C --treatment T --outcome O` learns who an action
persuades from one randomised experiment: a row per participant, the arm they were in,
the outcome, and features from before the assignment. `custintel train propensity --table
F --id C --product P --label B` learns who buys what: a row per (customer, product) pair
with whether they bought it. Every problem with the file is a `TrainingInputError` naming
the file, the column and the reason, found before anything slow starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from models.own_tables import TrainingInputError, check_present, read_own_table, typed_table
from models.splits import LabelledTable, key_fractions, stage_at_random, stage_by_time
from models.table_types import FALSE_VALUES, TRUE_VALUES, Role, TypedTable

if TYPE_CHECKING:
    from models.tabular import TabularSchema

CONTROL_NAMES = frozenset({"control", "ctrl", "holdout", "hold-out", "hold_out", "baseline", "a"})
MIN_ARM_ROWS = 20  # fewer rows in an arm cannot estimate its outcome rate, let alone heterogeneity


@dataclass(frozen=True)
class OwnUplift:
    """A user's experiment table for uplift: one row per participant."""

    path: Path
    id_column: str
    treatment: str  # the arm: 0/1, true/false, or two names one of which is a control name
    outcome: str  # the binary outcome the action should raise (converted, retained, ...)
    test_share: float = 0.3
    schema: Path | str | None = None  # a --schema file overriding the inferred column types


@dataclass(frozen=True)
class OwnPropensity:
    """A user's (customer, product) table for propensity: one row per pair, bought or not."""

    path: Path
    id_column: str
    product: str
    label: str  # bought within the user's own window
    split_by: str | None = None  # a date column: earlier rows train, later ones test; else by customer at random
    schema: Path | str | None = None  # a --schema file overriding the inferred column types


def binary_column(path: Path, frame: pd.DataFrame, column: str, role: str) -> pd.Series:
    """A 0/1-like column as booleans; anything else (or one value only) is an error naming the values."""
    values = frame[column]
    if values.isna().any():
        raise TrainingInputError(f"{path}: {role} column {column!r} is empty on {int(values.isna().sum())} row(s)")
    text = values.astype(str).str.strip().str.lower()
    found = set(text.unique())
    if not found <= TRUE_VALUES | FALSE_VALUES or len(found) < 2:
        raise TrainingInputError(
            f"{path}: {role} column {column!r} must be binary (0/1, true/false, yes/no) with both values; "
            f"found {sorted(found)[:10]}"
        )
    return text.isin(TRUE_VALUES)


def treatment_column(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    """The arm as booleans (True: treated): binary values, or two arm names one of which names the control."""
    values = frame[column]
    if values.isna().any():
        raise TrainingInputError(f"{path}: --treatment column {column!r} is empty on {int(values.isna().sum())} row(s)")
    text = values.astype(str).str.strip().str.lower()
    arms = sorted(text.unique())
    if set(arms) <= TRUE_VALUES | FALSE_VALUES and len(arms) == 2:
        return text.isin(TRUE_VALUES)
    control = [a for a in arms if a in CONTROL_NAMES]
    if len(arms) != 2 or len(control) != 1:
        raise TrainingInputError(
            f"{path}: --treatment column {column!r} must hold two arms, 0/1 or a treatment and a control "
            f"({', '.join(sorted(CONTROL_NAMES))}); found {arms[:10]}"
        )
    return text != control[0]


def own_uplift_table(own: OwnUplift, seed: int, frame: pd.DataFrame | None = None) -> LabelledTable:
    """The experiment's rows as `retained` (the outcome) and `treated`, split at random within arm x outcome."""
    frame = read_own_table(own.path) if frame is None else frame
    check_present(own.path, frame, {own.id_column: "--id", own.treatment: "--treatment", own.outcome: "--outcome"})
    if frame[own.id_column].duplicated().any():
        raise TrainingInputError(
            f"{own.path}: ids in {own.id_column!r} repeat; an experiment table has one row per participant"
        )
    treated = treatment_column(own.path, frame, own.treatment)
    outcome = binary_column(own.path, frame, own.outcome, "--outcome")
    roles: dict[str, Role] = {own.id_column: "id", own.treatment: "label", own.outcome: "label"}
    typed = typed_table(own.path, frame, roles, {own.id_column: "--id"}, own.schema)
    frame = typed.frame
    for name, arm in (("treated", treated), ("control", ~treated)):
        if int(arm.sum()) < MIN_ARM_ROWS:
            raise TrainingInputError(
                f"{own.path}: the {name} arm of {own.treatment!r} has {int(arm.sum())} row(s); "
                f"at least {MIN_ARM_ROWS} per arm are needed"
            )
    rows = frame.drop(columns=[own.treatment, own.outcome])
    rows[own.id_column] = rows[own.id_column].astype(str)
    rows["retained"], rows["treated"] = outcome.to_numpy(), treated.to_numpy()
    decided = _schema(typed)
    strata = rows["treated"].astype(str) + ":" + rows["retained"].astype(str)
    stage = stage_at_random(strata, seed, (1 - own.test_share, 0.0, own.test_share))
    return LabelledTable(
        frame=rows.reset_index(drop=True),
        id_column=own.id_column,
        label="retained",
        stage=stage.reset_index(drop=True),
        not_features=("treated",),
        lineage=str(own.path.resolve()),
        label_definition=f"{own.outcome} (from {own.path.name}), treated when {own.treatment} is the treatment arm",
        schema=decided[0],
        schema_report=decided[1],
    )


def own_propensity_table(own: OwnPropensity, seed: int, frame: pd.DataFrame | None = None) -> LabelledTable:
    """(customer, product) rows as `product_id` and `bought`, split by time or by customer at random.

    Without a date column every customer's pairs fall in one stage (a hashed share of the
    customers), so the test measures customers the model never saw.
    """
    frame = read_own_table(own.path) if frame is None else frame
    options = {own.id_column: "--id", own.product: "--product", own.label: "--label"}
    check_present(own.path, frame, options | ({own.split_by: "--split-by"} if own.split_by else {}))
    keys = [own.id_column, own.product, *([own.split_by] if own.split_by else [])]
    repeated = frame.duplicated(subset=keys)
    if repeated.any():
        raise TrainingInputError(
            f"{own.path}: {int(repeated.sum())} row(s) repeat a ({', '.join(keys)}) pair; one row per pair"
        )
    bought = binary_column(own.path, frame, own.label, "--label")
    roles: dict[str, Role] = {own.id_column: "id", own.product: "feature", own.label: "label"}
    if own.split_by:
        roles[own.split_by] = "split"
    typed = typed_table(
        own.path,
        frame,
        roles,
        {own.id_column: "--id", own.product: "--product"},
        own.schema,
        {own.product: "behavioural"},
    )
    frame = typed.frame.assign(**{own.product: typed.frame[own.product].astype("string")})
    rows = frame.drop(columns=[own.label]).rename(columns={own.product: "product_id"})
    rows = rows.assign(
        **{own.id_column: rows[own.id_column].astype(str), "product_id": rows["product_id"].astype(str)},
        bought=bought.to_numpy(),
    ).reset_index(drop=True)
    decided = _schema(typed, {own.product: "product_id"})
    if own.split_by:
        stage = stage_by_time(rows[own.split_by])
    else:
        fraction = key_fractions(rows[own.id_column], f"custintel-propensity-{seed}")
        stage = pd.Series(
            np.where(fraction < 0.6, "train", np.where(fraction < 0.8, "valid", "test")), index=rows.index
        )
        for name in ("train", "valid", "test"):
            if not (stage == name).any():
                raise TrainingInputError(f"{own.path}: too few customers to split; the {name} stage would be empty")
    return LabelledTable(
        frame=rows,
        id_column=own.id_column,
        label="bought",
        stage=stage,
        snapshot=own.split_by,
        lineage=str(own.path.resolve()),
        label_definition=f"{own.label} (from {own.path.name}) per customer and {own.product}",
        schema=decided[0],
        schema_report=decided[1],
    )


def _schema(
    typed: TypedTable, renamed: dict[str, str] | None = None
) -> tuple[TabularSchema, tuple[dict[str, str], ...]]:
    """The features decided before training, as `LabelledTable` fields (the product always a categorical)."""
    from models.tabular import TabularSchema as Schema  # here: checking a table needs no scikit-learn

    renamed = renamed or {}
    numeric = [renamed.get(c, c) for c in typed.numeric if c not in renamed]
    categorical = [renamed.get(c, c) for c in typed.categorical if c not in renamed] + list(renamed.values())
    report = tuple(
        {**row, "column": renamed.get(row["column"], row["column"])}
        | ({"role": "feature", "type": "categorical"} if row["column"] in renamed else {})
        for row in typed.describe()
    )
    return Schema(numeric, categorical, typed.dropped), report
