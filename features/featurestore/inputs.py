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
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb
import pandas as pd
import pyarrow as pa

from custintel.settings import Settings
from custintel.sql import text as sql_text
from features.featurestore.config import CANONICAL_COLUMNS, FeatureConfig, SourceTable
from features.lake import lake_files, lake_table_sql
from features.suppression import Suppression

_TIMESTAMPS = {
    "birth_date", "event_time", "arrival_time", "opened_at", "closed_at", "created_at", "resolved_at", "assigned_at",
    "outcome_window_end",
}  # fmt: skip
_DOUBLES = {"amount", "quantity", "monthly_price", "score", "csat"}
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


class InputConnection(Protocol):
    """Where the inputs are loaded: a DuckDB connection, or `spark_sql.SparkSqlConnection` on Spark.

    The statements are DuckDB SQL (Spark transpiles them, `read_parquet` included); `register` makes a
    small Arrow table a view (the suppression list's digests).
    """

    def sql(self, query: str) -> Any:
        """A query's result (`fetchall`, `columns`)."""
        ...

    def execute(self, query: str) -> Any:
        """Run a statement."""
        ...

    def register(self, view_name: str, python_object: Any) -> Any:
        """An Arrow table as a view."""
        ...

    def unregister(self, view_name: str) -> Any:
        """Drop a registered view."""
        ...


@dataclass
class InputSummary:
    """What the build read: rows per source table, how many found no customer, absent sources."""

    rows: dict[str, int] = field(default_factory=dict)
    unlinked: dict[str, int] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    customers: int = 0
    time_range: dict[str, tuple[dt.datetime | None, dt.datetime | None]] = field(default_factory=dict)
    observed_until: dt.datetime | None = None
    derived: dict[str, str] = field(default_factory=dict)  # source -> how it was derived (no table of its own)
    unmapped: list[str] = field(default_factory=list)  # "source.column" no table of a present source maps

    def missing(self) -> dict[str, str]:
        """Why each absent source and each unmapped canonical column is missing (what feature needs name)."""
        out = {f"source {kind}": "no table of it was configured or ingested" for kind in self.absent}
        for need in self.unmapped:
            kind = need.split(".")[0]
            how = self.derived.get(kind)
            out[need] = f"{kind} are {how}" if how else "no table maps it"
        if "transactions.kind" in out:
            out["transactions.kind"] += " (so a transaction is a purchase, or a refund when its amount is negative)"
        return out


# How a source the configuration does not give is derived from the transactions.
DERIVED_ACCOUNTS = "derived from the transactions (a customer from their first one, never closed)"
DERIVED_PRODUCTS = "derived from the transactions (the product ids they name)"


def _typed(kind: str, expr: Mapping[str, str]) -> str:
    return ", ".join(f'CAST({expr.get(c, "NULL")} AS {canonical_type(c)}) AS "{c}"' for c in _columns(kind))


def _mapped(source: SourceTable, kind: str) -> dict[str, str]:
    out = {}
    for canon, col in source.columns.items():
        value = f't."{col}"'
        codes = source.values.get(canon)
        if codes:
            whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in codes.items())
            value = f"CASE CAST({value} AS VARCHAR) {whens} ELSE CAST({value} AS VARCHAR) END"
        out[canon] = value
    return _transaction_amounts(out) if kind == "transactions" else out


def _transaction_amounts(expr: dict[str, str]) -> dict[str, str]:
    """A line's amount (unit price x quantity when a quantity is mapped); its kind from its sign when unmapped.

    Canonical amounts are positive and the kind says the sign, so without a kind column a
    negative amount (a return line) is a refund of that size and every other line a purchase.
    """
    out = dict(expr)
    if "amount" in out and "quantity" in out:
        out["amount"] = f"(CAST({out['amount']} AS DOUBLE) * CAST({out['quantity']} AS DOUBLE))"
    if "kind" not in out and "amount" in out:
        amount = f"CAST({out['amount']} AS DOUBLE)"
        out["kind"] = f"CASE WHEN {amount} < 0 THEN 'refund' ELSE 'purchase' END"
        out["amount"] = f"abs({amount})"
    return out


