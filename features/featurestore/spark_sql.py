"""The feature builders' DuckDB SQL, run on Spark: one source of truth, transpiled with SQLGlot.

`build.py` writes its statements for DuckDB and runs them on whatever connection it is
given. `SparkSqlConnection` is such a connection over a Spark session: every statement is
transpiled (`to_spark_sql`) and run by Spark SQL, and the few DuckDB statements that make
tables (`CREATE [OR REPLACE] TABLE x AS ...`, `DROP TABLE [IF EXISTS] x`) become cached
temporary views, so nothing is written to a Spark warehouse. DuckDB's `read_parquet(files, ...)`
becomes a temporary view of `spark.read.parquet` over the same files (`union_by_name` as Spark's
`mergeSchema`), so `inputs.py` reads the lake, splits and joins the crosswalk and drops the
suppressed on Spark with the statements it runs on DuckDB; `register` takes a small Arrow table
(or pandas frame) as a view, as DuckDB's does. A connection built from a DuckDB connection
instead takes copies of its input tables, staged as Parquet (tests, bring-your-own frames).

Where DuckDB and Spark read the same SQL differently, the transpiled tree is adjusted here so
that it means what DuckDB means, never the definitions copied: a decimal literal such as
`86400.0` is a DOUBLE (DuckDB divides by it in floating point; Spark would keep a DECIMAL and
round to its scale).
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
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


def _parse(sql: str) -> exp.Expr:
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
        return tree
    except sqlglot.errors.ParseError as error:
        raise SparkSqlError(f"cannot read the statement as DuckDB SQL: {error}") from None


def to_spark_sql(sql: str) -> str:
    """One DuckDB statement in Spark SQL's dialect, meaning the same."""
    return _parse(sql).transform(_double_literal).sql(dialect="spark")


def parquet_reads(tree: exp.Expr) -> list[tuple[exp.Table, list[str], bool]]:
    """Each `read_parquet(...)` table of a DuckDB statement: (its node, its files, whether union_by_name)."""
    found = []
    for table in tree.find_all(exp.Table):
        read = table.this
        if not isinstance(read, exp.ReadParquet):
            continue
        files: list[str] = []
        by_name = False
        for arg in read.expressions:
            if isinstance(arg, exp.Literal) and arg.is_string:
                files.append(arg.this)
            elif isinstance(arg, exp.Array):
                files += [e.this for e in arg.expressions if isinstance(e, exp.Literal) and e.is_string]
            elif isinstance(arg, exp.EQ) and arg.this.name.lower() == "union_by_name":
                by_name = isinstance(arg.expression, exp.Boolean) and bool(arg.expression.this)
            elif isinstance(arg, exp.EQ) and arg.this.name.lower() == "hive_partitioning":
                continue  # Spark reads the files named, so folder names never become columns
            else:
                raise SparkSqlError(f"read_parquet: cannot read the argument {arg.sql(dialect='duckdb')} on Spark")
        if not files:
            raise SparkSqlError(f"read_parquet names no file: {read.sql(dialect='duckdb')}")
        found.append((table, files, by_name))
    return found


