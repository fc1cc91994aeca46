"""Golden records and the conflict log on tiny hand-made identity records."""

import random
from typing import Any

import pandas as pd
import pytest

from features.identity.config import GOLDEN_ATTRIBUTES, IdentityConfig
from features.identity.golden import CONFLICT_COLUMNS, build_golden_records
from features.identity.records import IDENTITY_COLUMNS

# Trust order deliberately unlike alphabetical order, so that a tie broken by record key
# cannot pass for a tie broken by trust.
TRUST = ["crm", "billing", "shop"]


def _config(**rules: str) -> IdentityConfig:
    """Every attribute on `most_trusted`, addresses parts `with: address`, unless overridden."""
    survivorship: dict[str, dict[str, str]] = {a: {"rule": "most_trusted"} for a in GOLDEN_ATTRIBUTES}
    for part in ("postcode", "city", "state"):
        survivorship[part] = {"with": "address"}
    for attribute, rule in rules.items():
        survivorship[attribute] = {"with": rule[5:]} if rule.startswith("with ") else {"rule": rule}
    return IdentityConfig.model_validate(
        {
            "sources": [{"table": t, "id": "id", "columns": {"email": "email"}} for t in TRUST],
            "survivorship": survivorship,
        }
    )


def _records(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Identity records with the columns of records.py; `key` is '<table>:<id>'."""
    data: dict[str, list[Any]] = {c: [] for c in IDENTITY_COLUMNS}
    for row in rows:
        table, record_id = row["key"].split(":")
        full = {"record_key": row["key"], "source_table": table, "record_id": record_id, **row}
        for column in IDENTITY_COLUMNS:
            data[column].append(full.get(column))
    frame = pd.DataFrame(data).astype("string")
    frame["updated_at"] = pd.to_datetime(pd.Series(data["updated_at"], dtype="object")).astype("datetime64[us]")
    return frame


def _crosswalk(mapping: dict[str, list[str]]) -> pd.DataFrame:
    pairs = [(record, customer) for customer, records in mapping.items() for record in records]
    return pd.DataFrame(pairs, columns=["record_key", "customer_key"]).astype("string")


def _golden_row(records: pd.DataFrame, config: IdentityConfig, customer: str = "C1") -> pd.Series:
    crosswalk = _crosswalk({customer: records["record_key"].tolist()})
    golden, _ = build_golden_records(records, crosswalk, config)
    assert golden["customer_key"].tolist() == [customer]
    return golden.iloc[0]


def _value(row: pd.Series, column: str) -> Any:
    value = row[column]
    return None if pd.isna(value) else value


def test_most_trusted_picks_the_most_trusted_source_even_when_it_is_older() -> None:
    records = _records(
        [
            {"key": "billing:1", "birth_date": "1980-02-02", "updated_at": "2024-06-01"},
            {"key": "crm:1", "birth_date": "1980-01-01", "updated_at": "2001-01-01"},
            {"key": "shop:1", "birth_date": "1980-03-03", "updated_at": "2025-01-01"},
        ]
    )
    row = _golden_row(records, _config(birth_date="most_trusted"))
    assert row["birth_date"] == "1980-01-01"
    assert row["birth_date_record"] == "crm:1"
    assert row["birth_date_rule"] == "most_trusted"


def test_most_trusted_breaks_a_tie_within_a_source_by_recency() -> None:
    records = _records(
        [
            {"key": "crm:1", "birth_date": "1980-01-01", "updated_at": "2010-01-01"},
            {"key": "crm:2", "birth_date": "1981-01-01", "updated_at": "2020-01-01"},
            {"key": "billing:1", "birth_date": "1982-01-01", "updated_at": "2024-01-01"},
        ]
    )
    row = _golden_row(records, _config(birth_date="most_trusted"))
    assert (row["birth_date"], row["birth_date_record"]) == ("1981-01-01", "crm:2")


def test_most_recent_picks_the_newest_record_whatever_its_source() -> None:
    records = _records(
        [
            {"key": "crm:1", "email": "old@x.com", "updated_at": "2020-01-01"},
            {"key": "shop:1", "email": "new@x.com", "updated_at": "2024-05-01"},
            {"key": "billing:1", "email": "mid@x.com", "updated_at": "2022-01-01"},
        ]
    )
    row = _golden_row(records, _config(email="most_recent"))
    assert row["email"] == "new@x.com"
    assert row["email_record"] == "shop:1"
    assert row["email_rule"] == "most_recent"


def test_most_recent_treats_a_missing_updated_at_as_oldest() -> None:
    records = _records(
        [
            # the most trusted record, but undated: it must not count as recent
            {"key": "crm:1", "email": "undated@x.com", "updated_at": None},
            {"key": "shop:1", "email": "dated@x.com", "updated_at": "1990-01-01"},
        ]
    )
    row = _golden_row(records, _config(email="most_recent"))
    assert (row["email"], row["email_record"]) == ("dated@x.com", "shop:1")


def test_most_recent_falls_back_to_trust_when_no_record_is_dated() -> None:
    records = _records(
        [
            {"key": "shop:1", "email": "shop@x.com"},
            {"key": "billing:1", "email": "billing@x.com"},
        ]
    )
    row = _golden_row(records, _config(email="most_recent"))
    assert (row["email"], row["email_record"]) == ("billing@x.com", "billing:1")


def test_most_recent_breaks_a_tie_on_the_same_day_by_trust() -> None:
    records = _records(
        [
            {"key": "billing:1", "phone": "+12125550100", "updated_at": "2024-01-01"},
            {"key": "shop:1", "phone": "+12125550199", "updated_at": "2024-01-01"},
            {"key": "crm:1", "phone": "+12125550111", "updated_at": "2024-01-01"},
        ]
    )
    row = _golden_row(records, _config(phone="most_recent"))
    assert (row["phone"], row["phone_record"]) == ("+12125550111", "crm:1")


def test_most_frequent_picks_the_majority_over_the_most_trusted_source() -> None:
    records = _records(
        [
            {"key": "crm:1", "first_name": "jon", "updated_at": "2024-01-01"},
            {"key": "billing:1", "first_name": "john"},
            {"key": "shop:1", "first_name": "john"},
        ]
    )
    row = _golden_row(records, _config(first_name="most_frequent"))
    assert row["first_name"] == "john"
    # the winning record is the most trusted of the majority
    assert row["first_name_record"] == "billing:1"
    assert row["first_name_rule"] == "most_frequent"


def test_most_frequent_breaks_a_tie_by_trust() -> None:
    records = _records(
        [
            {"key": "shop:1", "gender": "F"},
            {"key": "shop:2", "gender": "F"},
            {"key": "billing:1", "gender": "M"},
            {"key": "crm:1", "gender": "M"},
        ]
    )
    row = _golden_row(records, _config(gender="most_frequent"))
    assert (row["gender"], row["gender_record"]) == ("M", "crm:1")


def test_non_null_skips_nulls() -> None:
    records = _records(
        [
            # both come before 'crm:7' by record key and by trust, but hold nothing
            {"key": "billing:1", "gender": None},
            {"key": "crm:1", "gender": None},
            {"key": "crm:7", "gender": "F"},
        ]
    )
    row = _golden_row(records, _config(gender="non_null"))
    assert (row["gender"], row["gender_record"], row["gender_rule"]) == ("F", "crm:7", "non_null")


def test_non_null_prefers_the_most_trusted_source() -> None:
    records = _records([{"key": "billing:1", "gender": "F"}, {"key": "crm:1", "gender": "M"}])
    row = _golden_row(records, _config(gender="non_null"))
    assert (row["gender"], row["gender_record"]) == ("M", "crm:1")


@pytest.mark.parametrize("rule", ["most_trusted", "most_recent", "most_frequent", "non_null"])
def test_a_null_never_wins_over_a_value(rule: str) -> None:
    records = _records(
        [
            # best on every ranking (most trusted, newest, smallest key, two votes for <NA>)...
            {"key": "crm:1", "email": None, "updated_at": "2025-01-01"},
            {"key": "crm:2", "email": None, "updated_at": "2025-01-01"},
            # ... but only this one holds a value
            {"key": "shop:9", "email": "only@x.com", "updated_at": "1999-01-01"},
        ]
    )
    row = _golden_row(records, _config(email=rule))
    assert (row["email"], row["email_record"], row["email_rule"]) == ("only@x.com", "shop:9", rule)


@pytest.mark.parametrize("rule", ["most_trusted", "most_recent", "most_frequent", "non_null"])
def test_an_attribute_no_record_holds_is_null_with_no_record_or_rule(rule: str) -> None:
    records = _records([{"key": "crm:1", "email": "a@x.com"}, {"key": "shop:1", "email": "b@x.com"}])
    row = _golden_row(records, _config(gender=rule))
    assert [_value(row, c) for c in ("gender", "gender_record", "gender_rule")] == [None, None, None]


def test_address_parts_come_from_the_address_winner_even_when_it_has_no_postcode() -> None:
    records = _records(
        [
            {
                "key": "crm:1",
                "address": "1 old road",
                "postcode": "10001",
                "city": "new york",
                "state": "NY",
                "updated_at": "2019-01-01",
            },
            # the newest address: its postcode is missing, and must stay missing
            {"key": "shop:1", "address": "9 new street", "city": "boston", "state": "MA", "updated_at": "2024-01-01"},
        ]
    )
    row = _golden_row(records, _config(address="most_recent"))
    assert (row["address"], row["address_record"], row["address_rule"]) == ("9 new street", "shop:1", "most_recent")
    assert (row["city"], row["city_record"], row["city_rule"]) == ("boston", "shop:1", "with address")
    assert (row["state"], row["state_record"], row["state_rule"]) == ("MA", "shop:1", "with address")
    # not '10001' from the other address: the parts never mix two addresses
    assert [_value(row, c) for c in ("postcode", "postcode_record", "postcode_rule")] == [None, None, None]


def test_address_parts_come_from_the_very_record_that_won_the_address() -> None:
    records = _records(
        [
            {
                "key": "crm:1",
                "address": "1 main st",
                "postcode": "60601",
                "city": "chicago",
                "updated_at": "2024-01-01",
            },
            {
                "key": "crm:2",
                "address": "1 main st",
                "postcode": "60602",
                "city": "chicago",
                "updated_at": "2010-01-01",
            },
        ]
    )
    row = _golden_row(records, _config(address="most_trusted"))
    assert row["address_record"] == "crm:1"
    assert (row["postcode"], row["postcode_record"], row["postcode_rule"]) == ("60601", "crm:1", "with address")


def test_golden_columns_record_count_and_source_tables() -> None:
    records = _records(
        [
            {"key": "shop:1", "email": "a@x.com"},
            {"key": "crm:1", "email": "a@x.com"},
            {"key": "shop:2", "email": "a@x.com"},
            {"key": "billing:5", "email": "b@x.com"},
        ]
    )
    crosswalk = _crosswalk({"C2": ["billing:5"], "C1": ["shop:1", "crm:1", "shop:2"]})
    golden, _ = build_golden_records(records, crosswalk, _config())
    expected_columns = ["customer_key", "record_count", "source_tables"]
    for attribute in GOLDEN_ATTRIBUTES:
        expected_columns += [attribute, f"{attribute}_record", f"{attribute}_rule"]
    assert golden.columns.tolist() == expected_columns
    assert golden["customer_key"].tolist() == ["C1", "C2"]
    assert golden["record_count"].tolist() == [3, 1]
    # the set of sources, each once, alphabetically
    assert golden["source_tables"].tolist() == ["crm,shop", "billing"]
    assert golden["email"].tolist() == ["a@x.com", "b@x.com"]


def test_records_missing_from_the_crosswalk_are_left_out() -> None:
    records = _records([{"key": "crm:1", "email": "a@x.com"}, {"key": "crm:2", "email": "stray@x.com"}])
    golden, conflicts = build_golden_records(records, _crosswalk({"C1": ["crm:1"]}), _config())
    assert golden["record_count"].tolist() == [1]
    assert golden["email"].tolist() == ["a@x.com"]
    assert conflicts.empty


def _conflicting_records() -> tuple[pd.DataFrame, pd.DataFrame]:
    records = _records(
        [
            {"key": "crm:1", "email": "a@x.com", "gender": "F", "first_name": "ann", "updated_at": "2020-01-01"},
            {"key": "billing:1", "email": "a@x.com", "gender": "F", "first_name": "ann", "updated_at": "2021-01-01"},
            {"key": "shop:1", "email": "b@x.com", "gender": "F", "updated_at": "2024-01-01"},
            {"key": "shop:2", "email": "a@x.com", "updated_at": "2022-01-01"},
            # a second customer whose only record cannot disagree with anything
            {"key": "crm:9", "email": "z@x.com", "gender": "M"},
            # a third whose two records agree on everything they hold
            {"key": "crm:5", "email": "q@x.com", "phone": "+12125550143"},
            {"key": "shop:5", "email": "q@x.com"},
        ]
    )
    crosswalk = _crosswalk(
        {"C1": ["crm:1", "billing:1", "shop:1", "shop:2"], "C2": ["crm:9"], "C3": ["crm:5", "shop:5"]}
    )
    return records, crosswalk


def test_the_conflict_log_has_one_row_per_customer_and_disagreeing_attribute() -> None:
    records, crosswalk = _conflicting_records()
    golden, conflicts = build_golden_records(records, crosswalk, _config(email="most_frequent"))
    assert conflicts.columns.tolist() == CONFLICT_COLUMNS
    # gender and first_name agree, C2 has one record, C3's records agree: only C1's email disagrees
    assert conflicts[["customer_key", "attribute"]].to_numpy().tolist() == [["C1", "email"]]
    row = conflicts.iloc[0]
    c1 = golden.set_index("customer_key").loc["C1"]
    assert row["chosen_value"] == c1["email"] == "a@x.com"
    assert row["chosen_record"] == c1["email_record"] == "crm:1"
    assert row["rule"] == "most_frequent"
    assert row["distinct_values"] == 2
    assert row["candidates"] == "a@x.com (3× billing,crm,shop) | b@x.com (1× shop)"


def test_the_conflict_log_follows_the_rule_that_chose_each_value() -> None:
    records, crosswalk = _conflicting_records()
    golden, conflicts = build_golden_records(records, crosswalk, _config(email="most_recent"))
    row = conflicts.set_index(["customer_key", "attribute"]).loc[("C1", "email")]
    assert row["chosen_value"] == "b@x.com"
    assert row["chosen_record"] == "shop:1"
    assert row["rule"] == "most_recent"
    assert golden.set_index("customer_key").loc["C1", "email"] == row["chosen_value"]


def test_the_conflict_log_lists_every_disagreeing_attribute_of_every_customer() -> None:
    records = _records(
        [
            {"key": "crm:1", "address": "1 a st", "postcode": "10001", "gender": "F", "updated_at": "2020-01-01"},
            {"key": "shop:1", "address": "2 b st", "postcode": "10002", "gender": "M", "updated_at": "2024-01-01"},
            {"key": "crm:2", "phone": "+12125550100"},
            {"key": "shop:2", "phone": "+12125550199"},
            {"key": "billing:2", "phone": "+12125550199"},
        ]
    )
    crosswalk = _crosswalk({"C1": ["crm:1", "shop:1"], "C2": ["crm:2", "shop:2", "billing:2"]})
    golden, conflicts = build_golden_records(records, crosswalk, _config(address="most_recent"))
    assert conflicts[["customer_key", "attribute", "rule"]].to_numpy().tolist() == [
        ["C1", "address", "most_recent"],
        ["C1", "gender", "most_trusted"],
        ["C1", "postcode", "with address"],
        ["C2", "phone", "most_trusted"],
    ]
    indexed = golden.set_index("customer_key")
    for row in conflicts.itertuples():
        assert row.chosen_value == indexed.loc[row.customer_key, row.attribute]
        assert row.chosen_record == indexed.loc[row.customer_key, f"{row.attribute}_record"]
    phone = conflicts.set_index("attribute").loc["phone"]
    assert phone["candidates"] == "+12125550100 (1× crm) | +12125550199 (2× billing,shop)"
    assert conflicts.set_index("attribute").loc["postcode", "chosen_value"] == "10002"


def test_an_empty_conflict_log_still_has_its_columns() -> None:
    records = _records([{"key": "crm:1", "email": "a@x.com"}, {"key": "shop:1", "email": "a@x.com"}])
    golden, conflicts = build_golden_records(records, _crosswalk({"C1": ["crm:1", "shop:1"]}), _config())
    assert golden["email"].tolist() == ["a@x.com"]
    assert conflicts.empty
    assert conflicts.columns.tolist() == CONFLICT_COLUMNS
    assert conflicts["distinct_values"].dtype == "int64"


_ROWS = [
    {"key": "crm:1", "first_name": "ann", "email": "a@x.com", "address": "1 a st", "updated_at": "2020-01-01"},
    {"key": "billing:1", "first_name": "anne", "email": "a@x.com", "address": "2 b st", "postcode": "10002"},
    {"key": "shop:1", "first_name": "anne", "email": "b@x.com", "address": "3 c st", "postcode": "10003"},
    {"key": "shop:2", "first_name": "ann", "gender": "F", "city": "boston", "updated_at": "2020-01-01"},
    {"key": "crm:2", "first_name": "bob", "phone": "+12125550100", "updated_at": "2023-03-03"},
    {"key": "shop:3", "first_name": "rob", "phone": "+12125550199", "updated_at": "2023-03-03"},
    {"key": "billing:3", "first_name": "rob", "gender": "M", "birth_date": "1970-01-01"},
    {"key": "crm:3", "email": "c@x.com", "birth_date": "1971-01-01", "address": "9 z st", "postcode": "99999"},
]
_CLUSTERS = {"A": ["crm:1", "billing:1", "shop:1", "shop:2"], "B": ["crm:2", "shop:3", "billing:3"], "C": ["crm:3"]}
_ORDER_CONFIG = _config(
    first_name="most_frequent", email="most_recent", phone="most_recent", gender="non_null", address="most_recent"
)


@pytest.fixture(scope="module")
def ordered_result() -> tuple[pd.DataFrame, pd.DataFrame]:
    return build_golden_records(_records(_ROWS), _crosswalk(_CLUSTERS), _ORDER_CONFIG)


@pytest.mark.parametrize("seed", range(4))
def test_golden_records_do_not_depend_on_row_order(
    seed: int, ordered_result: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    rnd = random.Random(seed)
    records, crosswalk = _records(_ROWS), _crosswalk(_CLUSTERS)
    record_order, crosswalk_order = list(range(len(records))), list(range(len(crosswalk)))
    if seed == 0:  # one fully reversed case, the rest random
        record_order.reverse()
        crosswalk_order.reverse()
    else:
        rnd.shuffle(record_order)
        rnd.shuffle(crosswalk_order)
    golden, conflicts = build_golden_records(
        records.iloc[record_order].set_axis(range(100, 100 + len(records))),
        crosswalk.iloc[crosswalk_order].reset_index(drop=True),
        _ORDER_CONFIG,
    )
    base_golden, base_conflicts = ordered_result
    pd.testing.assert_frame_equal(golden, base_golden)
    pd.testing.assert_frame_equal(conflicts, base_conflicts)
    # and the case is not trivial: ties are broken and several attributes disagree
    assert len(base_conflicts) >= 4