def _derive_missing(
    con: InputConnection,
    kinds: list[str],
    keyed_transactions: str | None,
    accounts: bool = True,
    products: bool = True,
) -> dict[str, str]:
    """Accounts and products from the transactions when no table of them is given (only those asked for).

    `keyed_transactions` is a query of the transactions with `customer_key`, `event_time` and
    `arrival_time` (accounts need the key before customers are numbered). Returns how each was derived.
    """
    derived: dict[str, str] = {}
    if accounts and "accounts" not in kinds and keyed_transactions is not None:
        con.execute(
            "CREATE OR REPLACE TEMP VIEW raw_accounts AS SELECT customer_key, min(event_time) AS opened_at, "
            "CAST(NULL AS TIMESTAMP) AS closed_at, arg_min(arrival_time, event_time) AS arrival_time "
            f"FROM ({keyed_transactions}) WHERE event_time IS NOT NULL AND customer_key IS NOT NULL "
            "GROUP BY customer_key"
        )
        kinds.append("accounts")
        derived["accounts"] = DERIVED_ACCOUNTS
    if products and "products" not in kinds and "transactions" in kinds:
        con.execute(
            "CREATE OR REPLACE TEMP VIEW raw_products AS SELECT DISTINCT CAST(product AS VARCHAR) AS product_id, "
            "CAST(NULL AS BOOLEAN) AS is_plan, CAST(NULL AS BOOLEAN) AS is_recurring, "
            "CAST(NULL AS DOUBLE) AS monthly_price FROM raw_transactions WHERE product IS NOT NULL"
        )
        kinds.append("products")
        derived["products"] = DERIVED_PRODUCTS
    return derived


def _unmapped(kinds: list[str], mapped: Mapping[str, set[str]], derived: Mapping[str, str]) -> list[str]:
    """Canonical columns ("source.column") of present sources that nothing fills."""
    fills = {k: set(v) for k, v in mapped.items()}
    fills.setdefault("accounts", set()).update({"opened_at"} if "accounts" in derived else set())
    fills.setdefault("products", set()).update({"product_id"} if "products" in derived else set())
    return [
        f"{kind}.{column}"
        for kind in kinds
        if kind != "golden"
        for column in CANONICAL_COLUMNS[kind]
        if column != "arrival_time" and column not in fills.get(kind, set())
    ]


def _time_ranges(con: InputConnection, kinds: list[str]) -> dict[str, tuple[Any, Any]]:
    out = {}
    for kind in kinds:
        time = TIME_COLUMN.get(kind, "event_time")
        if time:
            out[kind] = tuple(con.sql(f"SELECT min({time}), max({time}) FROM {kind}").fetchall()[0])
    return out


def _number_customers(con: InputConnection) -> None:
    """The customers (those with an account), numbered by key."""
    con.execute(
        "CREATE OR REPLACE TABLE customers AS SELECT "
        "CAST(row_number() OVER (ORDER BY customer_key) AS INTEGER) AS cid, customer_key "
        "FROM (SELECT DISTINCT customer_key FROM raw_accounts WHERE customer_key IS NOT NULL)"
    )


def _finish(
    con: InputConnection, kinds: list[str], by_cid: frozenset[str] = frozenset(), numbered: bool = False
) -> int:
    """Key every raw_<kind> view by cid (numbering the customers first unless `numbered`).

    Views in `by_cid` already carry `cid` (from the `crosswalk_cid` table); the others carry `customer_key`.
    """
    if not numbered:
        _number_customers(con)
    for kind in CANONICAL_COLUMNS:
        cols = ", ".join(f'r."{c}"' for c in _columns(kind))
        if kind not in kinds:
            con.execute(
                f"CREATE OR REPLACE TABLE {kind} AS SELECT CAST(NULL AS INTEGER) AS cid, {_typed(kind, {})} LIMIT 0"
            )
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
    if "accounts" not in frames and "transactions" not in frames:
        raise FeatureInputError("the accounts frame is required (or transactions, to derive who is a customer)")
    summary = InputSummary()
    mapped: dict[str, set[str]] = {}
    for kind, frame in frames.items():
        extra = sorted(set(frame.columns) - set(_columns(kind)) - {"customer_key"})
        if extra:
            raise FeatureInputError(f"{kind}: unknown column(s) {extra}; known: {_columns(kind)}")
        name = f"frame_{kind}"
        con.register(name, frame)
        expr = {c: f't."{c}"' for c in frame.columns if c != "customer_key"}
        mapped[kind] = set(expr)
        if kind == "transactions":
            expr = _transaction_amounts(expr)
        key = "t.customer_key, " if kind != "products" else ""
        con.execute(f"CREATE OR REPLACE TEMP VIEW raw_{kind} AS SELECT {key}{_typed(kind, expr)} FROM {name} t")
        summary.rows[kind] = len(frame)
    kinds = list(frames)
    summary.derived = _derive_missing(
        con, kinds, "SELECT * FROM raw_transactions" if "transactions" in frames else None
    )
    summary.absent = [k for k in CANONICAL_COLUMNS if k not in kinds]
    summary.unmapped = _unmapped(kinds, mapped, summary.derived)
    summary.customers = _finish(con, kinds)
    summary.time_range = _time_ranges(con, kinds)
    return summary


