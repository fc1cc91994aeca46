"""Normalisers for identity resolution: each form a source writes, and junk."""

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.identity.normalise import fold_names, normalise_emails, normalise_phones, split_full_names

NA = None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" John.Smith@Example.COM ", "john.smith@example.com"),
        ("jane+newsletter@x.org", "jane@x.org"),
        ("J.O.H.N@gmail.com", "john@gmail.com"),
        ("john.smith+shop@googlemail.com", "johnsmith@gmail.com"),
        ("ALICE@ICLOUD.COM", "alice@icloud.com"),
        ("no-at-sign.example.com", NA),
        ("two words@x.com", NA),
        ("user@nodot", NA),
        ("+only@x.com", NA),
        ("", NA),
        ("   ", NA),
        (None, NA),
    ],
)
def test_normalise_emails(raw: str | None, expected: str | None) -> None:
    out = normalise_emails(pd.Series([raw], dtype="object"))
    assert (out.iloc[0] if pd.notna(out.iloc[0]) else None) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 212-555-0143", "+12125550143"),
        ("212-555-0143", "+12125550143"),
        ("(212) 555-0143", "+12125550143"),
        ("2125550143", "+12125550143"),
        ("212.555.0143", "+12125550143"),
        ("1-212-555-0143", "+12125550143"),
        ("+1 (212) 555 0143", "+12125550143"),
        ("212-555-0143 ext. 42", "+12125550143"),
        ("212 555 0143 x7", "+12125550143"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+33 1 42 68 53 00", "+33142685300"),
        ("(012) 555-0143", NA),  # area codes never start with 0
        ("212-155-0143", NA),  # nor do exchanges start with 1
        ("0000000000", NA),
        ("5555555555", NA),
        ("555-0143", NA),
        ("n/a", NA),
        ("call me", NA),
        ("", NA),
        (None, NA),
    ],
)
def test_normalise_phones(raw: str | None, expected: str | None) -> None:
    out = normalise_phones(pd.Series([raw], dtype="object"))
    assert (out.iloc[0] if pd.notna(out.iloc[0]) else None) == expected


def test_normalise_phones_keeps_the_index_and_handles_mixed_batches() -> None:
    s = pd.Series(["2125550143", "junk", "+44 20 7946 0958", None], index=[10, 20, 30, 40])
    out = normalise_phones(s)
    assert list(out.index) == [10, 20, 30, 40]
    assert out.tolist()[0] == "+12125550143" and out.tolist()[2] == "+442079460958"
    assert out.isna().tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("José  O'Brien-Smith", "jose obrien smith"),
        ("ANNE-MARIE", "anne marie"),
        ("  Zoë ", "zoe"),
        ("J.R.", "jr"),
        ("Nguyễn", "nguyen"),
        ("123", NA),
        ("", NA),
        (None, NA),
    ],
)
def test_fold_names(raw: str | None, expected: str | None) -> None:
    out = fold_names(pd.Series([raw], dtype="object"))
    assert (out.iloc[0] if pd.notna(out.iloc[0]) else None) == expected


@pytest.mark.parametrize(
    ("raw", "first", "last"),
    [
        ("SMITH, John", "john", "smith"),
        ("John Smith", "john", "smith"),
        ("John Q. Smith", "john", "smith"),
        ("DE LA CRUZ, Maria", "maria", "de la cruz"),
        ("Cher", NA, "cher"),
        ("", NA, NA),
        (None, NA, NA),
    ],
)
def test_split_full_names(raw: str | None, first: str | None, last: str | None) -> None:
    out = split_full_names(pd.Series([raw], dtype="object"))
    got = [None if pd.isna(v) else v for v in out.iloc[0].tolist()]
    assert got == [first, last]


@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=20))
def test_normalisers_are_idempotent_and_keep_length(values: list) -> None:
    s = pd.Series(values, dtype="object")
    for fn in (normalise_emails, normalise_phones, fold_names):
        once = fn(s)
        assert len(once) == len(s)
        twice = fn(once.astype("object"))
        assert once.fillna("<NA>").tolist() == twice.fillna("<NA>").tolist(), fn.__name__


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("Ørsted", "ørsted"),
        ("Łukasz", "łukasz"),
        ("李小龍", "李小龍"),
        ("Straße", "strasse"),
        ("ANNE-MARIE", "anne marie"),
    ],
)
def test_names_of_any_script_keep_their_letters(raw: str, folded: str) -> None:
    assert fold_names(pd.Series([raw])).iloc[0] == folded


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("1 Main St.", "1 main st"),
        ("  221B  Baker Street ", "221b baker street"),
        ("Flat 3, 10 Rue de l'Église", "flat 3 10 rue de leglise"),
        ("---", None),
    ],
)
def test_addresses_keep_their_numbers(raw: str, normalised: str | None) -> None:
    from features.identity.normalise import normalise_addresses

    out = normalise_addresses(pd.Series([raw])).iloc[0]
    assert (out is pd.NA and normalised is None) or out == normalised
