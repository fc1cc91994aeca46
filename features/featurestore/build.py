"""Point-in-time feature, interaction and label builds on a DuckDB connection.

The connection (DuckDB's, or Spark's through `spark_sql.py`: the same SQL, transpiled)
holds the canonical inputs (see `inputs.py`): `customers(cid,
customer_key)` and one table per canonical source, keyed by the integer `cid`.
`create_spine` adds the (customer, cutoff) rows to build; every builder joins events
to the spine only where they happened and arrived before the cutoff. Nothing here
reads or writes files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from features.featurestore.config import FeatureConfig, LabelConfig
from features.featurestore.definitions import PIT, WINDOWS, FeatureSet


class SqlRelation(Protocol):
    """A query's result as the builders read it (a DuckDB relation, or Spark's through `spark_sql`)."""

    def fetchall(self) -> list[Any]:
        """Every row as a tuple."""
        ...

    def to_arrow_table(self) -> pa.Table:
        """The rows as an Arrow table, in the query's order."""
        ...


class SqlConnection(Protocol):
    """Where the builders' DuckDB SQL runs: a DuckDB connection, or `spark_sql.SparkSqlConnection` on Spark."""

    def sql(self, query: str) -> SqlRelation:
        """A query's result."""
        ...

    def execute(self, query: str) -> Any:
        """Run a statement."""
        ...

    def cursor(self) -> Any:
        """A connection for another thread (DuckDB's cursor; the same Spark connection)."""
        ...

    def close(self) -> None:
        """Release what the connection holds."""
        ...


class FeatureBuildError(ValueError):
    """A build cannot start: no cutoffs, a cutoff after the observed data, or no customers."""


def _ts(day: dt.date | dt.datetime) -> str:
    return f"TIMESTAMP '{day:%Y-%m-%d %H:%M:%S}'" if isinstance(day, dt.datetime) else f"TIMESTAMP '{day:%Y-%m-%d}'"


def create_spine(con: SqlConnection, as_of: Sequence[dt.date]) -> int:
    """The customers to build for: those with an account open at each cutoff (midnight of the date).

    Returns the number of (customer, cutoff) rows. A customer's accounts opened on the
    cutoff day or later do not count; an account closed on the cutoff day or later
    was still open.
    """
    if not as_of:
        raise FeatureBuildError("give at least one as-of date")
    cutoffs = ", ".join(f"({_ts(d)})" for d in sorted(set(as_of)))
    bounds = ", ".join(f"k.cutoff - INTERVAL {w} DAY AS since_{w}d" for w in WINDOWS)
    con.execute("DROP TABLE IF EXISTS spine")
    con.execute(
        f"""CREATE TABLE spine AS
        SELECT a.cid, k.cutoff, {bounds} FROM accounts a, (VALUES {cutoffs}) k(cutoff)
        WHERE a.opened_at < k.cutoff AND (a.arrival_time IS NULL OR a.arrival_time < k.cutoff)
        GROUP BY a.cid, k.cutoff
        HAVING bool_or(a.closed_at IS NULL OR a.closed_at >= k.cutoff)"""
    )
    row = con.sql("SELECT count(*) FROM spine").fetchall()[0]
    return int(row[0]) if row else 0


