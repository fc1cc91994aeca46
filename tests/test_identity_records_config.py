"""Identity records from a bring-your-own table, mapped by configuration."""

import pandas as pd
import pytest

from features.identity.config import IdentityConfigError, SourceMapping
from features.identity.records import IDENTITY_COLUMNS, assemble_identity_records, identity_records_from_source

LOYALTY = SourceMapping(
    table="loyalty_members",
    id="cust_ref",
    columns={
        "full_name": "name",
        "email": "mail",
        "phone": "mobile",
        "birth_date": "dob",
        "postcode": "zip",
        "updated_at": "last_visit",
    },
)
KIOSK = SourceMapping(
    table="kiosk_signups",
    id="ticket",
    columns={"first_name": "given", "last_name": "family", "email": "mail", "city": "town", "gender": "sex"},
)


def _loyalty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cust_ref": ["L-001", " L-002 ", "L-003", None, "   ", "", "L-007"],
            "name": ["SMITH, John", "María José Núñez", "Cher", "Ghost Person", "Blank Id", "Empty Id", "  "],
            "mail": [
                "John.Smith+club@Example.COM",
                "maria@x.org",
                "not-an-email",
                "g@x.com",
                "b@x.com",
                "e@x.com",
                None,
            ],
            "mobile": ["(212) 555-0143", "+44 20 7946 0958", "n/a", "2125550100", "2125550101", "2125550102", ""],
            "dob": ["02/12/1970", "31/01/1985", "31/02/1990", "01/01/1980", "01/01/1980", "01/01/1980", "01/01/1899"],
            "zip": ["10001", " sw1a  1aa ", "", "10002", "10003", "10004", None],
            "last_visit": ["2024-03-01", "2023-12-31", "garbage", None, None, None, None],
            "points": [10, 20, 30, 40, 50, 60, 70],  # an unmapped column is ignored
        },
        index=[101, 102, 103, 104, 105, 106, 107],  # a lake index, not 0..n
    )


def _kiosk() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticket": [7, 8],
            "given": ["Zoë", "ANNE-MARIE"],
            "family": ["O'Brien", "du Pont"],
            "mail": ["zoe@x.com", "anne.marie@gmail.com"],
            "town": ["  New  York ", "Paris"],
            "sex": ["f", " M "],
        }
    )


def _cell(frame: pd.DataFrame, key: str, column: str) -> object:
    value = frame.set_index("record_key").loc[key, column]
    return None if pd.isna(value) else value


def test_a_mapped_table_becomes_normalised_identity_records() -> None:
    records = identity_records_from_source(_loyalty(), LOYALTY)
    assert records.columns.tolist() == IDENTITY_COLUMNS
    assert records.index.tolist() == list(range(len(records)))
    assert records["record_key"].tolist() == [
        "loyalty_members:L-001",
        "loyalty_members:L-002",  # trimmed
        "loyalty_members:L-003",
        "loyalty_members:L-007",
    ]
    assert records["record_id"].tolist() == ["L-001", "L-002", "L-003", "L-007"]
    assert set(records["source_table"]) == {"loyalty_members"}
    john = records.iloc[0]
    assert (john["first_name"], john["last_name"]) == ("john", "smith")
    assert john["email"] == "john.smith@example.com"
    assert john["phone"] == "+12125550143"
    assert john["birth_date"] == "1970-12-02"  # dd/mm/yyyy read day first
    assert john["postcode"] == "10001"
    assert john["updated_at"] == pd.Timestamp("2024-03-01")
    maria = records.iloc[1]
    assert (maria["first_name"], maria["last_name"]) == ("maria", "nunez")
    assert maria["phone"] == "+442079460958"
    assert maria["birth_date"] == "1985-01-31"
    assert maria["postcode"] == "SW1A1AA"
    assert maria["updated_at"] == pd.Timestamp("2023-12-31")


def test_junk_in_a_mapped_column_becomes_missing() -> None:
    records = identity_records_from_source(_loyalty(), LOYALTY)
    cher = records.set_index("record_key").loc["loyalty_members:L-003"]
    assert pd.isna(cher["first_name"]) and cher["last_name"] == "cher"
    for column in ("email", "phone", "birth_date", "postcode", "updated_at"):
        assert pd.isna(cher[column]), column


def test_fields_the_source_does_not_map_are_missing() -> None:
    records = identity_records_from_source(_loyalty(), LOYALTY)
    for column in ("address", "city", "state", "gender", "billing_key"):
        assert records[column].isna().all(), column
        assert records[column].dtype == "string"
    assert records["updated_at"].dtype == "datetime64[us]"


def test_a_source_without_updated_at_has_no_dates() -> None:
    records = identity_records_from_source(_kiosk(), KIOSK)
    assert records["updated_at"].isna().all()
    assert records["updated_at"].dtype == "datetime64[us]"


