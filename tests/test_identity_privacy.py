"""Privacy controls on matching (allowed fields, salted hashes) and birth-date normalisation."""

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from features.identity.normalise import normalise_birth_dates
from features.identity.privacy import (
    ALL_FIELDS,
    FIELD_COLUMNS,
    HASHED_RULES,
    PrivacyError,
    check_fields,
    hash_identifiers,
    restrict_fields,
)
from features.identity.records import IDENTITY_COLUMNS

SALT = "pepper-for-tests"


def _records() -> pd.DataFrame:
    """Three normalised identity records; names use letters that are not hex digits."""
    rows = [
        ["crm:1", "crm", "1", "john", "smith", "john.smith@example.com", "+12125550143", "1970-12-02",
         "12 oak road", "10001", "new york", "NY", "M", "BA-1", "078051120"],
        ["shop:7", "shop", "7", "maria", "lopez", "maria@lopez.org", "+442079460958", "1985-07-14",
         "9 elm street", "SW1A 1AA", "london", "LN", "F", "BA-2", "QQ123456C"],
        ["shop:8", "shop", "8", "zoltan", "kovacs", None, "+13125550199", None,
         "4 pine way", None, "chicago", "IL", None, None, None],
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=IDENTITY_COLUMNS[:-1]).astype("string")
    frame["updated_at"] = pd.to_datetime(["2024-01-01", "2023-05-05", None]).astype("datetime64[us]")
    return frame


# Everything that identifies someone in clear; none of it may survive hashing.
_CLEAR_COLUMNS = (
    "first_name", "last_name", "email", "phone", "birth_date", "address", "postcode", "city", "national_id",
)  # fmt: skip


def _clear_values(records: pd.DataFrame) -> set[str]:
    return {str(v) for c in _CLEAR_COLUMNS for v in records[c].dropna()}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (["phone", "name"], ("name", "phone")),
        (["billing_key", "postcode", "email", "birth_date"], ("birth_date", "email", "postcode", "billing_key")),
        (list(reversed(ALL_FIELDS)), ALL_FIELDS),
        (["email", "email"], ("email",)),
        ([], ()),
    ],
)
def test_check_fields_returns_the_fields_in_canonical_order(fields: list[str], expected: tuple[str, ...]) -> None:
    assert check_fields(fields) == expected


@pytest.mark.parametrize(
    ("fields", "unknown"),
    [
        (["email", "shoe_size"], "['shoe_size']"),
        (["first_name"], "['first_name']"),  # a column, not a matching field
        (["zzz", "aaa", "name"], "['aaa', 'zzz']"),
    ],
)
def test_check_fields_names_unknown_fields(fields: list[str], unknown: str) -> None:
    with pytest.raises(PrivacyError, match="unknown field") as info:
        check_fields(fields)
    assert unknown in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "excluded",
    [(), ("birth_date",), ("name",), ("address",), ("email", "phone"), ("postcode", "billing_key"), ALL_FIELDS],
    ids=lambda excluded: "+".join(excluded) or "nothing",
)
def test_restrict_fields_blanks_exactly_the_columns_of_excluded_fields(excluded: tuple[str, ...]) -> None:
    records = _records()
    allowed = tuple(f for f in ALL_FIELDS if f not in excluded)
    out = restrict_fields(records, allowed)
    blanked = {c for f in excluded for c in FIELD_COLUMNS[f]}
    assert out.columns.tolist() == records.columns.tolist()
    for column in records.columns:
        if column in blanked:
            assert out[column].isna().all(), column
            assert out[column].dtype == "string"
        else:
            pd.testing.assert_series_equal(out[column], records[column])
    # a copy: the input is untouched
    pd.testing.assert_frame_equal(records, _records())


def test_restricting_the_address_blanks_its_city_but_not_the_other_fields() -> None:
    out = restrict_fields(_records(), ("name", "email"))
    assert out[["address", "city", "birth_date", "phone", "postcode", "billing_key"]].isna().all().all()
    assert out["first_name"].tolist() == ["john", "maria", "zoltan"]
    assert out["email"].notna().sum() == 2