def feature_set_sql(feature_set: FeatureSet, earliest_cutoff: dt.date | None = None) -> str:
    """One statement computing a feature set for every spine row.

    With `earliest_cutoff`, a part's `lookback_days` becomes a constant lower bound on
    its event times (rows older than any window are skipped before the join) and its
    `where` is applied before the join too; without it, every row is joined.
    """
    ctes, cols, joins = [], [], []
    for i, part in enumerate(feature_set.parts):
        pit = PIT.format(time=part.time)
        if earliest_cutoff is not None:
            if part.lookback_days is not None:
                start = earliest_cutoff - dt.timedelta(days=part.lookback_days)
                pit += f" AND e.{part.time} >= {_ts(start)}"
            if part.where:
                pit += f" AND ({part.where})"
        if part.query is not None:
            query = part.query.format(pit=pit)
        else:
            aggs = ", ".join(f'{f.sql} AS "{f.name}"' for f in part.features)
            query = (
                f"SELECT s.cid, s.cutoff, {aggs} FROM spine s JOIN {part.source} e "
                f"ON e.cid = s.cid AND {pit} GROUP BY s.cid, s.cutoff"
            )
        ctes.append(f"p{i} AS ({query})")
        joins.append(f"LEFT JOIN p{i} ON p{i}.cid = s.cid AND p{i}.cutoff = s.cutoff")
        for f in part.features:
            value = f'p{i}."{f.name}"'
            if f.fill is not None:
                value = f"coalesce({value}, {f.fill})"
            cols.append(f'CAST({value} AS {f.dtype}) AS "{f.name}"')
    derived = "".join(f', CAST({f.sql} AS {f.dtype}) AS "{f.name}"' for f in feature_set.derived)
    # the base's features by name (not `b.* EXCLUDE (...)`, which Spark SQL lacks: the build also runs there)
    named = ", ".join(f'b."{f.name}"' for p in feature_set.parts for f in p.features)
    return (
        f"WITH {', '.join(ctes)}, base AS (SELECT s.cid, s.cutoff, {', '.join(cols)} FROM spine s {' '.join(joins)}) "
        f"SELECT c.customer_key, CAST(b.cutoff AS DATE) AS as_of, {named}{derived} "
        f"FROM base b JOIN customers c USING (cid) ORDER BY b.cutoff, b.cid"
    )


def build_feature_set(con: SqlConnection, feature_set: FeatureSet, skip_old: bool = True) -> pa.Table:
    """One row per spine row: customer_key, as_of, then the set's features.

    `skip_old=False` joins every event whatever its age (the same values, slower: tests use it
    to show that the look-back bounds change nothing).
    """
    earliest = None
    if skip_old:
        row = con.sql("SELECT CAST(min(cutoff) AS DATE) FROM spine").fetchall()[0]
        earliest = row[0]
    return con.sql(feature_set_sql(feature_set, earliest)).to_arrow_table()


def build_interactions(con: SqlConnection) -> pa.Table:
    """Customer x product purchases before each cutoff (the recommender's matrix, long format)."""
    pit = PIT.format(time="event_time")
    sql = f"""
    SELECT c.customer_key, CAST(s.cutoff AS DATE) AS as_of, e.product AS product_id,
           CAST(count(*) FILTER (WHERE e.kind = 'purchase') AS BIGINT) AS purchases,
           CAST(count(*) FILTER (WHERE e.kind = 'refund') AS BIGINT) AS refunds,
           CAST(coalesce(sum(e.amount) FILTER (WHERE e.kind = 'purchase'), 0) AS DOUBLE) AS spend,
           date_diff('second', max(e.event_time) FILTER (WHERE e.kind = 'purchase'), s.cutoff) / 86400.0
               AS days_since_purchase,
           coalesce(any_value(p.is_recurring), false)
               AND count(*) FILTER (WHERE e.kind = 'purchase') > count(*) FILTER (WHERE e.kind = 'refund') AS holds
    FROM spine s
    JOIN transactions e ON e.cid = s.cid AND {pit}
    JOIN products p ON p.product_id = e.product AND NOT coalesce(p.is_plan, false)
    JOIN customers c ON c.cid = s.cid
    WHERE e.kind IN ('purchase', 'refund')
    GROUP BY s.cid, c.customer_key, s.cutoff, e.product
    ORDER BY s.cutoff, s.cid, product_id"""
    return con.sql(sql).to_arrow_table()


