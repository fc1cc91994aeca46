"""Features from whatever canonical sources a business has, on tiny hand-made histories.

A retailer has transactions only: customers come from their first transaction, the
catalogue from the products named, the kind from the amount's sign, the amount from unit
price x quantity. Features that need what is missing are dropped with the reason; a
collapsed feature is dropped with a warning under `collapsed: warn`, and a version keeps
the columns it was first stored with.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from features.featurestore.build import build_feature_set, build_interactions, create_spine
from features.featurestore.config import FeatureConfig, FeatureConfigError, load_feature_config
from features.featurestore.definitions import check_exclusions, feature_sets
from features.featurestore.inputs import FeatureInputError, InputSummary, register_frames
from features.featurestore.quality import FeatureQualityError
from features.featurestore.steps import BuiltSet, build_one, materialize

CUTOFF = dt.date(2025, 1, 1)
T = pd.Timestamp
CONFIG: FeatureConfig = load_feature_config()
SETS = {fs.name: fs for fs in feature_sets(CONFIG)}


def _lines() -> pd.DataFrame:
    """Purchase lines: unit price and quantity; a negative quantity is a return."""
    return pd.DataFrame(
        [
            ("A", "2024-03-01", "SKU1", 2.5, 4.0),
            ("A", "2024-12-01", "SKU2", 10.0, 1.0),
            ("A", "2024-12-05", "SKU2", 10.0, -1.0),  # a return
            ("B", "2024-11-20", "SKU1", 2.5, 2.0),
            ("C", "2025-02-01", "SKU3", 1.0, 1.0),  # first seen after the cutoff: not a customer yet
        ],
        columns=["customer_key", "event_time", "product", "amount", "quantity"],
    ).astype({"event_time": "datetime64[ns]"})


def _inputs(frames: dict[str, pd.DataFrame]) -> tuple[duckdb.DuckDBPyConnection, InputSummary]:
    con = duckdb.connect()
    return con, register_frames(con, frames)


def test_transactions_alone_define_customers_catalogue_kinds_and_amounts() -> None:
    con, summary = _inputs({"transactions": _lines()})
    assert summary.derived.keys() == {"accounts", "products"}
    assert "transactions.kind" in summary.unmapped and "accounts.closed_at" in summary.unmapped
    assert sorted(r[0] for r in con.sql("SELECT product_id FROM products").fetchall()) == ["SKU1", "SKU2", "SKU3"]
    kinds = con.sql("SELECT kind, amount FROM transactions ORDER BY event_time").fetchall()
    assert kinds[:4] == [("purchase", 10.0), ("purchase", 5.0), ("purchase", 10.0), ("refund", 10.0)]
    assert create_spine(con, [CUTOFF]) == 2  # A and B; C's first purchase is after the cutoff
    usable, dropped = SETS["value"].without(summary.missing())
    assert usable is not None
    value = build_feature_set(con, usable).to_pandas().set_index("customer_key")
    assert value.loc["A", "frequency_365d"] == 2 and value.loc["A", "monetary_365d"] == 20.0
    assert value.loc["A", "refunds_365d"] == 1 and value.loc["A", "refund_amount_365d"] == 10.0
    assert value.loc["B", "recency_days"] == 42.0
    assert dropped["discounts_365d"].startswith("needs transactions.kind: no table maps it")
    assert dropped["discount_share_365d"] == "reads dropped feature discount_amount_365d"
    relationship, dropped = SETS["relationship"].without(summary.missing())
    assert relationship is not None and [f.name for f in relationship.features] == ["tenure_days"]
    assert dropped["open_accounts"].startswith("needs accounts.closed_at: accounts are derived from the transactions")
    tenure = build_feature_set(con, relationship).to_pandas().set_index("customer_key")["tenure_days"]
    assert tenure.to_dict() == {"A": 306.0, "B": 42.0}  # days since the first purchase


def test_no_accounts_and_no_transactions_is_a_clear_error() -> None:
    with pytest.raises(FeatureInputError, match="accounts frame is required"):
        _inputs({"profiles": pd.DataFrame({"customer_key": ["A"], "created_at": [T("2024-01-01")]})})


def test_an_unknown_excluded_feature_is_named() -> None:
    check_exclusions(list(SETS.values()), ["plan", "recency_days"])
    with pytest.raises(FeatureConfigError, match="exclude_features: no feature is called recency"):
        check_exclusions(list(SETS.values()), ["plan", "recency"])


def test_excluded_features_are_dropped_with_the_reason() -> None:
    usable, dropped = SETS["value"].without({}, excluded={"monetary_30d", "refunds_365d"})
    assert usable is not None and "monetary_30d" not in [f.name for f in usable.features]
    assert dropped == {
        "monetary_30d": "excluded by the feature config (exclude_features)",
        "refunds_365d": "excluded by the feature config (exclude_features)",
        "refund_rate_365d": "reads dropped feature refunds_365d",
    }


def _one_account_each(n: int) -> duckdb.DuckDBPyConnection:
    """n customers with one open account each, so `open_accounts` is 1 for everyone (collapsed)."""
    keys = [f"K{i:03d}" for i in range(n)]
    frames = {
        "accounts": pd.DataFrame(
            {"customer_key": keys, "opened_at": [T("2024-01-01") + pd.Timedelta(days=i) for i in range(n)]}
        ),
        "products": pd.DataFrame({"product_id": ["P"]}),
    }
    con, _ = _inputs(frames)
    create_spine(con, [CUTOFF])
    return con


def _build(
    con: duckdb.DuckDBPyConnection, policy: Literal["warn", "fail"], stored: list[str] | None = None
) -> BuiltSet:
    usable, _ = SETS["relationship"].without({"source profiles": "absent", "source transactions": "absent"})
    assert usable is not None

    def fn(c: duckdb.DuckDBPyConnection) -> pa.Table:
        return build_feature_set(c, usable)

    return build_one(con, usable.key, fn, usable.features, usable.definition(), 10, policy, stored)


def test_a_collapsed_feature_fails_the_build_or_is_dropped_with_the_reason() -> None:
    con = _one_account_each(20)
    with pytest.raises(FeatureQualityError, match=r"relationship@1.open_accounts: collapsed"):
        _build(con, "fail")
    built = _build(con, "warn")
    assert built.dropped == {"open_accounts": "collapsed, every non-empty value of 20 is the same (1) as of 2025-01-01"}
    assert "open_accounts" not in built.table.column_names and "tenure_days" in built.table.column_names
    names = [f["name"] for p in built.definition["parts"] for f in p["features"]]
    assert names == ["tenure_days"] and "open_accounts" not in built.stats["2025-01-01"]["columns"]


def test_a_stored_version_keeps_its_columns_whether_or_not_a_feature_collapses_now() -> None:
    con = _one_account_each(20)
    first = _build(con, "warn")
    kept = _build(con, "warn", stored=["customer_key", "as_of", "tenure_days", "open_accounts"])
    assert "open_accounts" in kept.table.column_names and kept.dropped == {}  # stored with it: kept
    again = _build(con, "warn", stored=list(first.table.column_names))
    assert again.digest == first.digest and again.table.column_names == first.table.column_names


def test_an_empty_interactions_set_is_built_and_not_materialised(tmp_path: Path) -> None:
    from custintel.settings import Settings

    con = _one_account_each(3)  # nobody bought anything
    built = build_one(con, "interactions@1", build_interactions, (), {"name": "interactions"}, None)
    assert built.table.num_rows == 0 and built.stats == {}
    out = materialize(Settings(home=tmp_path), built, grouped=True)
    assert out["skipped"] == "the set has no rows" and out["customers"] == 0