def test_hashed_records_hold_no_clear_identifier_in_any_cell() -> None:
    records = _records()
    hashed = hash_identifiers(records, SALT, ALL_FIELDS)
    assert hashed.columns.tolist() == ["record_key", "source_table", *HASHED_RULES]
    assert hashed["record_key"].tolist() == records["record_key"].tolist()
    clear = _clear_values(records) | {str(v) for v in records["billing_key"].dropna()}
    assert clear  # the check below is not vacuous
    for rule in HASHED_RULES:
        for cell in hashed[rule]:
            if pd.isna(cell):
                continue
            assert isinstance(cell, str) and len(cell) == 64 and set(cell) <= set("0123456789abcdef"), cell
    for column in hashed.columns:
        for cell in hashed[column].dropna().astype(str):
            for value in clear:
                assert value not in cell, (column, value)
    # every rule whose inputs are present hashed something
    assert hashed.loc[0, list(HASHED_RULES)].notna().all()
    # and a missing input gives no hash rather than a hash of '<NA>'
    assert hashed.loc[2, ["email", "billing_key", "name_birth_date", "name_postcode"]].isna().all()
    assert pd.notna(hashed.loc[2, "phone"])  # while its phone, which is present, is hashed


def test_equal_values_hash_equal_across_records_so_exact_rules_still_link() -> None:
    records = _records()
    records.loc[2, "email"] = records.loc[0, "email"]
    hashed = hash_identifiers(records, SALT, ALL_FIELDS)
    assert hashed.loc[2, "email"] == hashed.loc[0, "email"]
    assert hashed.loc[1, "email"] != hashed.loc[0, "email"]


def test_hashes_are_stable_for_the_same_salt_and_change_with_it() -> None:
    records = _records()
    first = hash_identifiers(records, SALT, ALL_FIELDS)
    again = hash_identifiers(records.copy(), SALT, ALL_FIELDS)
    pd.testing.assert_frame_equal(first, again)
    other = hash_identifiers(records, SALT + "!", ALL_FIELDS)
    for rule in HASHED_RULES:
        present = first[rule].notna()
        assert present.any()
        assert (first.loc[present, rule] != other.loc[present, rule]).all(), rule
        assert other[rule].notna().tolist() == present.tolist()


@pytest.mark.parametrize(
    ("fields", "present"),
    [
        (ALL_FIELDS, set(HASHED_RULES)),
        (("name", "birth_date"), {"name_birth_date"}),
        (("name", "postcode"), {"name_postcode"}),
        (("birth_date", "postcode", "email"), {"email"}),  # no name: no composite
        (("name", "email", "phone", "billing_key"), {"email", "phone", "billing_key"}),
        ((), set()),
    ],
    ids=["all", "name+birth_date", "name+postcode", "no-name", "no-dates-or-postcodes", "none"],
)
def test_hash_rules_are_present_only_when_their_fields_are_allowed(fields: tuple[str, ...], present: set[str]) -> None:
    hashed = hash_identifiers(_records(), SALT, fields)
    assert hashed.columns.tolist() == ["record_key", "source_table", *HASHED_RULES]
    for rule in HASHED_RULES:
        if rule in present:
            assert hashed[rule].notna().any(), rule
        else:
            assert hashed[rule].isna().all(), rule


def test_composite_hashes_depend_on_every_part() -> None:
    records = _records()
    base = hash_identifiers(records, SALT, ALL_FIELDS)
    changed = records.copy()
    changed.loc[0, "birth_date"] = "1970-12-03"
    after = hash_identifiers(changed, SALT, ALL_FIELDS)
    assert after.loc[0, "name_birth_date"] != base.loc[0, "name_birth_date"]
    assert after.loc[0, "name_postcode"] == base.loc[0, "name_postcode"]
    # the hash of a composite is not the hash of any one part
    assert base.loc[0, "name_birth_date"] not in set(base.loc[0, ["email", "phone", "billing_key"]])