def build_labels(con: SqlConnection, labels: LabelConfig, observed_until: dt.datetime) -> pa.Table:
    """Outcomes after each cutoff: churn within horizons, time to churn with censoring, any purchase, offer test.

    Contractual churn: a customer churns when the last of their accounts closes.
    Non-contractual churn: `churn_<h>d` is no purchase within h days of the cutoff, and
    the customer has churned once `inactivity_days` pass without a purchase (see
    `_lapse_sql`); those labels also carry the purchase history a probability-alive
    baseline needs (`rfm_*`, from before the cutoff only). A label whose horizon reaches
    past `observed_until` (the end of the observed data) is empty unless the event
    already decided it; `time_to_churn_days` is then censored at `observed_until`.
    """
    end = _ts(observed_until)
    h = labels.purchase_horizon_days
    window = (
        f"e.event_time >= s.cutoff AND e.event_time < s.cutoff + INTERVAL {h} DAY AND e.event_time < {end} "
        "AND e.kind = 'purchase'"
    )
    known = f"s.cutoff + INTERVAL {h} DAY <= {end}"
    any_col = f"CASE WHEN b.any_purchase THEN true WHEN {known} THEN false END AS buys_any_{h}d"
    longest = max(labels.churn_horizons_days)
    offers = _has_rows(con, "offers")
    offer_cte = (
        f""", o AS (SELECT s.cid, s.cutoff,
                 arg_min(struct_pack(g := e."group", o := CASE WHEN e.outcome_window_end IS NULL
                             OR e.outcome_window_end <= {end} THEN e.outcome END),
                         (e.assigned_at, e."group")) AS first_offer
             FROM spine s JOIN offers e ON e.cid = s.cid AND e.assigned_at >= s.cutoff
                  AND e.assigned_at < s.cutoff + INTERVAL {longest} DAY
             GROUP BY s.cid, s.cutoff)"""
        if offers
        else ""
    )
    offer_cols = (
        ", o.first_offer.g AS offer_group, o.first_offer.o AS offer_outcome"
        if offers
        else ", CAST(NULL AS VARCHAR) AS offer_group, CAST(NULL AS BOOLEAN) AS offer_outcome"
    )
    offer_join = "LEFT JOIN o ON o.cid = s.cid AND o.cutoff = s.cutoff" if offers else ""
    if labels.churn_definition == "contractual":
        churn_ctes, churn_cols, churn_join = _account_churn_sql(labels, end)
    else:
        churn_ctes, churn_cols, churn_join = _lapse_sql(labels, end)
    sql = f"""
    WITH {churn_ctes},
         b AS (SELECT s.cid, s.cutoff, true AS any_purchase
               FROM spine s JOIN transactions e ON e.cid = s.cid AND {window} GROUP BY s.cid, s.cutoff){offer_cte}
    SELECT c.customer_key, CAST(s.cutoff AS DATE) AS as_of, {churn_cols}, {any_col}{offer_cols}
    FROM spine s JOIN customers c ON c.cid = s.cid
    {churn_join}
    LEFT JOIN b ON b.cid = s.cid AND b.cutoff = s.cutoff
    {offer_join}
    ORDER BY s.cutoff, s.cid"""
    return con.sql(sql).to_arrow_table()


def _account_churn_sql(labels: LabelConfig, end: str) -> tuple[str, str, str]:
    """Contractual churn: the time the last account closed (never, while one is open)."""
    cols = [
        f"CASE WHEN ch.churn_time < s.cutoff + INTERVAL {h} DAY AND ch.churn_time <= {end} THEN true "
        f"WHEN s.cutoff + INTERVAL {h} DAY <= {end} THEN false END AS churn_{h}d"
        for h in labels.churn_horizons_days
    ]
    cols.append(
        f"date_diff('second', s.cutoff, CASE WHEN ch.churn_time <= {end} THEN ch.churn_time ELSE {end} END) / 86400.0 "
        "AS time_to_churn_days"
    )
    cols.append(f"coalesce(ch.churn_time <= {end}, false) AS churn_observed")
    ctes = """ch AS (SELECT cid, CASE WHEN bool_and(closed_at IS NOT NULL) THEN max(closed_at) END AS churn_time
                FROM accounts GROUP BY cid)"""
    return ctes, ", ".join(cols), "LEFT JOIN ch ON ch.cid = s.cid"