class SparkRelation:
    """A Spark query's result, read the way `build.py` and `inputs.py` read a DuckDB relation."""

    def __init__(self, frame: DataFrame) -> None:
        self.frame = frame

    @property
    def columns(self) -> list[str]:
        """The result's column names (no rows are read)."""
        return list(self.frame.columns)

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
    """DuckDB's connection interface (`sql`, `execute`, `register`, `cursor`, `close`) over a Spark session.

    Without `inputs` it starts empty: statements read Parquet themselves (`read_parquet`, as on
    DuckDB). With `inputs`, a DuckDB connection holding the canonical input tables, each is written
    once to Parquet under `staging` and registered as a Spark temporary view of the same name.
    """

    def __init__(self, spark: SparkSession, inputs: duckdb.DuckDBPyConnection | None, staging: Path) -> None:
        self.spark = spark
        self.staging = staging / uuid.uuid4().hex
        self._views: list[str] = []
        self._cached: dict[str, DataFrame] = {}
        self._parquet: dict[tuple[tuple[str, ...], bool], str] = {}  # (files, union_by_name) -> view
        if inputs is None:
            return
        self.staging.mkdir(parents=True)
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
        tree = _parse(query)
        kind = (tree.args.get("kind") or "").upper()
        if isinstance(tree, exp.Create) and kind == "TABLE":
            name = tree.this.name
            select = tree.expression
            if select is None:
                raise SparkSqlError(f"CREATE TABLE {name}: only CREATE TABLE ... AS SELECT runs on Spark")
            frame = self._frame(self._spark_sql(select)).cache()
            frame.count()  # materialise once: every later statement reads the cached rows
            self._drop(name)
            frame.createOrReplaceTempView(name)
            self._cached[name] = frame
            self._views.append(name)
        elif isinstance(tree, exp.Drop) and kind == "TABLE":
            for table in tree.args.get("tables") or [tree.this]:
                self._drop(table.name)
        elif isinstance(tree, exp.Insert | exp.Delete | exp.Update):
            raise SparkSqlError(f"{tree.key.upper()} does not run on Spark's temporary views: {query[:200]}")
        else:
            self._frame(self._spark_sql(tree)).collect()
            if isinstance(tree, exp.Create) and kind == "VIEW":
                self._views.append(tree.this.name)
        return self

    def register(self, view_name: str, python_object: pa.Table | pd.DataFrame) -> SparkSqlConnection:
        """A small Arrow table (or pandas frame) as a temporary view, as DuckDB's `register` does."""
        frame = python_object.to_pandas() if isinstance(python_object, pa.Table) else python_object
        if frame.empty:
            schema = ", ".join(f"`{c}` string" for c in frame.columns)
            data = self.spark.createDataFrame([], schema)
        else:
            with warnings.catch_warnings():  # pyspark 3.5's own use of deprecated pandas and distutils names
                warnings.simplefilter("ignore", DeprecationWarning)
                data = self.spark.createDataFrame(frame)
        data.createOrReplaceTempView(view_name)
        self._views.append(view_name)
        return self

    def unregister(self, view_name: str) -> SparkSqlConnection:
        """Drop a registered view."""
        self._drop(view_name)
        return self

    def cursor(self) -> SparkSqlConnection:
        """This connection (Spark sessions are shared by threads)."""
        return self

    def close(self) -> None:
        """Drop the views and cached tables made here, and the staged inputs."""
        for name in self._names():
            self._drop(name)
        self._views.clear()
        self._parquet.clear()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _names(self) -> Iterator[str]:
        yield from dict.fromkeys([*self._views, *self._parquet.values()])

    def _drop(self, name: str) -> None:
        cached = self._cached.pop(name, None)
        if cached is not None:
            cached.unpersist()
        self.spark.catalog.dropTempView(name)

    def _parquet_view(self, files: list[str], by_name: bool) -> str:
        """A temporary view of `spark.read.parquet` over the files (made once per connection)."""
        key = (tuple(files), by_name)
        view = self._parquet.get(key)
        if view is None:
            view = f"parquet_{hashlib.sha256(repr(key).encode()).hexdigest()[:16]}"
            reader = self.spark.read.option("mergeSchema", "true" if by_name else "false")
            try:
                reader.parquet(*files).createOrReplaceTempView(view)
            except Exception as error:  # pyspark's AnalysisException: a missing or unreadable file
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise SparkSqlError(
                    f"Spark could not read {files[0]}{' ...' if len(files) > 1 else ''}: {first}"
                ) from None
            self._parquet[key] = view
        return view

    def _spark_sql(self, statement: str | exp.Expr) -> str:
        """A DuckDB statement as Spark SQL, each `read_parquet` a view of the same files."""
        tree = _parse(statement) if isinstance(statement, str) else statement.copy()
        for table, files, by_name in parquet_reads(tree):
            alias = table.args.get("alias")
            table.replace(exp.Table(this=exp.to_identifier(self._parquet_view(files, by_name)), alias=alias))
        return tree.transform(_double_literal).sql(dialect="spark")

    def _frame(self, spark_sql: str) -> DataFrame:
        try:
            return self.spark.sql(spark_sql)
        except Exception as error:  # pyspark's AnalysisException and ParseException share no public base here
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SparkSqlError(f"Spark could not run a feature statement: {first}\n  {spark_sql[:500]}") from None

    def _run(self, query: str) -> DataFrame:
        return self._frame(self._spark_sql(query))
