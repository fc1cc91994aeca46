"""Feature definitions on a tiny hand-made history, with every value computed by hand.

The cutoff is 2025-01-01 00:00: features may use what happened and arrived before it.
Customer A has a full history; B has two accounts and no activity; C opens after the
cutoff and D churned before it (neither is in the spine).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb
import pandas as pd
import pytest

from features.featurestore.build import (
    FeatureBuildError,
    build_feature_set,
    build_interactions,
    build_labels,
    build_purchase_labels,
    build_training_set,
    create_spine,
)
from features.featurestore.config import LabelConfig, load_feature_config
from features.featurestore.definitions import feature_sets
from features.featurestore.inputs import FeatureInputError, register_frames

CUTOFF = dt.date(2025, 1, 1)
T = pd.Timestamp


def _frames() -> dict[str, pd.DataFrame]:
    return {
        "products": pd.DataFrame(
            {
                "product_id": ["PLN-A", "PLN-B", "ADD-X", "BST-Y"],
                "is_plan": [True, True, False, False],
                "is_recurring": [True, True, True, False],
                "monthly_price": [20.0, 30.0, 5.0, 3.0],
            }
        ),
        "accounts": pd.DataFrame(
            {
                "customer_key": ["A", "B", "B", "C", "D"],
                "opened_at": [T("2024-01-01"), T("2024-06-01"), T("2024-07-01"), T("2025-02-01"), T("2023-01-01")],
                "closed_at": [None, T("2025-02-15"), T("2025-01-20"), None, T("2024-12-01")],
            }
        ),
        "profiles": pd.DataFrame(
            {
                "customer_key": ["A", "A", "A", "B"],
                "created_at": [T("2024-01-02"), T("2024-11-01"), T("2025-03-01"), T("2024-06-01")],
                "segment": ["consumer", "premium", "small_business", "consumer"],
                "region": ["West", None, "South", "South"],
                "acquisition_channel": ["online", "retail_store", "partner", "telesales"],
            }
        ),
        "transactions": pd.DataFrame(
            [
                ("A", "2024-01-01", None, "plan_change", "PLN-A", 20.0),
                ("A", "2024-09-01", None, "plan_change", "PLN-B", 30.0),
                ("A", "2024-06-01", None, "purchase", "ADD-X", 5.0),
                ("A", "2024-06-10", None, "refund", "ADD-X", 5.0),
                ("A", "2024-10-01", None, "purchase", "BST-Y", 3.0),
                ("A", "2024-11-15", None, "discount", "PLN-B", 6.0),
                ("A", "2024-12-20", "2024-12-20 03:00", "purchase", "ADD-X", 5.0),
                ("A", "2024-12-31 23:00", "2025-01-02", "purchase", "BST-Y", 3.0),  # arrived late
                ("A", "2025-01-05", None, "purchase", "ADD-X", 5.0),  # after the cutoff
            ],
            columns=["customer_key", "event_time", "arrival_time", "kind", "product", "amount"],
        ).astype({"event_time": "datetime64[ns]", "arrival_time": "datetime64[ns]"}),
        "tickets": pd.DataFrame(
            [
                ("A", "2024-12-01", "phone", "billing", True, "2024-12-02", 4.0),
                ("A", "2024-12-05", "chat", "billing", False, "2025-01-03", 2.0),  # resolved after the cutoff
                ("A", "2024-06-01", "email", "technical", True, "2024-06-01 05:00", 5.0),
                ("A", "2025-01-10", "phone", "network", True, "2025-01-10", 1.0),  # after the cutoff
            ],
            columns=[
                "customer_key",
                "event_time",
                "channel",
                "category",
                "first_contact_resolution",
                "resolved_at",
                "csat",
            ],  # fmt: skip
        ).astype({"event_time": "datetime64[ns]", "resolved_at": "datetime64[ns]"}),
        "surveys": pd.DataFrame(
            {
                "customer_key": ["A", "A", "A"],
                "event_time": [T("2024-03-01"), T("2024-11-01"), T("2025-01-01")],  # the last is on the cutoff
                "score": [9.0, 6.0, 0.0],
            }
        ),
        "web": pd.DataFrame(
            [
                ("A", "2024-12-15", None, "session", None),
                ("A", "2024-12-20", None, "session", None),
                ("A", "2024-11-01", None, "session", None),
                ("A", "2024-09-01", None, "session", None),
                ("A", "2024-12-31 12:00", "2025-01-01", "session", None),  # arrives at the cutoff: too late
                ("A", "2024-12-10", None, "page_view", "pricing"),
                ("A", "2024-10-15", None, "page_view", "cancellation"),
                ("A", "2024-12-30", None, "micro_conversion", "app_install"),
                ("A", "2024-11-20", None, "self_service_failed", "pay_bill"),
            ],
            columns=["customer_key", "event_time", "arrival_time", "event_type", "page"],
        ).astype({"event_time": "datetime64[ns]", "arrival_time": "datetime64[ns]"}),
        "golden": pd.DataFrame(
            {"customer_key": ["A", "B"], "birth_date": [T("1990-06-15"), None], "gender": ["F", None]}
        ),
        "offers": pd.DataFrame(
            {
                "customer_key": ["A"],
                "assigned_at": [T("2025-01-15")],
                "group": ["treatment"],
                "outcome": [False],
                "outcome_window_end": [T("2025-04-15")],
            }
        ),
    }


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    register_frames(connection, _frames())
    create_spine(connection, [CUTOFF])
    return connection


CONFIG = load_feature_config()
SETS = {fs.name: fs for fs in feature_sets(CONFIG)}


def _rows(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, dict[str, Any]]:
    table = build_feature_set(con, SETS[name]).to_pylist()
    return {r.pop("customer_key"): r for r in table}


def test_the_spine_holds_customers_with_an_account_open_at_the_cutoff(con: duckdb.DuckDBPyConnection) -> None:
    rows = _rows(con, "relationship")
    assert sorted(rows) == ["A", "B"]  # C opens after the cutoff, D closed before it
    assert {r["as_of"] for r in rows.values()} == {CUTOFF}


def test_relationship_features(con: duckdb.DuckDBPyConnection) -> None:
    a, b = _rows(con, "relationship").values()
    assert a == {
        "as_of": CUTOFF,
        "tenure_days": 366.0,
        "open_accounts": 1,
        "segment": "premium",  # the newest record before the cutoff (the 2025-03 one is later)
        "region": "West",  # the newest record that has a region
        "acquisition_channel": "online",  # the first record's channel
        "plan": "PLN-B",
        "plan_changes_365d": 1,  # 2024-01-01 is 366 days back
        "products_held": 1,  # ADD-X bought twice, refunded once; BST-Y is not recurring
    }
    assert b["tenure_days"] == 214.0 and b["open_accounts"] == 2
    assert b["plan"] is None and b["products_held"] == 0 and b["plan_changes_365d"] == 0


def test_value_features(con: duckdb.DuckDBPyConnection) -> None:
    a, b = _rows(con, "value").values()
    assert a["recency_days"] == 12.0
    assert (a["frequency_30d"], a["monetary_30d"]) == (1, 5.0)
    assert (a["frequency_90d"], a["monetary_90d"]) == (1, 5.0)  # 2024-10-01 is 92 days back
    assert (a["frequency_365d"], a["monetary_365d"]) == (3, 13.0)  # the late 2024-12-31 purchase is unseen
    assert (a["discounts_365d"], a["discount_amount_365d"], a["days_since_last_discount"]) == (1, 6.0, 47.0)
    assert (a["refunds_365d"], a["refund_amount_365d"]) == (1, 5.0)
    assert a["discount_share_365d"] == pytest.approx(6 / 19)
    assert a["refund_rate_365d"] == pytest.approx(1 / 3)
    assert b["recency_days"] is None and b["frequency_365d"] == 0 and b["monetary_365d"] == 0.0
    assert b["discount_share_365d"] is None and b["refund_rate_365d"] is None


def test_service_features(con: duckdb.DuckDBPyConnection) -> None:
    a, b = _rows(con, "service").values()
    assert (a["tickets_90d"], a["tickets_365d"]) == (2, 3)
    assert (a["tickets_channel_phone_90d"], a["tickets_channel_chat_90d"], a["tickets_channel_email_90d"]) == (1, 1, 0)
    assert (a["tickets_category_billing_90d"], a["tickets_category_technical_90d"]) == (2, 0)
    assert a["fcr_rate_365d"] == 1.0  # the chat ticket was resolved after the cutoff: not known yet
    assert a["csat_mean_365d"] == 4.5
    assert a["days_since_last_ticket"] == 27.0
    assert a["repeat_contacts_90d"] == 1  # 2024-12-05 came 4 days after 2024-12-01
    assert (a["nps_last"], a["nps_mean_365d"], a["days_since_nps"]) == (6.0, 7.5, 61.0)
    assert a["self_service_failed_90d"] == 1
    assert b["tickets_365d"] == 0 and b["fcr_rate_365d"] is None and b["nps_last"] is None
    assert b["repeat_contacts_90d"] == 0 and b["days_since_last_ticket"] is None


def test_digital_features(con: duckdb.DuckDBPyConnection) -> None:
    a, b = _rows(con, "digital").values()
    assert (a["sessions_30d"], a["sessions_90d"]) == (2, 3)  # the session arriving at the cutoff is unseen
    assert a["sessions_trend"] == 1.5  # 2 - (3 - 2) / 2
    assert a["days_since_last_session"] == 12.0
    assert (a["micro_conversions_30d"], a["micro_conversions_90d"]) == (1, 1)
    assert (a["page_views_pricing_30d"], a["page_views_pricing_90d"]) == (1, 1)
    assert (a["page_views_cancellation_30d"], a["page_views_cancellation_90d"]) == (0, 1)
    assert b["sessions_90d"] == 0 and b["sessions_trend"] == 0.0 and b["days_since_last_session"] is None


def test_attributes_for_audits_come_from_the_golden_record(con: duckdb.DuckDBPyConnection) -> None:
    a, b = _rows(con, "attributes").values()
    assert (a["age_years"], a["age_band"], a["gender"]) == (34.0, "25-34", "F")
    assert (b["age_years"], b["age_band"], b["gender"]) == (None, None, None)


def test_interactions_are_purchases_per_product_before_the_cutoff(con: duckdb.DuckDBPyConnection) -> None:
    rows = {r["product_id"]: r for r in build_interactions(con).to_pylist()}
    assert set(rows) == {"ADD-X", "BST-Y"}  # plans are not products to recommend
    x, y = rows["ADD-X"], rows["BST-Y"]
    assert (x["purchases"], x["refunds"], x["spend"], x["holds"]) == (2, 1, 10.0, True)
    assert x["days_since_purchase"] == 12.0
    assert (y["purchases"], y["refunds"], y["holds"]) == (1, 0, False)  # not recurring: never held


LABELS = LabelConfig(churn_horizons_days=[30, 90], purchase_horizon_days=90)


def _labels(con: duckdb.DuckDBPyConnection, until: str) -> dict[str, dict]:
    return {r.pop("customer_key"): r for r in build_labels(con, LABELS, dt.datetime.fromisoformat(until)).to_pylist()}


def _bought(con: duckdb.DuckDBPyConnection, until: str) -> dict[tuple[str, str], bool | None]:
    rows = build_purchase_labels(con, LABELS, dt.datetime.fromisoformat(until)).to_pylist()
    return {(r["customer_key"], r["product_id"]): r["bought"] for r in rows}


def test_labels_churn_time_to_churn_purchases_and_offer(con: duckdb.DuckDBPyConnection) -> None:
    labels = _labels(con, "2025-06-01")
    a, b = labels["A"], labels["B"]
    assert (a["churn_30d"], a["churn_90d"], a["churn_observed"]) == (False, False, False)
    assert a["time_to_churn_days"] == 151.0  # censored at the end of the data
    # B's last account closes 2025-02-15, 45 days after the cutoff
    assert (b["churn_30d"], b["churn_90d"], b["churn_observed"], b["time_to_churn_days"]) == (False, True, True, 45.0)
    assert a["buys_any_90d"] is True and b["buys_any_90d"] is False
    # one row per customer and purchasable product (plans are not products to buy)
    assert _bought(con, "2025-06-01") == {
        ("A", "ADD-X"): True, ("A", "BST-Y"): False, ("B", "ADD-X"): False, ("B", "BST-Y"): False,
    }  # fmt: skip
    assert (a["offer_group"], a["offer_outcome"]) == ("treatment", False)
    assert b["offer_group"] is None


def test_labels_past_the_end_of_the_data_are_censored(con: duckdb.DuckDBPyConnection) -> None:
    labels = _labels(con, "2025-02-01")
    a, b = labels["A"], labels["B"]
    assert a["churn_30d"] is False and a["churn_90d"] is None  # 90 days reach past the data
    # B's closure (2025-02-15) lies after the end of the data: not yet known
    assert b["churn_90d"] is None and b["churn_observed"] is False and b["time_to_churn_days"] == 31.0
    assert a["buys_any_90d"] is True and b["buys_any_90d"] is None
    bought = _bought(con, "2025-02-01")
    assert bought[("A", "ADD-X")] is True  # bought on 2025-01-05: already known
    assert bought[("A", "BST-Y")] is None and bought[("B", "ADD-X")] is None
    assert a["offer_outcome"] is None  # the outcome window ends after the data


def test_training_set_joins_labels_and_every_set_row_by_row() -> None:
    connection = duckdb.connect()
    register_frames(connection, _frames())
    table = build_training_set(
        connection, CONFIG, feature_sets(CONFIG), [CUTOFF, dt.date(2025, 3, 1)], dt.datetime(2025, 6, 1)
    )
    rows = {(r["customer_key"], r["as_of"]): r for r in table.to_pylist()}
    # On 2025-03-01 B has churned and C (opened 2025-02-01) has joined.
    assert set(rows) == {("A", CUTOFF), ("B", CUTOFF), ("A", dt.date(2025, 3, 1)), ("C", dt.date(2025, 3, 1))}
    assert rows[("A", CUTOFF)]["monetary_365d"] == 13.0 and rows[("A", CUTOFF)]["churn_90d"] is False
    assert rows[("A", dt.date(2025, 3, 1))]["monetary_365d"] == 21.0  # the late purchase and 2025-01-05 arrived
    with pytest.raises(FeatureBuildError, match="after the end of the observed data"):
        build_training_set(connection, CONFIG, feature_sets(CONFIG), [dt.date(2026, 1, 1)], dt.datetime(2025, 6, 1))
    with pytest.raises(FeatureBuildError, match="no customer"):
        build_training_set(connection, CONFIG, feature_sets(CONFIG), [dt.date(2020, 1, 1)], dt.datetime(2025, 6, 1))


def test_register_frames_names_what_is_wrong() -> None:
    frames = _frames()
    with pytest.raises(FeatureInputError, match="accounts frame is required"):
        register_frames(duckdb.connect(), {"products": frames["products"]})
    with pytest.raises(FeatureInputError, match=r"unknown source\(s\) \['weblogs'\]"):
        register_frames(duckdb.connect(), {**frames, "weblogs": frames["web"]})
    with pytest.raises(FeatureInputError, match=r"web: unknown column\(s\) \['browser'\]"):
        register_frames(duckdb.connect(), {**frames, "web": frames["web"].assign(browser="x")})


def test_a_set_without_its_source_drops_those_features_and_what_derives_from_them() -> None:
    service, dropped = SETS["service"].without_sources({"web"})
    assert service is not None and "self_service_failed_90d" in dropped
    assert "self_service_failed_90d" not in {f.name for f in service.features}
    digital, dropped = SETS["digital"].without_sources({"web"})
    assert digital is None and "sessions_trend" in dropped
    assert service.digest != SETS["service"].digest


RETAIL = LabelConfig(churn_definition="non_contractual", churn_horizons_days=[30, 90], purchase_horizon_days=90)


def _retail_labels(con: duckdb.DuckDBPyConnection, until: str) -> dict[str, dict]:
    rows = build_labels(con, RETAIL, dt.datetime.fromisoformat(until)).to_pylist()
    return {r.pop("customer_key"): r for r in rows}


def test_non_contractual_churn_is_no_purchase_within_the_horizon(con: duckdb.DuckDBPyConnection) -> None:
    a, b = _retail_labels(con, "2025-06-01").values()
    # A buys on 2025-01-05, then nothing until the end of the data: churned 90 days after that purchase
    assert (a["churn_30d"], a["churn_90d"], a["churn_observed"], a["time_to_churn_days"]) == (False, False, True, 94.0)
    # B never buys: churned once 90 days pass from the cutoff, so "churned within 90 days" is churn_90d
    assert (b["churn_30d"], b["churn_90d"], b["churn_observed"], b["time_to_churn_days"]) == (True, True, True, 90.0)
    # BG/NBD inputs from purchase days before the cutoff that had arrived (the late 2024-12-31 one had not)
    assert (a["rfm_repeat_days"], a["rfm_t_x_days"], a["rfm_age_days"]) == (2, 202, 214)
    assert (b["rfm_repeat_days"], b["rfm_t_x_days"], b["rfm_age_days"]) == (0, 0, 0)
    assert a["buys_any_90d"] is True and b["buys_any_90d"] is False


def test_non_contractual_labels_wait_for_their_window(con: duckdb.DuckDBPyConnection) -> None:
    a, b = _retail_labels(con, "2025-02-01").values()
    assert (a["churn_30d"], a["churn_90d"]) == (False, False)  # a purchase already decided both
    assert (b["churn_30d"], b["churn_90d"]) == (True, None)  # 90 days have not passed yet
    # no 90-day gap has completed by the end of the data: both censored there
    assert (a["churn_observed"], a["time_to_churn_days"]) == (False, 31.0)
    assert (b["churn_observed"], b["time_to_churn_days"]) == (False, 31.0)


def test_label_definitions_are_checked_and_stored_compatibly() -> None:
    assert LABELS.definition() == {"churn_horizons_days": [30, 90], "purchase_horizon_days": 90}
    assert RETAIL.definition()["churn_definition"] == "non_contractual"
    assert RETAIL.definition()["inactivity_days"] == 90
    assert "no purchase within 90 days" in RETAIL.describe_churn(90)
    with pytest.raises(ValueError, match="inactivity_days applies to churn_definition: non_contractual"):
        LabelConfig(inactivity_days=30)


def test_purchase_labels_built_a_range_of_customers_at_a_time_equal_the_whole(
    con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of a few rows (a range of customers each) give the same table, in the same order, as one part."""
    import features.featurestore.build as build

    until = dt.datetime.fromisoformat("2024-12-31")
    whole = build_purchase_labels(con, LABELS, until)
    monkeypatch.setattr(build, "LABEL_ROWS_PER_PART", 1)  # one customer a part
    assert build_purchase_labels(con, LABELS, until).equals(whole)
    assert whole.num_rows > 0
