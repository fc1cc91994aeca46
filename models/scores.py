"""Batch scores: every customer scored by a model's champion as of a cutoff, kept as a table under the home.

Layout: `<home>/scores/<registered model>/as_of=<date>/data.parquet`, one row per customer:
customer_key, score, model, model_version, as_of. The same scorer (`BatchScorer`) runs in
this process on DuckDB's rows and in Spark's Python workers (`mapInPandas`, the model shipped
once per partition), so both engines give the same floats for the same model and features.
A score is personal data (an inference about a person): `ScoresStore` puts the table within
reach of access and erasure requests, and `expire_scores` removes the cutoffs the retention
policy says are due (store `batch_scores`).
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
import warnings
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from custintel.atomic_files import replace_atomically
from custintel.retention import Expiry, Item
from custintel.settings import Settings
from features.personal import OfflineFeatureStore

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

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


def check_inputs(columns: Sequence[str], available: Sequence[str]) -> None:
    """Raise naming the model's inputs that no stored feature set holds."""
    have = set(available)
    lacking = [c for c in columns if c not in have]
    if lacking:
        raise BatchScoringError(f"the model reads {', '.join(lacking)}, which no feature set it was trained on holds")


# Above this many keys the consent list is joined as Spark chooses (sort-merge) instead of broadcast to every
# executor: a million 36-character keys is about 40 MB, as much as one should ship to each.
BROADCAST_KEYS = 1_000_000


def consented_rows(spark: SparkSession, files: Sequence[str], keys: Collection[str], only: bool) -> DataFrame:
    """The sets' partitions joined by customer and cutoff, less those consent leaves out (see `score_on_spark`)."""
    from pyspark.sql import functions as F  # noqa: N812 - Spark's own idiom

    frame = spark.read.parquet(files[0])
    for path in files[1:]:
        frame = frame.join(spark.read.parquet(path), ["customer_key", "as_of"])
    if only or keys:
        with warnings.catch_warnings():  # pyspark 3.5's own use of deprecated pandas and distutils names
            warnings.simplefilter("ignore", DeprecationWarning)
            listed = spark.createDataFrame(
                pd.DataFrame({"customer_key": pd.Series(sorted(map(str, keys)), dtype=object)}), "customer_key string"
            )
        listed = F.broadcast(listed) if len(keys) <= BROADCAST_KEYS else listed
        frame = frame.join(listed, "customer_key", "left_semi" if only else "left_anti")
    return frame


def score_on_spark(
    spark: SparkSession, scorer: BatchScorer, files: Sequence[str], keys: Collection[str] = (), only: bool = False
) -> pd.DataFrame:
    """Join the sets' partitions in Spark and score them with `mapInPandas` (the scorer shipped once per partition).

    Consent: the customers in `keys` are left out (those who withdrew the purpose), or with `only`
    they are the only ones scored (those who granted it, when unknown consent excludes). The keys
    are a one-column DataFrame joined to the rows (left anti, or left semi with `only`), broadcast
    while small, so the plan stays one join however many keys there are (no `isin` list of literals).
    """
    frame = consented_rows(spark, files, keys, only)
    check_inputs(scorer.columns, frame.columns)
    rows = frame.select("customer_key", *scorer.columns)
    scored = rows.mapInPandas(scorer, "customer_key string, score double")
    collected = scored._collect_as_arrow()  # noqa: SLF001 - Spark 3.5's Arrow collect (public toArrow is 4.0)
    if not collected:
        return scorer.score(pd.DataFrame(columns=["customer_key", *scorer.columns]))
    return pa.Table.from_batches(collected).to_pandas()


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


_PARTITION = "as_of="
_EXPIRED = ".expired-"  # a partition being removed: renamed out of readers' sight, then deleted


def _rows(path: Path) -> int:
    """Rows a scores file holds, from its footer (no data read); 0 when there is no readable file."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, pa.ArrowException):
        return 0


def _remove_partition(folder: Path) -> None:
    """Remove a partition in one step as readers see it: renamed to a hidden name, then deleted.

    Readers (`read_scores`, `ScoresStore`, a consumer globbing `as_of=*`) see the partition whole
    or not at all; a pass killed after the rename leaves a hidden folder that the next pass removes.
    """
    trash = folder.with_name(f"{_EXPIRED}{folder.name}-{uuid.uuid4().hex[:8]}")
    folder.rename(trash)
    shutil.rmtree(trash)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (or a scoring run is writing into it): it stays
        pass


def expire_scores(settings: Settings, before: dt.date, keep_latest: bool = True, dry_run: bool = False) -> Expiry:
    """Remove each model's scores whose cutoff is before `before`; a dry run only lists them.

    An item is a partition `<model>/as_of=<date>/`, dated by its cutoff (the data's date, never
    the file's), counted in rows. With `keep_latest` each model's newest cutoff with a scores
    file stays although due: it is the table `custintel score` last produced for the model, the
    one its consumers read. Each partition goes atomically (see `_remove_partition`); a model
    folder left empty goes too, and so does the scores folder. A folder whose name holds no date
    stays, with the reason.
    """
    expiry = Expiry("batch_scores")
    root = scores_root(settings)
    if not root.is_dir():
        return expiry
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        leftovers = sorted(p for p in model_dir.glob(f"{_EXPIRED}*") if p.is_dir())
        partitions: list[tuple[Path, dt.date | None]] = []
        for folder in sorted(p for p in model_dir.glob(f"{_PARTITION}*") if p.is_dir()):
            try:
                partitions.append((folder, dt.date.fromisoformat(folder.name.removeprefix(_PARTITION))))
            except ValueError:
                partitions.append((folder, None))
        scored = [day for folder, day in partitions if day is not None and (folder / "data.parquet").is_file()]
        latest = max(scored) if keep_latest and scored else None
        for folder, day in partitions:
            item = Item(f"{model_dir.name}/{folder.name}", day or dt.date.min, _rows(folder / "data.parquet"))
            if day is None:
                item.reason = "the folder name holds no cutoff date"
                expiry.kept.append(item)
            elif day < before and day == latest:
                item.reason = f"the latest scores of {model_dir.name}: the table its consumers read (keep_latest)"
                expiry.kept.append(item)
            elif day < before:
                if not dry_run:
                    _remove_partition(folder)
                expiry.removed.append(item)
            else:
                expiry.kept.append(item)
        if not dry_run:
            for trash in leftovers:  # a pass killed between its rename and its delete
                shutil.rmtree(trash, ignore_errors=True)
                expiry.notes.append(f"removed {model_dir.name}/{trash.name}: left by an earlier pass")
            _remove_if_empty(model_dir)
    if not dry_run:
        _remove_if_empty(root)
    return expiry