def load_lake_inputs(
    con: InputConnection,
    settings: Settings,
    config: FeatureConfig,
    crosswalk_path: str,
    golden_path: str | None = None,
    suppression: Suppression | None = None,
) -> InputSummary:
    """The configured lake tables, joined to customer keys through the identity crosswalk.

    With `golden_path`, the golden records' birth date and gender become the `golden` source.
    Records and customers on the `suppression` list are taken out of the crosswalk first, so
    none of their rows is joined to a customer and no feature or label is built for them.
    The same statements run on DuckDB and, transpiled, on Spark (`con`), so both engines read
    the lake, split and join the crosswalk and drop the suppressed alike.
    """
    # Split `<record_table>:<id>` once here, so each event joins on its id without building strings.
    split = (
        "SELECT substr(record_key, 1, strpos(record_key, ':') - 1) AS record_table, "
        "substr(record_key, strpos(record_key, ':') + 1) AS record_id, customer_key "
        f"FROM read_parquet({sql_text(crosswalk_path)})"
    )
    if suppression:
        _drop_suppressed(con, split, suppression)
    else:
        con.execute(f"CREATE OR REPLACE TABLE crosswalk AS {split}")
    summary = InputSummary()
    kinds: list[str] = []
    as_of: list[dt.datetime] = []
    mapped: dict[str, set[str]] = {}
    keyed_transactions: list[str] = []  # transactions joined by customer_key, to derive accounts from
    views: dict[str, list[str]] = {}  # kind -> its sources' selects ({xwalk}: the crosswalk_cid table, made later)
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
            typed = _typed(kind, _mapped(source, kind))
            mapped.setdefault(kind, set()).update(source.columns)
            if kind == "products":
                selects.append(f"SELECT {typed} FROM ({lake}) t")
            else:
                # accounts define the customers, so they join the crosswalk by key; the rest join its cid copy
                key, xwalk = ("customer_key", "crosswalk") if kind == "accounts" else ("cid", "{xwalk}")
                link = (
                    f"FROM ({lake}) t JOIN {{xwalk}} x ON x.record_table = "
                    f"'{source.record_table}' AND x.record_id = CAST(t.\"{source.ref}\" AS VARCHAR)"
                )
                selects.append(f"SELECT x.{key}, {typed} {link.replace('{xwalk}', xwalk)}")
                if kind == "transactions":
                    keyed_transactions.append(f"SELECT x.customer_key, {typed} {link.replace('{xwalk}', 'crosswalk')}")
        if selects:
            kinds.append(kind)
            views[kind] = selects
    if golden_path is not None:
        kinds.append("golden")
        typed = _typed("golden", {c: f't."{c}"' for c in CANONICAL_COLUMNS["golden"]})
        golden = f"read_parquet({sql_text(golden_path)})"
        views["golden"] = [f"SELECT t.customer_key, {typed} FROM {golden} t"]
    # The views keyed by customer_key first (accounts number the customers); those joined by cid once
    # `crosswalk_cid` exists: every view is then defined against tables that hold their rows.
    by_cid = frozenset(k for k in kinds if k not in ("accounts", "products", "golden"))
    for keyed in [k for k in kinds if k not in by_cid]:
        con.execute(f"CREATE OR REPLACE TEMP VIEW raw_{keyed} AS {' UNION ALL '.join(views[keyed])}")
    summary.derived = _derive_missing(con, kinds, " UNION ALL ".join(keyed_transactions) or None, products=False)
    if "accounts" not in kinds:
        raise FeatureInputError(
            "sources.accounts: no table of it has been ingested (nor transactions, to derive customers from)"
        )
    _number_customers(con)
    con.execute(
        "CREATE OR REPLACE TABLE crosswalk_cid AS SELECT x.record_table, x.record_id, c.cid "
        "FROM crosswalk x JOIN customers c USING (customer_key)"
    )
    for linked in [k for k in kinds if k in by_cid]:
        selects = [s.replace("{xwalk}", "crosswalk_cid") for s in views[linked]]
        con.execute(f"CREATE OR REPLACE TEMP VIEW raw_{linked} AS {' UNION ALL '.join(selects)}")
    summary.derived |= _derive_missing(con, kinds, None, accounts=False)
    summary.customers = _finish(con, kinds, by_cid, numbered=True)
    for linked_kind, sources in config.sources.items():
        if linked_kind in ("products", "golden") or linked_kind not in kinds:
            continue
        linked = con.sql(f"SELECT count(*) FROM {linked_kind}").fetchall()[0]
        total = sum(summary.rows.get(s.table, 0) for s in sources)
        summary.unlinked[linked_kind] = total - (int(linked[0]) if linked else 0)
    summary.absent = [k for k in CANONICAL_COLUMNS if k not in kinds]
    summary.unmapped = _unmapped(kinds, mapped, summary.derived)
    summary.observed_until = max(as_of) if as_of else None
    summary.time_range = _time_ranges(con, kinds)
    return summary


