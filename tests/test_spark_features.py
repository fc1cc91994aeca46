"""Feature builds on Spark equal DuckDB's: the same definitions (transpiled), the same rows, value for value.

One Spark session for the module (features.spark_engine's), stopped at its end. The DuckDB side is the
session's `featured` home; the Spark side builds two of its cutoffs again into a copy with `engine: spark`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from custintel.settings import Settings
from features.featurestore.offline import read_offline
from features.featurestore.spark_sql import SparkSqlError, to_spark_sql

DAYS = [dt.date(2024, 11, 1), dt.date(2025, 6, 1)]
SETS = ["relationship@1", "value@1", "service@1", "digital@1", "attributes@1", "interactions@1", "labels@1",
        "purchase_labels@1"]  # fmt: skip


@pytest.fixture(scope="module")
def spark_built(featured: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict]]:
    """The Spark build of DAYS by `--data-engine spark`, into a copy of the featured home without features."""
    from typer.testing import CliRunner

    from features.spark_engine import stop_spark
    from flows.cli import app

    home = tmp_path_factory.mktemp("spark_features") / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts", "offline"))
    settings = Settings(home=home, training_config=featured.training_config)
    days = [arg for d in DAYS for arg in ("--as-of", str(d))]
    try:
        result = CliRunner().invoke(
            app, ["--home", str(home), "features", *days, "--data-engine", "spark", "--engine", "local", "--no-online"]
        )
        assert result.exit_code == 0, result.output
        yield settings, json.loads((settings.features_dir / "manifest.json").read_text())
    finally:
        stop_spark()


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b


def _sorted(table: pa.Table) -> pa.Table:
    keys = [c for c in ("as_of", "customer_key", "product_id") if c in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys])


@pytest.mark.parametrize("key", SETS)
def test_spark_builds_every_set_as_duckdb_does(featured: Settings, spark_built: tuple[Settings, dict], key: str):
    spark_settings, _ = spark_built
    duck = _sorted(read_offline(featured.features_dir / "offline", key, DAYS))
    spark = _sorted(read_offline(spark_settings.features_dir / "offline", key, DAYS))
    assert spark.num_rows == duck.num_rows > 0
    assert spark.schema.equals(duck.schema), f"{spark.schema}\n!=\n{duck.schema}"
    for name in duck.column_names:
        ours, theirs = spark.column(name).to_pylist(), duck.column(name).to_pylist()
        bad = [(i, s, d) for i, (s, d) in enumerate(zip(ours, theirs, strict=True)) if not _close(s, d)]
        assert not bad, f"{key}.{name}: {len(bad)} value(s) differ, first {bad[:3]}"


def test_the_spark_build_records_where_it_ran_and_leaves_no_staged_inputs(spark_built: tuple[Settings, dict]):
    from features.spark_engine import spark_work_dir

    settings, report = spark_built
    assert report["engine"] == "spark (local[2])"
    assert sorted(report["as_of"]) == [str(d) for d in DAYS]
    assert not any(spark_work_dir(settings, "inputs").iterdir())  # Spark read the lake itself: nothing staged
    assert not (settings.home_dir / "spark" / "inputs").exists()


def test_spark_reads_the_lake_and_joins_the_crosswalk_as_duckdb_does(spark_built: tuple[Settings, dict]):
    """The inputs step itself on both engines: every canonical table and the summary equal, row for row."""
    from features.featurestore.spark_sql import SparkSqlConnection
    from features.featurestore.steps import open_feature_inputs, open_spark_inputs
    from features.featurestore.store import feature_config

    settings, _ = spark_built
    config = feature_config(settings)
    duck, duck_summary = open_feature_inputs(settings, config)
    spark, spark_summary = open_spark_inputs(settings, config)
    try:
        assert isinstance(spark, SparkSqlConnection)
        assert spark_summary == duck_summary
        for table in ("customers", "accounts", "profiles", "products", "transactions", "tickets", "surveys", "web",
                      "offers", "golden"):  # fmt: skip
            query = f"SELECT * FROM {table}"
            ours, theirs = spark.sql(query).to_arrow_table(), duck.sql(query).to_arrow_table()
            keys = [(c, "ascending") for c in theirs.column_names]
            assert ours.num_rows == theirs.num_rows, table
            assert ours.cast(theirs.schema).sort_by(keys).equals(theirs.sort_by(keys)), table
    finally:
        spark.close()
        duck.close()


@pytest.mark.parametrize("key", [b"k" * 32, b"a much longer privacy key than the hash's block of sixty-four bytes!"])
def test_the_suppression_list_is_matched_in_sql_alike_on_both_engines(
    tmp_path: Path, spark_built: tuple[Settings, dict], key: bytes
):
    """HMAC-SHA256 in SQL equals `suppression.digest`; a suppressed record takes its customer's every row out."""
    import duckdb
    import pandas as pd

    from features.featurestore.inputs import _drop_suppressed
    from features.featurestore.spark_sql import SparkSqlConnection
    from features.spark_engine import spark_session
    from features.suppression import Suppression, digest

    crosswalk = pd.DataFrame({"record_table": ["crm", "crm", "web", "web", "crm", "web"],
                              "record_id": ["1", " 2 ", "3", "4", "5", ""],
                              "customer_key": ["a", "a", "b", "c", None, "d"]})  # fmt: skip
    path = tmp_path / "crosswalk.parquet"
    crosswalk.to_parquet(path)
    listed = {digest(key, "record", "crm\x1f2"), digest(key, "customer_key", "c"), digest(key, "record_id", "3"),
              digest(key, "record", "web\x1f")}  # fmt: skip  # a blank id is none: d's row matches nothing
    suppression = Suppression(key, frozenset(listed))
    kept = []
    settings, _ = spark_built
    for con in (duckdb.connect(), SparkSqlConnection(spark_session(settings), None, tmp_path / "staging")):
        _drop_suppressed(con, f"SELECT * FROM read_parquet('{path}')", suppression)
        kept.append(sorted(con.sql("SELECT record_id, customer_key FROM crosswalk").fetchall(), key=str))
        con.close()
    assert kept[0] == kept[1] == [("", "d"), ("3", "b"), ("5", None)]  # a: by its record, c: by its key


