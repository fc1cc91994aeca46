"""The feature build's inputs step (lake read, crosswalk split and join, suppression drop) on DuckDB and on Spark.

`python -m benchmarks.bench_spark_inputs --home <a resolved home>` (one the tests or `make bench-spark` made).
Three contenders, in turn, `--repeats` times each, in one process with one Spark session already started (the
JVM's start is `bench_spark`'s business):

- duckdb:        `open_feature_inputs`, the DuckDB engine's step;
- spark, staged: the Spark engine before issue 23's follow-up: DuckDB's step, then every input table copied to
                 Parquet and read back by Spark (`SparkSqlConnection(spark, duckdb_connection, ...)`);
- spark:         `open_spark_inputs`: Spark reads the lake and the crosswalk itself (the same statements).

Each Spark contender counts every input table, so its cached views are built, not only planned. Medians and
the ratios against duckdb; the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from custintel.settings import Settings
from features.featurestore.spark_sql import INPUT_TABLES, SparkSqlConnection
from features.featurestore.steps import open_feature_inputs, open_spark_inputs
from features.featurestore.store import feature_config
from features.spark_engine import spark_session, spark_work_dir, stop_spark


def _count_all(con: SparkSqlConnection) -> None:
    for table in INPUT_TABLES:
        con.sql(f"SELECT count(*) FROM {table}").fetchall()


def run(home: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds per contender and repeat."""
    duck = Settings(home=home, engine="duckdb")
    spark_settings = Settings(home=home, engine="spark")
    config = feature_config(duck)
    spark = spark_session(spark_settings)

    def duckdb_step() -> None:
        con, _ = open_feature_inputs(duck, config)
        con.close()

    def staged_step() -> None:
        con, _ = open_feature_inputs(duck, config)
        staged = SparkSqlConnection(spark, con, spark_work_dir(spark_settings, "inputs"))
        _count_all(staged)
        staged.close()
        con.close()

    def spark_step() -> None:
        con, _ = open_spark_inputs(spark_settings, config)
        assert isinstance(con, SparkSqlConnection)
        _count_all(con)
        con.close()

    steps: dict[str, Callable[[], None]] = {"duckdb": duckdb_step, "spark, staged": staged_step, "spark": spark_step}
    spark_step()  # warm: Spark's first query plans and class loading
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    """Measure and print one line per contender."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a resolved custintel home")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each contender, in turn")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    try:
        times = run(args.home, args.repeats)
    finally:
        stop_spark()
    after = os.getloadavg()[0]
    base = statistics.median(times["duckdb"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        runs = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{name:14s} median {median:6.2f} s  ({runs})  x{median / base:.2f} of duckdb")  # noqa: T201
    print(f"load average {before:.1f} before, {after:.1f} after")  # noqa: T201


if __name__ == "__main__":
    main()
