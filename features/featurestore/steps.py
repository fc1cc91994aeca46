"""The feature build's steps: load the inputs, build and check one set, write it offline, materialise it online.

Each step is a plain function; the flow `flows.features` wires them (as Prefect tasks, the I/O
ones retried, or as they are for `--engine local`). `check_cutoffs` decides which cutoffs a
build may use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from custintel.settings import Settings
from features.featurestore.build import FeatureBuildError, SqlConnection
from features.featurestore.config import FeatureConfig
from features.featurestore.definitions import Feature, definition_digest, definition_without
from features.featurestore.inputs import FeatureInputError, InputSummary, load_lake_inputs
from features.featurestore.quality import FeatureQualityError, collapse, profile_columns, quality_problems
from features.featurestore.store import materialize_online, open_feature_inputs, write_offline
from features.suppression import load_suppression


@dataclass(frozen=True)
class BuiltSet:
    """One built feature set (or interactions, or labels), its definition and per-cutoff statistics."""

    key: str
    table: pa.Table
    definition: dict[str, Any]
    digest: str
    stats: dict[str, dict[str, Any]]
    dropped: dict[str, str] = field(default_factory=dict)  # feature -> why it was dropped after the build


def load_inputs(settings: Settings, config: FeatureConfig) -> tuple[SqlConnection, InputSummary]:
    """The canonical inputs from the lake, joined to customer keys (I/O: retried by the flow).

    On DuckDB a DuckDB connection holds them; on Spark (`engine: spark`) Spark reads the lake and the
    crosswalk itself (the same statements, transpiled) and a `SparkSqlConnection` holds them.
    """
    if settings.engine != "spark":
        return open_feature_inputs(settings, config)
    return open_spark_inputs(settings, config)


def open_spark_inputs(settings: Settings, config: FeatureConfig) -> tuple[SqlConnection, InputSummary]:
    """The canonical inputs read by Spark from the lake and the identity crosswalk, as cached Spark views."""
    from features.featurestore.spark_sql import SparkSqlConnection
    from features.spark_engine import spark_session, spark_work_dir

    crosswalk = settings.identity_dir / "crosswalk.parquet"
    if not crosswalk.is_file():
        raise FeatureInputError(f"no identity crosswalk at {crosswalk}: run `custintel resolve` first")
    golden = settings.identity_dir / "golden_records.parquet"
    suppression = load_suppression(settings)
    con = SparkSqlConnection(spark_session(settings), None, spark_work_dir(settings, "inputs"))
    try:
        summary = load_lake_inputs(
            con, settings, config, str(crosswalk), str(golden) if golden.is_file() else None, suppression
        )
    except BaseException:
        con.close()
        raise
    return con, summary


def on_engine(settings: Settings, con: SqlConnection) -> SqlConnection:
    """Where the builds run: the inputs' own connection, or Spark holding a copy of DuckDB's inputs.

    The inputs' connection is DuckDB's, or Spark's when Spark loaded them (`load_inputs`); a copy is
    made for `engine: spark` when DuckDB loaded them. The builders' SQL is the same on both (transpiled
    for Spark); close a connection this made when done.
    """
    if settings.engine != "spark" or not isinstance(con, duckdb.DuckDBPyConnection):
        return con
    from features.featurestore.spark_sql import SparkSqlConnection
    from features.spark_engine import spark_session, spark_work_dir

    return SparkSqlConnection(spark_session(settings), con, spark_work_dir(settings, "inputs"))


def build_one(
    con: SqlConnection,
    key: str,
    build: Callable[[SqlConnection], pa.Table],
    features: tuple[Feature, ...],
    definition: dict[str, Any],
    min_rows: int | None,
    collapsed: Literal["warn", "fail"] = "fail",
    stored_columns: Collection[str] | None = None,
) -> BuiltSet:
    """Build one set for every cutoff of the spine, profile each cutoff and check its quality.

    With `min_rows` None only bounds are checked (labels, interactions: collapse is allowed).
    A collapsed feature fails the build (`collapsed="fail"`) or is dropped from the set, its
    definition and its statistics with the reason (`"warn"`). `stored_columns` are the columns the
    offline store already holds for this version: a build keeps exactly those where it can, so a
    feature collapsed at some cutoffs is not dropped from one build and kept in another.
    """
    table = build(con.cursor())
    stats: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    collapsed_at: dict[str, str] = {}
    judge_bounds_only = collapsed == "warn" and min_rows is not None
    for day in sorted(pc.unique(table.column("as_of")).to_pylist()):
        part = rows_as_of(table, day)
        profile = profile_columns(part, [c for c in part.column_names if c not in ("customer_key", "as_of")])
        rows = part.num_rows
        found = quality_problems(key, features, profile, rows, None if judge_bounds_only else min_rows)
        problems += [f"as of {day}: {p}" for p in found]
        if judge_bounds_only and min_rows is not None:
            for f in features:
                if f.name not in collapsed_at and (why := collapse(profile[f.name], rows, min_rows)):
                    collapsed_at[f.name] = f"{why} as of {day}"
        stats[day.isoformat()] = {"rows": rows, "columns": profile}
    if problems:
        raise FeatureQualityError(f"feature set {key} failed its data-quality checks:\n  " + "\n  ".join(problems))
    dropped = dict(collapsed_at)
    if stored_columns is not None:
        dropped = {n: why for n, why in dropped.items() if n not in stored_columns}
        dropped |= {
            f.name: "not in the stored version (dropped when it was first built)"
            for f in features
            if f.name not in stored_columns
        }
    if dropped:
        table = table.drop_columns([n for n in dropped if n in table.column_names])
        definition = definition_without(definition, set(dropped))
        stats = {
            d: {**s, "columns": {c: v for c, v in s["columns"].items() if c not in dropped}} for d, s in stats.items()
        }
    return BuiltSet(key, table, definition, definition_digest(definition), stats, dropped)


def rows_as_of(table: pa.Table, day: dt.date) -> pa.Table:
    """The rows of one cutoff."""
    return table.filter(pc.equal(table.column("as_of"), pa.scalar(day, pa.date32())))


def write_set(settings: Settings, built: BuiltSet, time_range: dict[str, Any]) -> list[str]:
    """Write a built set's partitions and manifest to the offline store (I/O: retried by the flow)."""
    stats = {day: {**s, "data_time_range": time_range} for day, s in built.stats.items()}
    return write_offline(settings, built.key, built.definition, built.digest, built.table, stats)