def _lapse_sql(labels: LabelConfig, end: str) -> tuple[str, str, str]:
    """Non-contractual churn from purchases alone.

    `churn_<h>d`: no purchase in [cutoff, cutoff + h) - true once the window has passed
    without one, false as soon as a purchase is seen, empty while undecided. Time to churn
    (`inactivity_days` = N): from the cutoff and each later purchase, the first gap of N
    days without a purchase; the customer has churned at its start + N, so the time is at
    least N, and "churned within N days" is exactly `churn_<N>d`. No such gap before the end
    of the data: censored there. `rfm_*` are a BG/NBD model's inputs in days, from purchase
    days before the cutoff that had also arrived by then: repeat purchase days, the last
    one's age since the first (`t_x`), and the first's age at the cutoff (`T`).
    """
    n = labels.lapse_days
    mine = "e.cid = s.cid AND e.kind = 'purchase'"
    ctes = f"""after AS (SELECT s.cid, s.cutoff, e.event_time AS t FROM spine s
                   JOIN transactions e ON {mine} AND e.event_time >= s.cutoff AND e.event_time < {end}),
         pts AS (SELECT cid, cutoff, cutoff AS t, false AS bought FROM spine
                 UNION ALL SELECT cid, cutoff, t, true FROM after),
         gaps AS (SELECT cid, cutoff, t, bought,
                         coalesce(lead(t) OVER (PARTITION BY cid, cutoff ORDER BY t), {end}) AS nxt
                  FROM pts),
         lapse AS (SELECT cid, cutoff, min(t) FILTER (WHERE nxt >= t + INTERVAL {n} DAY) AS lapse_start,
                          min(t) FILTER (WHERE bought) AS next_purchase
                   FROM gaps GROUP BY cid, cutoff),
         hist AS (SELECT s.cid, s.cutoff, count(DISTINCT CAST(e.event_time AS DATE)) AS days,
                         min(CAST(e.event_time AS DATE)) AS first_day, max(CAST(e.event_time AS DATE)) AS last_day
                  FROM spine s JOIN transactions e ON {mine} AND e.event_time < s.cutoff
                       AND (e.arrival_time IS NULL OR e.arrival_time < s.cutoff)
                  GROUP BY s.cid, s.cutoff)"""
    cols = [
        f"CASE WHEN l.next_purchase < s.cutoff + INTERVAL {h} DAY THEN false "
        f"WHEN s.cutoff + INTERVAL {h} DAY <= {end} THEN true END AS churn_{h}d"
        for h in labels.churn_horizons_days
    ]
    churned_at = f"l.lapse_start + INTERVAL {n} DAY"
    cols += [
        f"date_diff('second', s.cutoff, coalesce({churned_at}, {end})) / 86400.0 AS time_to_churn_days",
        "l.lapse_start IS NOT NULL AS churn_observed",
        "coalesce(hst.days - 1, 0) AS rfm_repeat_days",
        "coalesce(date_diff('day', hst.first_day, hst.last_day), 0) AS rfm_t_x_days",
        "coalesce(date_diff('day', hst.first_day, CAST(s.cutoff AS DATE)), 0) AS rfm_age_days",
    ]
    joins = (
        "LEFT JOIN lapse l ON l.cid = s.cid AND l.cutoff = s.cutoff\n"
        "    LEFT JOIN hist hst ON hst.cid = s.cid AND hst.cutoff = s.cutoff"
    )
    return ctes, ", ".join(cols), joins


