"""The canonical inputs of the feature layer, as tables on a DuckDB connection.

Two ways in, one shape out: `load_lake_inputs` reads the lake and the identity
crosswalk through the feature configuration (the platform's path, and the
bring-your-own-table path); `register_frames` takes canonical frames keyed by
`customer_key` (tests, notebooks). Both end in `customers(cid, customer_key)` and one
table per canonical source keyed by the integer `cid`, with every canonical column
present (typed NULL where a source does not map it) and an `arrival_time`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from custintel.settings import Settings
from custintel.sql import text as sql_text
from features.featurestore.config import CANONICAL_COLUMNS, FeatureConfig, SourceTable
from features.lake import lake_files, lake_table_sql

_TIMESTAMPS = {
    "birth_date", "event_time", "arrival_time", "opened_at", "closed_at", "created_at", "resolved_at", "assigned_at",
    "outcome_window_end",
}  # fmt: skip
_DOUBLES = {"amount", "monthly_price", "score", "csat"}
_BOOLEANS = {"is_plan", "is_recurring", "first_contact_resolution", "outcome"}
TIME_COLUMN = {
    "accounts": "opened_at", "profiles": "created_at", "offers": "assigned_at", "products": None, "golden": None,
}  # fmt: skip


def canonical_type(column: str) -> str:
    """DuckDB type of a canonical column."""
    if column in _TIMESTAMPS:
        return "TIMESTAMP"
    if column in _DOUBLES:
        return "DOUBLE"
    if column in _BOOLEANS:
        return "BOOLEAN"
    return "VARCHAR"


def _columns(kind: str) -> list[str]:
    cols = list(CANONICAL_COLUMNS[kind])
    if kind != "products" and "arrival_time" not in cols:
        cols.append("arrival_time")
    return cols


class FeatureInputError(ValueError):
    """An input the feature layer needs is missing or unusable; the message names it."""


@dataclass
class InputSummary:
    """What the build read: rows per source table, how many found no customer, absent sources."""

    rows: dict[str, int] = field(default_factory=dict)
    unlinked: dict[str, int] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    customers: int = 0
    time_range: dict[str, tuple[dt.datetime | None, dt.datetime | None]] = field(default_factory=dict)
    observed_until: dt.datetime | None = None


def _typed(kind: str, expr: Mapping[str, str]) -> str:
    return ", ".join(f'CAST({expr.get(c, "NULL")} AS {canonical_type(c)}) AS "{c}"' for c in _columns(kind))


def _mapped(source: SourceTable) -> dict[str, str]:
    out = {}
    for canon, col in source.columns.items():
        value = f't."{col}"'
        codes = source.values.get(canon)
        if codes:
            whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in codes.items())
            value = f"CASE CAST({value} AS VARCHAR) {whens} ELSE CAST({value} AS VARCHAR) END"
        out[canon] = value
    return out


def _time_ranges(con: duckdb.DuckDBPyConnection, kinds: list[str]) -> dict[str, tuple[Any, Any]]:
    out = {}
    for kind in kinds:
        time = TIME_COLUMN.get(kind, "event_time")
        if time:
            out[kind] = tuple(con.sql(f"SELECT min({time}), max({time}) FROM {kind}").fetchall()[0])
    return out


def _finish(con: duckdb.DuckDBPyConnection, kinds: list[str], by_cid: frozenset[str] = frozenset()) -> int:
    """Number the customers (those with an account) and key every raw_<kind> view by cid.

    Views in `by_cid` already carry `cid` (from the `crosswalk_cid` table made here); the
    others carry `customer_key`.
    """
    con.execute(
        "CREATE OR REPLACE TABLE customers AS SELECT row_number() OVER (ORDER BY customer_key)::INTEGER AS cid, "
        "customer_key FROM (SELECT DISTINCT customer_key FROM raw_accounts WHERE customer_key IS NOT NULL)"
    )
    if by_cid:
        con.execute(
            "INSERT INTO crosswalk_cid SELECT x.record_table, x.record_id, c.cid "
            "FROM crosswalk x JOIN customers c USING (customer_key)"
        )
    for kind in CANONICAL_COLUMNS:
        cols = ", ".join(f'r."{c}"' for c in _columns(kind))
        if kind not in kinds:
            con.execute(f"CREATE OR REPLACE TABLE {kind} AS SELECT NULL::INTEGER AS cid, {_typed(kind, {})} LIMIT 0")
        elif kind == "products":
            con.execute(f"CREATE OR REPLACE TABLE products AS SELECT {cols} FROM raw_products r")
        elif kind in by_cid:
            con.execute(f"CREATE OR REPLACE TABLE {kind} AS SELECT r.cid, {cols} FROM raw_{kind} r")
        else:
            con.execute(
                f"CREATE OR REPLACE TABLE {kind} AS SELECT c.cid, {cols} FROM raw_{kind} r "
                f"JOIN customers c USING (customer_key)"
            )
    row = con.sql("SELECT count(*) FROM customers").fetchall()[0]
    return int(row[0]) if row else 0


def register_frames(con: duckdb.DuckDBPyConnection, frames: Mapping[str, pd.DataFrame]) -> InputSummary:
    """Canonical frames (keyed by customer_key; canonical column names) as the build's inputs.

    Sources not given are empty. `accounts` and `products` are required.
    """
    unknown = sorted(set(frames) - set(CANONICAL_COLUMNS))
    if unknown:
        raise FeatureInputError(f"unknown source(s) {unknown}; known: {list(CANONICAL_COLUMNS)}")
    for kind in ("accounts", "products"):
        if kind not in frames:
            raise FeatureInputError(f"the {kind} frame is required")
    summary = InputSummary()
    for kind, frame in frames.items():
        extra = sorted(set(frame.columns) - set(_columns(kind)) - {"customer_key"})
        if extra:
            raise FeatureInputError(f"{kind}: unknown column(s) {extra}; known: {_columns(kind)}")
        name = f"frame_{kind}"
        con.register(name, frame)
        expr = {c: f't."{c}"' for c in frame.columns if c != "customer_key"}
        key = "t.customer_key, " if kind != "products" else ""
        con.execute(f"CREATE OR REPLACE TEMP VIEW raw_{kind} AS SELECT {key}{_typed(kind, expr)} FROM {name} t")
        summary.rows[kind] = len(frame)
    summary.absent = [k for k in CANONICAL_COLUMNS if k not in frames]
    summary.customers = _finish(con, list(frames))
    summary.time_range = _time_ranges(con, list(frames))
    return summary


def load_lake_inputs(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    config: FeatureConfig,
    crosswalk_path: str,
    golden_path: str | None = None,
) -> InputSummary:
    """The configured lake tables, joined to customer keys through the identity crosswalk.

    With `golden_path`, the golden records' birth date and gender become the `golden` source.
    """
    # Split `<record_table>:<id>` once here, so each event joins on its id without building strings.
    con.execute(
        "CREATE OR REPLACE TABLE crosswalk AS SELECT "
        "substr(record_key, 1, strpos(record_key, ':') - 1) AS record_table, "
        "substr(record_key, strpos(record_key, ':') + 1) AS record_id, customer_key "
        f"FROM read_parquet({sql_text(crosswalk_path)})"
    )
    # filled once the customers are numbered; the event views are defined against it before that
    con.execute("CREATE OR REPLACE TABLE crosswalk_cid (record_table VARCHAR, record_id VARCHAR, cid INTEGER)")
    summary = InputSummary()
    kinds: list[str] = []
    as_of: list[dt.datetime] = []
    for kind, sources in config.sources.items():
        selects = []
        for source in sources:
            if not lake_files(settings, source.table):
                if source.required:
                    raise FeatureInputError(
                        f"sources.{kind}: table {source.table} has not been ingested into {settings.lake_dir}"
                    )
                continue
            lake = lake_table_sql(settings, source.table)
            row = con.sql(f"SELECT count(*), max(_drop_as_of) FROM ({lake})").fetchall()[0]
            summary.rows[source.table] = int(row[0]) if row else 0
            if row and row[1] is not None:
                as_of.append(row[1])
            missing = _missing_columns(con, lake, source)
            if missing:
                raise FeatureInputError(
                    f"sources.{kind}: table {source.table} has no column(s) {missing} (check the feature config)"
                )
            typed = _typed(kind, _mapped(source))
            if kind == "products":
                selects.append(f"SELECT {typed} FROM ({lake}) t")
            else:
                # accounts define the customers, so they join the crosswalk by key; the rest join its cid copy
                key, xwalk = ("customer_key", "crosswalk") if kind == "accounts" else ("cid", "crosswalk_cid")
                selects.append(
                    f"SELECT x.{key}, {typed} FROM ({lake}) t JOIN {xwalk} x ON x.record_table = "
                    f"'{source.record_table}' AND x.record_id = CAST(t.\"{source.ref}\" AS VARCHAR)"
                )
        if selects:
            kinds.append(kind)
            con.execute(f"CREATE OR REPLACE TEMP VIEW raw_{kind} AS {' UNION ALL '.join(selects)}")
    if golden_path is not None:
        kinds.append("golden")
        typed = _typed("golden", {c: f't."{c}"' for c in CANONICAL_COLUMNS["golden"]})
        golden = f"read_parquet({sql_text(golden_path)})"
        con.execute(f"CREATE OR REPLACE TEMP VIEW raw_golden AS SELECT t.customer_key, {typed} FROM {golden} t")
    for needed in ("accounts", "products"):
        if needed not in kinds:
            raise FeatureInputError(f"sources.{needed}: no table of it has been ingested")
    by_cid = frozenset(k for k in kinds if k not in ("accounts", "products", "golden"))
    summary.customers = _finish(con, kinds, by_cid)
    for linked_kind, sources in config.sources.items():
        if linked_kind in ("products", "golden") or linked_kind not in kinds:
            continue
        linked = con.sql(f"SELECT count(*) FROM {linked_kind}").fetchall()[0]
        total = sum(summary.rows.get(s.table, 0) for s in sources)
        summary.unlinked[linked_kind] = total - (int(linked[0]) if linked else 0)
    summary.absent = [k for k in CANONICAL_COLUMNS if k not in kinds]
    summary.observed_until = max(as_of) if as_of else None
    summary.time_range = _time_ranges(con, kinds)
    return summary


def _missing_columns(con: duckdb.DuckDBPyConnection, lake: str, source: SourceTable) -> list[str]:
    have = set(con.sql(f"SELECT * FROM ({lake}) LIMIT 0").columns)
    wanted = [*source.columns.values(), *([source.ref] if source.ref else [])]
    return sorted({c for c in wanted if c not in have})