def test_decimal_literals_divide_in_floating_point_as_in_duckdb():
    spark_sql = to_spark_sql("SELECT date_diff('second', a, b) / 86400.0 AS d, x / 2 AS h FROM t")
    assert "CAST(86400.0 AS DOUBLE)" in spark_sql and "x / 2" in spark_sql
    assert "DATEDIFF(SECOND, a, b)" in spark_sql


def test_a_statement_duckdb_cannot_read_is_a_named_error():
    with pytest.raises(SparkSqlError, match="cannot read the statement as DuckDB SQL"):
        to_spark_sql("SELECT FROM WHERE (")


def test_spark_runs_the_features_from_a_copy_of_the_inputs(tmp_path: Path, spark_built: tuple[Settings, dict]):
    """The connection stages the inputs as Parquet, answers as DuckDB would, and cleans up when closed."""
    import duckdb

    from features.featurestore.spark_sql import SparkSqlConnection
    from features.spark_engine import spark_session

    settings, _ = spark_built
    with duckdb.connect() as inputs:
        inputs.execute("CREATE TABLE customers AS SELECT * FROM (VALUES (1, 'k1'), (2, 'k2')) t(cid, customer_key)")
        con = SparkSqlConnection(spark_session(settings), inputs, tmp_path)
        con.execute("CREATE OR REPLACE TABLE two AS SELECT cid * 2 AS c FROM customers")
        assert con.sql("SELECT sum(c) / 4.0 FROM two").fetchall() == [(1.5,)]
        table = con.sql("SELECT customer_key, CAST(cid AS BIGINT) AS n FROM customers ORDER BY cid").to_arrow_table()
        assert table.to_pylist() == [{"customer_key": "k1", "n": 1}, {"customer_key": "k2", "n": 2}]
        con.execute("DROP TABLE IF EXISTS two")
        with pytest.raises(SparkSqlError, match="Spark could not run a feature statement"):
            con.sql("SELECT * FROM two").fetchall()
        con.close()
    assert not any(tmp_path.iterdir())