# HMAC-SHA256 (RFC 2104) in SQL: sha256((K xor opad) || sha256((K xor ipad) || message)), K the key padded to the
# hash's 64-byte block (hashed first when longer). Both engines compute it, so the crosswalk is never pulled into
# Python to be matched against the suppression list, whatever its size.
_BLOCK = 64


def _hmac_sql(key: bytes, kind: str, value: str) -> str:
    """SQL for `features.suppression.digest(key, kind, value)`, `value` a SQL expression (NULL gives NULL)."""
    k = (hashlib.sha256(key).digest() if len(key) > _BLOCK else key).ljust(_BLOCK, b"\0")
    ipad, opad = bytes(b ^ 0x36 for b in k).hex(), bytes(b ^ 0x5C for b in k).hex()
    message = f"encode({sql_text(kind)} || chr(31) || {value})"  # || not concat(): NULL stays NULL on both engines
    return f"sha256(unhex('{opad}') || unhex(sha256(unhex('{ipad}') || {message})))"


def _drop_suppressed(con: InputConnection, crosswalk: str, suppression: Suppression) -> None:
    """The crosswalk (`crosswalk`: its query) as the table `crosswalk`, without every record of a suppressed customer.

    A customer is suppressed when one of their records (table and id) or their key is on the list;
    values are matched trimmed, blank as none, as `features.suppression.suppressed_rows` does.
    """
    con.execute(f"CREATE OR REPLACE TABLE crosswalk_read AS {crosswalk}")
    digests = pa.table({"digest": pa.array(sorted(suppression.digests), pa.string())})
    con.register("suppressed_digests", digests)
    try:
        table, record, key = (f"nullif(trim({c}), '')" for c in ("record_table", "record_id", "customer_key"))
        hit = (
            f"{_hmac_sql(suppression.key, 'record', f'{table} || chr(31) || {record}')} IN "
            f"(SELECT digest FROM suppressed_digests) OR "
            f"{_hmac_sql(suppression.key, 'customer_key', key)} IN (SELECT digest FROM suppressed_digests)"
        )
        con.execute(
            "CREATE OR REPLACE TABLE crosswalk AS SELECT x.record_table, x.record_id, x.customer_key "
            "FROM crosswalk_read x LEFT JOIN (SELECT DISTINCT customer_key AS gone FROM crosswalk_read "
            f"WHERE customer_key IS NOT NULL AND ({hit})) s ON x.customer_key = s.gone WHERE s.gone IS NULL"
        )
    finally:
        con.unregister("suppressed_digests")
    con.execute("DROP TABLE IF EXISTS crosswalk_read")


def _missing_columns(con: InputConnection, lake: str, source: SourceTable) -> list[str]:
    have = set(con.sql(f"SELECT * FROM ({lake}) LIMIT 0").columns)
    wanted = [*source.columns.values(), *([source.ref] if source.ref else [])]
    return sorted({c for c in wanted if c not in have})