def test_first_and_last_names_city_and_gender_are_normalised() -> None:
    records = identity_records_from_source(_kiosk(), KIOSK)
    assert records["record_key"].tolist() == ["kiosk_signups:7", "kiosk_signups:8"]  # numeric ids as text
    assert records["first_name"].tolist() == ["zoe", "anne marie"]
    assert records["last_name"].tolist() == ["obrien", "du pont"]
    assert records["email"].tolist() == ["zoe@x.com", "annemarie@gmail.com"]
    assert records["city"].tolist() == ["new york", "paris"]
    assert records["gender"].tolist() == ["F", "M"]
    assert records[["phone", "birth_date", "postcode"]].isna().all().all()


def test_rows_without_an_id_are_dropped() -> None:
    records = identity_records_from_source(_loyalty(), LOYALTY)
    # None, whitespace and empty ids: those rows cannot be keyed or traced back
    assert len(records) == 4
    assert not {"g@x.com", "b@x.com", "e@x.com"} & set(records["email"].dropna())
    assert records["record_id"].notna().all()
    assert not records["record_key"].str.endswith(":").any()


def test_a_row_with_an_id_but_nothing_usable_is_kept_with_missing_fields() -> None:
    records = identity_records_from_source(_loyalty(), LOYALTY)
    row = records.set_index("record_key").loc["loyalty_members:L-007"]
    assert row.drop(["source_table", "record_id"]).isna().all()  # the 1899 birth date included


@pytest.mark.parametrize("dropped", ["mail", "dob", "cust_ref"])
def test_a_mapped_column_missing_from_the_table_is_named(dropped: str) -> None:
    with pytest.raises(IdentityConfigError) as info:
        identity_records_from_source(_loyalty().drop(columns=dropped), LOYALTY)
    assert f"['{dropped}']" in str(info.value)
    assert "loyalty_members" in str(info.value)


def test_all_missing_columns_are_named_at_once() -> None:
    with pytest.raises(IdentityConfigError, match=r"\['dob', 'zip'\] are not in the table"):
        identity_records_from_source(_loyalty().drop(columns=["zip", "dob"]), LOYALTY)


def test_sources_are_stacked_in_configured_order() -> None:
    records = assemble_identity_records({"kiosk_signups": _kiosk(), "loyalty_members": _loyalty()}, [LOYALTY, KIOSK])
    assert records.columns.tolist() == IDENTITY_COLUMNS
    assert records["source_table"].tolist() == ["loyalty_members"] * 4 + ["kiosk_signups"] * 2
    assert records["record_key"].is_unique
    assert records.index.tolist() == list(range(6))
    # tables that are loaded but not configured are ignored
    again = assemble_identity_records(
        {"kiosk_signups": _kiosk(), "loyalty_members": _loyalty(), "other": pd.DataFrame({"x": [1]})},
        [LOYALTY, KIOSK],
    )
    pd.testing.assert_frame_equal(again, records)


def test_a_configured_table_that_was_not_loaded_is_named() -> None:
    with pytest.raises(IdentityConfigError, match="'kiosk_signups' was not loaded"):
        assemble_identity_records({"loyalty_members": _loyalty()}, [LOYALTY, KIOSK])


def test_duplicate_ids_within_a_source_are_refused() -> None:
    frame = _loyalty()
    frame.loc[103, "cust_ref"] = "  L-001"  # equal to L-001 once trimmed
    with pytest.raises(IdentityConfigError, match="appear twice") as info:
        assemble_identity_records({"loyalty_members": frame}, [LOYALTY])
    assert "'loyalty_members:L-001'" in str(info.value)


def test_duplicate_record_keys_across_sources_are_refused() -> None:
    # two mappings of one table name (a hand-built list, bypassing the config's own check)
    second = SourceMapping(table="loyalty_members", id="cust_ref", columns={"email": "mail"})
    with pytest.raises(IdentityConfigError, match=r"4 record key\(s\) appear twice"):
        assemble_identity_records({"loyalty_members": _loyalty()}, [LOYALTY, second])


def test_timezone_aware_updated_at_is_accepted() -> None:
    frame = _loyalty()
    frame["last_visit"] = ["2024-03-01T10:00:00Z", "2023-12-31T18:00:00Z", None, None, None, None, None]
    records = identity_records_from_source(frame, LOYALTY)
    assert records["updated_at"].iloc[0] == pd.Timestamp("2024-03-01 10:00")


def test_updated_at_mixing_dates_and_date_times_is_parsed_whatever_the_row_order() -> None:
    frame = _loyalty()
    frame["last_visit"] = ["2024-03-01", "2023-12-31T18:00:00", "2022-05-05 07:30", None, None, None, None]
    records = identity_records_from_source(frame, LOYALTY)
    assert records["updated_at"].iloc[:3].tolist() == [
        pd.Timestamp("2024-03-01"),
        pd.Timestamp("2023-12-31 18:00"),
        pd.Timestamp("2022-05-05 07:30"),
    ]
