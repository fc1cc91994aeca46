"""The feature builders' DuckDB SQL, run on Spark: one source of truth, transpiled with SQLGlot.

`build.py` writes its statements for DuckDB and runs them on whatever connection it is
given. `SparkSqlConnection` is such a connection over a Spark session: every statement is
transpiled (`to_spark_sql`) and run by Spark SQL, and the few DuckDB statements that make
tables (`CREATE [OR REPLACE] TABLE x AS ...`, `DROP TABLE [IF EXISTS] x`) become cached
temporary views, so nothing is written to a Spark warehouse. The canonical inputs come from
the DuckDB connection that loaded them (`inputs.py`), handed to Spark as Parquet files.

Where DuckDB and Spark read the same SQL differently, the transpiled tree is adjusted here so
that it means what DuckDB means, never the definitions copied: a decimal literal such as
`86400.0` is a DOUBLE (DuckDB divides by it in floating point; Spark would keep a DECIMAL and
round to its scale).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from custintel.sql import text as sql_text
from features.featurestore.config import CANONICAL_COLUMNS

if TYPE_CHECKING:
    import duckdb
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SparkSqlConnection", "SparkSqlError", "to_spark_sql"]

# The canonical input tables `inputs.py` leaves on its DuckDB connection.
INPUT_TABLES = ("customers", *CANONICAL_COLUMNS)


class SparkSqlError(RuntimeError):
    """A statement could not be run on Spark; the message names it."""


def _double_literal(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Literal) and not node.is_string and "." in node.this:
        return exp.cast(node.copy(), exp.DataType.build("DOUBLE"))
    return node


def to_spark_sql(sql: str) -> str:
    """One DuckDB statement in Spark SQL's dialect, meaning the same."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as error:
        raise SparkSqlError(f"cannot read the statement as DuckDB SQL: {error}") from None
    return tree.transform(_double_literal).sql(dialect="spark")


class SparkRelation:
    """A Spark query's result, read the way `build.py` reads a DuckDB relation."""

    def __init__(self, frame: DataFrame) -> None:
        self.frame = frame

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every row as a tuple."""
        return [tuple(row) for row in self.frame.collect()]

    def to_arrow_table(self) -> pa.Table:
        """The rows as an Arrow table, in the query's order, with Arrow types as DuckDB gives them."""
        from pyspark.sql.pandas.types import to_arrow_schema

        schema = to_arrow_schema(self.frame.schema)
        batches = self.frame._collect_as_arrow()  # noqa: SLF001 - Spark 3.5's Arrow collect (public toArrow is 4.0)
        table = pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()
        return table.cast(_duckdb_like(table.schema))


def _duckdb_like(schema: pa.Schema) -> pa.Schema:
    """Spark's Arrow types as DuckDB names them: timestamps in microseconds without a zone."""
    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_timestamp(t):
            t = pa.timestamp("us")
        fields.append(pa.field(f.name, t, f.nullable))
    return pa.schema(fields)


class SparkSqlConnection:
    """DuckDB's connection interface (`sql`, `execute`, `cursor`, `close`) over a Spark session.

    Built from the DuckDB connection holding the canonical inputs: each input table is written
    once to Parquet under `staging` and registered as a Spark temporary view of the same name.
    """

    def __init__(self, spark: SparkSession, inputs: duckdb.DuckDBPyConnection, staging: Path) -> None:
        self.spark = spark
        self.staging = staging / uuid.uuid4().hex
        self.staging.mkdir(parents=True)
        self._views: list[str] = []
        self._cached: dict[str, DataFrame] = {}
        present = {row[0] for row in inputs.sql("SELECT table_name FROM duckdb_tables()").fetchall()}
        for table in INPUT_TABLES:
            if table not in present:
                continue
            path = self.staging / f"{table}.parquet"
            inputs.execute(f"COPY {table} TO {sql_text(str(path))} (FORMAT parquet, COMPRESSION zstd)")
            spark.read.parquet(str(path)).createOrReplaceTempView(table)
            self._views.append(table)

    def sql(self, query: str) -> SparkRelation:
        """A query's result (nothing runs until it is read)."""
        return SparkRelation(self._run(query))

    def execute(self, query: str) -> SparkSqlConnection:
        """Run a statement; CREATE TABLE ... AS and DROP TABLE act on cached temporary views."""
        tree = sqlglot.parse_one(query, read="duckdb")
        if isinstance(tree, exp.Create) and (tree.args.get("kind") or "").upper() == "TABLE":
            name = tree.this.name
            select = tree.expression
            if select is None:
                raise SparkSqlError(f"CREATE TABLE {name}: only CREATE TABLE ... AS SELECT runs on Spark")
            self._drop(name)
            frame = self._run(select.sql(dialect="duckdb")).cache()
            frame.count()  # materialise once: every later statement reads the cached rows
            frame.createOrReplaceTempView(name)
            self._cached[name] = frame
            self._views.append(name)
        elif isinstance(tree, exp.Drop) and (tree.args.get("kind") or "").upper() == "TABLE":
            for table in tree.args.get("tables") or [tree.this]:
                self._drop(table.name)
        else:
            self.spark.sql(to_spark_sql(query)).collect()
        return self

    def cursor(self) -> SparkSqlConnection:
        """This connection (Spark sessions are shared by threads)."""
        return self

    def close(self) -> None:
        """Drop the views and cached tables made here, and the staged inputs."""
        for name in self._names():
            self._drop(name)
        self._views.clear()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _names(self) -> Iterator[str]:
        yield from dict.fromkeys(self._views)

    def _drop(self, name: str) -> None:
        cached = self._cached.pop(name, None)
        if cached is not None:
            cached.unpersist()
        self.spark.catalog.dropTempView(name)

    def _run(self, query: str) -> DataFrame:
        spark_sql = to_spark_sql(query)
        try:
            return self.spark.sql(spark_sql)
        except Exception as error:  # pyspark's AnalysisException and ParseException share no public base here
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SparkSqlError(f"Spark could not run a feature statement: {first}\n  {spark_sql[:500]}") from None