@pytest.mark.parametrize("salt", ["", None])
def test_hashing_without_a_salt_is_refused(salt: str | None) -> None:
    with pytest.raises(PrivacyError, match="salt"):
        hash_identifiers(_records(), salt, ALL_FIELDS)  # type: ignore[arg-type]


TODAY = pd.Timestamp.now().normalize()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1970-12-02", "1970-12-02"),
        (" 1970-12-02 ", "1970-12-02"),
        ("02/12/1970", "1970-12-02"),  # day first
        ("2/3/1981", "1981-03-02"),
        ("19701202", "1970-12-02"),
        ("2000-02-29", "2000-02-29"),
        ("1900-01-02", "1900-01-02"),
        ("1900-01-01", None),  # the usual placeholder
        ("1899-12-31", None),
        ("31/12/1899", None),
        ("18991231", None),
        ("1970-02-30", None),
        ("31/02/1980", None),
        ("1970-13-01", None),
        ("not a date", None),
        ("n/a", None),
        ("12/1970", None),
        ("", None),
        ("   ", None),
        (None, None),
        ((TODAY + pd.Timedelta(days=1)).strftime("%Y-%m-%d"), None),
        ((TODAY + pd.Timedelta(days=400)).strftime("%d/%m/%Y"), None),
        ("2999-01-01", None),
        (TODAY.strftime("%Y-%m-%d"), TODAY.strftime("%Y-%m-%d")),
    ],
)
def test_normalise_birth_dates_from_text(raw: str | None, expected: str | None) -> None:
    out = normalise_birth_dates(pd.Series([raw], dtype="object"))
    assert out.dtype == "string"
    assert (out.iloc[0] if pd.notna(out.iloc[0]) else None) == expected


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(pd.to_datetime(["1970-12-02", None, "1899-06-01", "2200-01-01"])),
        pd.Series(np.array(["1970-12-02T13:45", "NaT", "1899-06-01", "2999-01-01"], dtype="datetime64[s]")),
        pd.Series(
            pd.to_datetime(["1970-12-02 23:30", None, "1899-06-01 00:00", "2200-01-01 00:00"]).tz_localize("UTC")
        ),
        pd.Series(np.array(["1970-12-02", "NaT", "1899-06-01", "2999-01-01"], dtype="datetime64[D]")),
    ],
    ids=["datetime64[ns]", "datetime64[s]-with-time", "tz-aware", "numpy-days"],
)
def test_normalise_birth_dates_from_datetimes(values: pd.Series) -> None:
    out = normalise_birth_dates(values)
    assert out.dtype == "string"
    assert out.fillna("<NA>").tolist() == ["1970-12-02", "<NA>", "<NA>", "<NA>"]


def test_normalise_birth_dates_from_an_object_column_of_timestamps_and_junk() -> None:
    values = pd.Series([datetime(1970, 12, 2), pd.Timestamp("1981-03-02"), "unknown"], dtype="object")
    assert normalise_birth_dates(values).fillna("<NA>").tolist() == ["1970-12-02", "1981-03-02", "<NA>"]


def test_normalise_birth_dates_keeps_the_index_and_mixes_formats_in_one_batch() -> None:
    values = pd.Series(["1970-12-02", "02/12/1971", "19721202", "junk", None], index=[5, 3, 9, 1, 7])
    out = normalise_birth_dates(values)
    assert out.index.tolist() == [5, 3, 9, 1, 7]
    assert out.fillna("<NA>").tolist() == ["1970-12-02", "1971-12-02", "1972-12-02", "<NA>", "<NA>"]


def test_normalise_birth_dates_honours_formats_and_earliest() -> None:
    values = pd.Series(["12/02/1970", "1950-06-01"])
    us = normalise_birth_dates(values, formats=("%m/%d/%Y",), earliest="1960-01-01")
    assert us.fillna("<NA>").tolist() == ["1970-12-02", "<NA>"]


def test_normalise_birth_dates_of_an_empty_or_all_missing_series() -> None:
    assert normalise_birth_dates(pd.Series([], dtype="object")).empty
    out = normalise_birth_dates(pd.Series([None, "", "  "], dtype="object"))
    assert out.isna().all() and len(out) == 3