def materialize(settings: Settings, built: BuiltSet, grouped: bool) -> dict[str, Any]:
    """Write the latest cutoff of a set to the online store (I/O: retried by the flow).

    A set with no rows (e.g. interactions when nothing was bought before the cutoff) is not written.
    """
    store = "redis" if settings.redis_url else "sqlite"
    if not built.stats:
        return {"as_of": None, "customers": 0, "store": store, "skipped": "the set has no rows"}
    latest = max(built.stats)
    table = rows_as_of(built.table, dt.date.fromisoformat(latest))
    meta = {"digest": built.digest, "as_of": latest}
    rows = materialize_online(settings, built.key, table, meta, grouped=grouped)
    if rows is None:
        return {"as_of": latest, "customers": 0, "store": store, "skipped": "the store holds a later as-of"}
    return {"as_of": latest, "customers": rows, "store": store}


def check_cutoffs(as_of: list[dt.date] | None, observed_until: dt.datetime | None) -> list[dt.date]:
    """The build's cutoffs (default: the end of the observed data); none may lie after the data ends."""
    if observed_until is None:
        raise FeatureBuildError("the lake records no export time (_drop_as_of): cannot tell where the data ends")
    cutoffs = sorted(set(as_of)) if as_of else [observed_until.date()]
    late = [d for d in cutoffs if d > observed_until.date()]
    if late:
        raise FeatureBuildError(
            f"as-of {', '.join(map(str, late))} is after the end of the observed data ({observed_until:%Y-%m-%d})"
        )
    return cutoffs
