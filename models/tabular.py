"""Tabular inputs of any origin: which columns are numbers, which are categories, which to leave out.

The same inference serves the feature store's tables and a user's own snapshot table
(`custintel train churn --table`), so both reach the model through one preprocessing
step, `FramePreparer`, which travels inside the logged pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted


class TabularSchemaError(ValueError):
    """A table cannot be used for training; the message names the column and the reason."""


@dataclass(frozen=True)
class TabularSchema:
    """How each column of a table is used."""

    numeric: list[str]
    categorical: list[str]
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature

    @property
    def features(self) -> list[str]:
        """The model's input columns, in order."""
        return [*self.numeric, *self.categorical]

    def describe(self) -> list[dict[str, str]]:
        """One row per column: name, role and why (for printing and logging)."""
        rows = [{"column": c, "role": "numeric", "note": ""} for c in self.numeric]
        rows += [{"column": c, "role": "categorical", "note": ""} for c in self.categorical]
        rows += [{"column": c, "role": "dropped", "note": why} for c, why in self.dropped.items()]
        return rows


def infer_schema(
    frame: pd.DataFrame,
    exclude: Sequence[str] = (),
    max_categories: int = 200,
    max_missing: float = 0.98,
) -> TabularSchema:
    """Decide each column's role from its values.

    Numbers and booleans are numeric; strings and categories with at most
    `max_categories` distinct values are categorical. Left out, with the reason:
    the `exclude` columns (ids, labels), text with too many distinct values (names,
    free text, identifiers), dates (a model cannot reuse an absolute date next
    year), columns that are almost always empty, and constant columns.
    """
    numeric: list[str] = []
    categorical: list[str] = []
    dropped: dict[str, str] = {}
    for col in frame.columns:
        name = str(col)
        values = frame[col]
        if name in exclude:
            dropped[name] = "id, label or time column"
            continue
        missing = float(values.isna().mean()) if len(values) else 1.0
        if missing > max_missing:
            dropped[name] = f"{missing:.0%} missing"
            continue
        if values.nunique(dropna=True) <= 1:
            dropped[name] = "constant"
            continue
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            numeric.append(name)
        elif pd.api.types.is_datetime64_any_dtype(values) or _looks_like_dates(values):
            dropped[name] = "date or time (derive ages or recencies from it instead)"
        elif values.nunique(dropna=True) <= max_categories:
            categorical.append(name)
        else:
            dropped[name] = f"text with {values.nunique(dropna=True)} distinct values (more than {max_categories})"
    if not numeric and not categorical:
        raise TabularSchemaError(f"no usable feature column; every column was left out: {dropped}")
    return TabularSchema(numeric, categorical, dropped)


def _looks_like_dates(values: pd.Series) -> bool:
    sample = values.dropna().astype(str).head(200)
    if sample.empty or not sample.str.match(r"^\d{4}-\d{2}-\d{2}").all():
        return False
    return bool(pd.to_datetime(sample, errors="coerce").notna().all())


def _as_float(value: Any) -> float:
    """What pd.to_numeric(errors='coerce') makes of one value."""
    if value is None or isinstance(value, bool):
        return float(value) if isinstance(value, bool) else np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


_PLAIN_NUMBERS = frozenset({float, int, bool, type(None)})  # what float() and NumPy convert alike


def _numeric_block(records: Sequence[Mapping[str, Any]], columns: list[str], checked: bool = False) -> np.ndarray:
    """The records' values of `columns` as floats, as `_as_float` makes them.

    `checked`: the caller knows every value is a plain number (int, float, bool) or None, so
    the values' types are not inspected.
    """
    rows: list[Any]
    if len(columns) == 1:
        rows = [r.get(columns[0]) for r in records]
    else:
        take = itemgetter(*columns)
        try:
            rows = [take(r) for r in records]
        except KeyError:  # a record without some column: None (missing), as `.get` gives
            rows = [tuple(r.get(c) for c in columns) for r in records]
    flat = chain.from_iterable(rows) if len(columns) > 1 else rows
    if checked or set(map(type, flat)) <= _PLAIN_NUMBERS:
        try:
            return np.array(rows, dtype=float).reshape(len(records), len(columns))  # None becomes NaN
        except OverflowError:
            pass
    by_value = rows if len(columns) > 1 else [(v,) for v in rows]
    return np.array([[_as_float(v) for v in row] for row in by_value], dtype=float).reshape(len(records), len(columns))


class FramePreparer(TransformerMixin, BaseEstimator):
    """Numbers to float, categories to pandas categoricals with the categories seen in fit.

    Unseen categories and missing values become missing, which LightGBM handles
    natively; columns arrive in the fitted order whatever order they are given in.
    """

    def __init__(self, numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> None:
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, X: pd.DataFrame, y: Any = None) -> FramePreparer:  # noqa: N803 (scikit-learn's name)
        """Learn each categorical column's categories."""
        self._check_columns(X)
        self.categories_ = {
            c: sorted({str(v) for v in X[c].dropna().unique()}) for c in self.categorical
        }  # fmt: skip
        self.feature_names_in_ = np.array([*self.numeric, *self.categorical], dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803
        """The model's input frame."""
        check_is_fitted(self, "categories_")
        self._check_columns(X)
        out: dict[str, Any] = {}
        for c in self.numeric:
            out[c] = pd.to_numeric(X[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        for c in self.categorical:
            values = X[c].astype("object").where(X[c].notna(), None)
            text = values.map(lambda v: None if v is None else str(v))
            out[c] = pd.Categorical(text, categories=self.categories_[c])
        return pd.DataFrame(out, index=X.index)

    def records_matrix(self, records: Sequence[Mapping[str, Any]], numbers_checked: bool = False) -> np.ndarray:
        """`transform`'s inputs as a float matrix, without pandas: for serving a few rows fast.

        Numbers as floats (anything unparsable missing), categories as their codes in the fitted
        order (unseen or missing: NaN), columns in `transform`'s order. A LightGBM model fitted
        on `transform`'s frame reads exactly these codes for its categorical features. Numbers
        are converted a whole block at a time when every value is a plain JSON number or null,
        value by value otherwise; `numbers_checked` says the caller knows the numeric columns'
        values are plain numbers or null (the online store's typed documents), so they are not inspected.
        """
        check_is_fitted(self, "categories_")
        numeric, categorical = list(self.numeric), list(self.categorical)
        out = np.full((len(records), len(numeric) + len(categorical)), np.nan)
        if numeric and records:
            out[:, : len(numeric)] = _numeric_block(records, numeric, numbers_checked)
        for k, c in enumerate(categorical, start=len(numeric)):
            codes = {v: float(i) for i, v in enumerate(self.categories_[c])}
            out[:, k] = [np.nan if (v := r.get(c)) is None else codes.get(str(v), np.nan) for r in records]
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The output columns: numeric, then categorical."""
        return np.array([*self.numeric, *self.categorical], dtype=object)

    def _check_columns(self, X: pd.DataFrame) -> None:  # noqa: N803
        if not isinstance(X, pd.DataFrame):
            raise TabularSchemaError("expected a pandas DataFrame with named columns")
        missing = [c for c in [*self.numeric, *self.categorical] if c not in X.columns]
        if missing:
            raise TabularSchemaError(f"input lacks column(s) {missing}")