def build_purchase_labels(con: SqlConnection, labels: LabelConfig, observed_until: dt.datetime) -> pa.Table:
    """Whether each customer bought each purchasable product within the horizon after each cutoff.

    Long format (customer_key, as_of, product_id, bought), so a new product adds rows, not
    columns. Empty where the horizon reaches past `observed_until` and no purchase was seen.
    Purchasable products are the catalogue without plans. Built one cutoff at a time: the
    table is customers x products per cutoff, and sorting all cutoffs at once outgrows
    DuckDB's memory limit at 100k customers and a large catalogue.
    """
    end = _ts(observed_until)
    h = labels.purchase_horizon_days
    cutoffs = [row[0] for row in con.sql("SELECT DISTINCT cutoff FROM spine ORDER BY 1").fetchall()]
    products = con.sql(f"SELECT count(*) FROM ({_PURCHASABLE})").fetchall()[0][0] or 1
    step = max(1, LABEL_ROWS_PER_PART // int(products))  # customers per part
    parts = []
    for c in cutoffs:  # and within a cutoff, a range of customers at a time, in the order of the whole table
        low, high = con.sql(f"SELECT min(cid), max(cid) FROM spine WHERE cutoff = {_ts(c)}").fetchall()[0]
        for first in range(int(low), int(high) + 1, step):
            part = _purchase_labels_sql(h, end, _ts(c), (first, first + step - 1))
            parts.append(con.sql(part).to_arrow_table())
    return pa.concat_tables(parts) if parts else con.sql(_purchase_labels_sql(h, end, "NULL")).to_arrow_table()


# Purchase labels are built this many rows (customers x products) at a time: at 1M customers the whole cutoff
# (tens of millions of rows, sorted) outgrew DuckDB's memory limit and Spark's 1 GiB driver result limit.
LABEL_ROWS_PER_PART = 4_000_000
_PURCHASABLE = "SELECT DISTINCT product_id FROM products WHERE NOT coalesce(is_plan, false) AND product_id IS NOT NULL"


def _purchase_labels_sql(h: int, end: str, cutoff: str, cids: tuple[int, int] | None = None) -> str:
    """One cutoff's labels (`cids`: of the customers whose cid is in that closed range)."""
    if cids is not None:
        cutoff = f"{cutoff} AND s.cid BETWEEN {cids[0]} AND {cids[1]}"  # both uses below are `s.cutoff = ...`
    return f"""
    WITH p AS ({_PURCHASABLE}),
         b AS (SELECT DISTINCT s.cid, s.cutoff, e.product
               FROM spine s JOIN transactions e ON e.cid = s.cid AND e.kind = 'purchase'
                    AND e.event_time >= s.cutoff AND e.event_time < s.cutoff + INTERVAL {h} DAY
                    AND e.event_time < {end} AND s.cutoff = {cutoff})
    SELECT c.customer_key, CAST(s.cutoff AS DATE) AS as_of, p.product_id,
           CASE WHEN b.product IS NOT NULL THEN true WHEN s.cutoff + INTERVAL {h} DAY <= {end} THEN false END
               AS bought
    FROM spine s CROSS JOIN p JOIN customers c ON c.cid = s.cid
    LEFT JOIN b ON b.cid = s.cid AND b.cutoff = s.cutoff AND b.product = p.product_id
    WHERE s.cutoff = {cutoff}
    ORDER BY s.cid, p.product_id"""


def _has_rows(con: SqlConnection, table: str) -> bool:
    row = con.sql(f"SELECT count(*) > 0 FROM {table}").fetchall()[0]
    return bool(row and row[0])


def build_training_set(
    con: SqlConnection,
    config: FeatureConfig,
    feature_sets: Sequence[FeatureSet],
    as_of: Sequence[dt.date],
    observed_until: dt.datetime,
) -> pa.Table:
    """Features of every set and the labels, one row per (customer, cutoff), no row seeing its future."""
    if max(as_of) > observed_until.date():
        raise FeatureBuildError(f"as-of {max(as_of)} is after the end of the observed data ({observed_until:%Y-%m-%d})")
    if create_spine(con, as_of) == 0:
        raise FeatureBuildError("no customer has an open account at any of the given as-of dates")
    table = build_labels(con, config.labels, observed_until)
    for fs in feature_sets:
        built = build_feature_set(con, fs)
        # Every builder orders its rows by (cutoff, cid) over the same spine; cids follow customer_key order.
        assert built.column("customer_key").equals(table.column("customer_key"))
        for name in built.column_names[2:]:
            table = table.append_column(name, built.column(name))
    return table
