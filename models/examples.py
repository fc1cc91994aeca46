"""Input examples that hold no person's row.

MLflow keeps a model's input example beside it (`input_example.json`, `serving_input_example.json`)
for as long as the model exists. A few real test rows there would be personal data that no
erasure could reach without rewriting the model. The example logged instead is one made-up row:
each column's median (numbers) or commonest value (categories, flags) over the training rows,
and a placeholder for identifier columns, in the example's own dtypes, so the signature inferred
from it is the one real rows give.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

PLACEHOLDER_KEY = "example-customer"  # an identifier column's value: nobody's key


def _typical(values: pd.Series) -> object:
    """The median of numbers (rounded for integers), else the commonest value; None when all are missing."""
    present = values.dropna()
    if present.empty:
        return None
    if pd.api.types.is_bool_dtype(values):
        return bool(present.mode().iloc[0])
    if pd.api.types.is_numeric_dtype(values):
        median = float(np.median(present.to_numpy(dtype=float)))
        return int(round(median)) if pd.api.types.is_integer_dtype(values) else median
    return present.mode().iloc[0]


def impersonal_example(
    example: pd.DataFrame, frame: pd.DataFrame | None, id_columns: Iterable[str] = ("customer_key",)
) -> pd.DataFrame:
    """One row with `example`'s columns and dtypes, made of the columns' typical values in `frame`.

    A column `frame` lacks (or holds with another dtype) takes its typical value in `example`.
    Identifier columns get `PLACEHOLDER_KEY`.
    """
    ids = set(id_columns)
    out = example.iloc[:1].copy().reset_index(drop=True)
    for column in example.columns:
        if column in ids:
            out[column] = pd.Series([PLACEHOLDER_KEY], dtype=example[column].dtype)
            continue
        source = example[column]
        if frame is not None and column in frame.columns and frame[column].dtype == example[column].dtype:
            source = frame[column]
        value = _typical(source)
        if value is None:
            out[column] = pd.Series([None], dtype=example[column].dtype if example[column].dtype != bool else object)
        else:
            out[column] = pd.Series([value]).astype(example[column].dtype)
    return out
