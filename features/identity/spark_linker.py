"""Splink's Spark backend for the probabilistic pass (the `spark` engine).

`spark_linker` gives a Splink Linker on this process's Spark session (`features.spark_engine`)
over the same linker input the DuckDB engine sees, every column a string. Two things differ
from Splink's defaults:

* the u sample: with a seed, Splink on Spark orders the records by ``rand(seed)``, whose values
  depend on how the rows happen to be partitioned (the master, the shuffle). Here the order is
  a seeded hash of the record key, so the sample, and the model, are the same on any master;
* the intermediate tables: Splink writes them as Parquet under the Spark checkpoint folder and
  leaves them there. They hold names, birth dates and emails, so they are deleted when the
  linker is done (the stores of personal data are the identity outputs, which the DSAR reaches).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pandas as pd

from custintel.settings import Settings
from features.spark_engine import spark_session

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from splink import Linker, SettingsCreator

UNIQUE_ID = "record_key"


def _seeded_dialect() -> Any:
    """Splink's Spark dialect, its seeded random sample taken in the order of a seeded hash of the record key."""
    from splink.internals.dialects import SparkDialect

    class SeededSparkDialect(SparkDialect):
        def random_sample_sql(
            self,
            proportion: float,
            sample_size: float,
            seed: int | None = None,
            table: str | None = None,
            unique_id: str | None = None,
        ) -> str:
            if proportion == 1.0 or seed is None:
                return str(super().random_sample_sql(proportion, sample_size, seed, table, unique_id))
            return f" ORDER BY xxhash64({UNIQUE_ID}, {int(seed)}), {UNIQUE_ID} LIMIT {round(sample_size)}"

    return SeededSparkDialect()


def spark_frame(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    """The pandas linker input as a Spark DataFrame, every column a nullable string (as DuckDB reads it)."""
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField(str(c), StringType(), nullable=True) for c in frame.columns])
    strings = frame.astype("string").astype(object)
    strings = strings.where(frame.notna(), None)
    return spark.createDataFrame(strings, schema=schema)


def _checkpoint_dir(spark: SparkSession) -> Path | None:
    """The session's checkpoint folder when it is on this machine's file system."""
    option = spark.sparkContext._jsc.sc().getCheckpointDir()  # noqa: SLF001 - no public getter before Spark 4
    if option.isEmpty():
        return None
    url = urlparse(str(option.get()))
    return Path(url.path) if url.scheme in ("", "file") else None


def _remove_splink_tables(folder: Path | None, before: set[str]) -> None:
    if folder is None or not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith("__splink__") and path.name not in before:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def spark_linker(
    frame: pd.DataFrame, settings: SettingsCreator | dict[str, Any], custintel: Settings
) -> Iterator[Linker]:
    """A Splink Linker on Spark over `frame`; Splink's tables and files are removed when the block ends."""
    spark = spark_session(custintel)  # SparkUnavailable: no Java, no pyspark
    from splink import Linker
    from splink.backends.spark import SparkAPI

    # Splink breaks each intermediate table's lineage by writing it as Parquet under the checkpoint folder
    # (persisting instead was several times slower: EM's plans then grow with every iteration)
    api = SparkAPI(spark_session=spark, break_lineage_method="parquet")
    api.sql_dialect = _seeded_dialect()  # this instance's dialect; the class's is Splink's own
    folder = _checkpoint_dir(spark)
    before = {p.name for p in folder.iterdir()} if folder is not None and folder.is_dir() else set()
    table = spark_frame(spark, frame)  # Splink takes a Spark DataFrame, though its hints say table names
    linker = Linker(table, settings, db_api=api, set_up_basic_logging=False)  # type: ignore[arg-type]
    try:
        yield linker
    finally:
        _release(api)
        _remove_splink_tables(folder, before)


def _release(api: Any) -> None:
    """Drop every view Splink made (the session may outlive this linker); the files go next."""
    api.delete_tables_created_by_splink_from_db()
