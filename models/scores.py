"""Batch scores: every customer scored by a model's champion as of a cutoff, kept as a table under the home.

Layout: `<home>/scores/<registered model>/as_of=<date>/data.parquet`, one row per customer:
customer_key, score, model, model_version, as_of. The same scorer (`BatchScorer`) runs in
this process on DuckDB's rows and in Spark's Python workers (`mapInPandas`, the model shipped
once per partition), so both engines give the same floats for the same model and features.
A score is personal data (an inference about a person): `ScoresStore` puts the table within
reach of access and erasure requests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from custintel.atomic_files import replace_atomically
from custintel.settings import Settings
from features.personal import OfflineFeatureStore

SCORE_SCHEMA = pa.schema(
    [
        pa.field("customer_key", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("as_of", pa.date32()),
    ]
)


class BatchScoringError(ValueError):
    """A batch scoring cannot run: no champion, no features for the cutoff, a missing input; the message says."""


@dataclass(frozen=True)
class BatchScorer:
    """A fitted model and the columns it reads: customer rows in, (customer_key, score) out.

    Picklable, so Spark ships it to each partition once; the model's own preparation step
    types the columns as it did in training.
    """

    model: Any
    columns: tuple[str, ...]

    def score(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The positive class's probability for each row (customer_key kept, in the rows' order)."""
        if rows.empty:
            return pd.DataFrame({"customer_key": pd.Series([], dtype=object), "score": pd.Series([], dtype=float)})
        scores = np.asarray(self.model.predict_proba(rows[list(self.columns)]))[:, 1]
        return pd.DataFrame({"customer_key": rows["customer_key"].astype(str).to_numpy(), "score": scores})

    def __call__(self, batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """`mapInPandas`' form: each Arrow batch of a partition scored in turn."""
        for rows in batches:
            yield self.score(rows)


def missing_inputs(columns: Sequence[str], available: Sequence[str]) -> list[str]:
    """The model's inputs that no stored feature set holds."""
    have = set(available)
    return [c for c in columns if c not in have]


def scores_table(scored: pd.DataFrame, model: str, version: str, as_of: dt.date) -> pa.Table:
    """The scores as stored: sorted by customer key, with the model, its version and the cutoff on every row."""
    scored = scored.sort_values("customer_key", kind="stable")
    n = len(scored)
    return pa.table(
        {
            "customer_key": pa.array(scored["customer_key"].astype(str).to_numpy(), pa.string()),
            "score": pa.array(scored["score"].astype("float64").to_numpy(), pa.float64()),
            "model": pa.array([model] * n, pa.string()),
            "model_version": pa.array([str(version)] * n, pa.string()),
            "as_of": pa.array([as_of] * n, pa.date32()),
        },
        schema=SCORE_SCHEMA,
    )


def scores_root(settings: Settings) -> Path:
    """Where batch scores are kept."""
    return settings.home_dir / "scores"


def scores_path(settings: Settings, model: str, as_of: dt.date) -> Path:
    """The file of one model's scores as of a cutoff."""
    return scores_root(settings) / model / f"as_of={as_of.isoformat()}" / "data.parquet"


def write_scores(settings: Settings, table: pa.Table, model: str, as_of: dt.date) -> Path:
    """Write (or replace, atomically) one model's scores as of a cutoff."""
    path = scores_path(settings, model, as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, partial(pq.write_table, table, compression="zstd"))
    return path


def read_scores(settings: Settings, model: str, as_of: dt.date) -> pa.Table:
    """One model's stored scores as of a cutoff."""
    path = scores_path(settings, model, as_of)
    if not path.is_file():
        raise BatchScoringError(f"no scores of {model} as of {as_of} under {scores_root(settings)}")
    return pq.read_table(path)


class ScoresStore(OfflineFeatureStore):
    """The batch scores, as a personal store: rows keyed by customer key, found and erased like feature rows."""

    name = "models.scores"

    def _files(self) -> list[Path]:
        root = scores_root(self.settings)
        return sorted(root.glob("*/as_of=*/data.parquet")) if root.is_dir() else []
