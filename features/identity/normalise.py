"""Normalise identifying fields so that the same fact is written the same way.

Each function takes a pandas Series from any source system and returns a Series
of the canonical form, or <NA> where the input holds no usable value (junk is
not an identity). They are vectorised: the bulk goes through pandas string
routines, and only what they cannot settle (international phone numbers) goes
through a per-value library call.
"""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd
import phonenumbers

_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# Providers that ignore dots in the local part (john.smith@ and johnsmith@ are one mailbox).
_DOTLESS_DOMAINS = {"gmail.com", "googlemail.com"}
_DOMAIN_ALIASES = {"googlemail.com": "gmail.com"}
_NANP_REGIONS = {"US", "CA"}
_EXTENSION = re.compile(r"(?i)\s*(?:ext\.?|extension|x|#)\s*\d{1,6}\s*$")


def blank_to_na(values: pd.Series) -> pd.Series:
    """Trimmed text; empty strings become <NA>."""
    text = values.astype("string[pyarrow]").str.strip()
    return text.mask(text == "")


def normalise_emails(emails: pd.Series) -> pd.Series:
    """Lower-case, trim, drop '+tags', and undot Gmail addresses; <NA> for non-addresses.

    Sub-addressing ('jane+shop@x.com') and Gmail's ignored dots make one mailbox
    look like several; the canonical form lets an exact match find them.
    """
    text = blank_to_na(emails).str.lower()
    valid = text.str.match(_EMAIL).fillna(False).astype(bool)
    text = text.where(valid)
    parts = text.str.rsplit("@", n=1, expand=True)
    if parts.shape[1] < 2:  # nothing valid at all
        return pd.Series(pd.NA, index=emails.index, dtype="string[pyarrow]")
    local, domain = parts[0], parts[1].replace(_DOMAIN_ALIASES)
    local = local.str.replace(r"\+.*$", "", regex=True)
    dotless = domain.isin(_DOTLESS_DOMAINS)
    local = local.where(~dotless, local.str.replace(".", "", regex=False))
    out = (local + "@" + domain).astype("string[pyarrow]")
    return out.mask(local.fillna("") == "")


def normalise_phones(phones: pd.Series, default_region: str = "US") -> pd.Series:
    """Phone numbers in E.164 ('+12125550143'); <NA> for junk or impossible numbers.

    North American numbers in any of the usual layouts are settled with string
    rules (area code and exchange must not start with 0 or 1); anything else is
    parsed by libphonenumber with `default_region` for numbers without a country code.
    """
    text = blank_to_na(phones)
    text = text.str.replace(_EXTENSION, "", regex=True)
    digits = text.str.replace(r"\D", "", regex=True)
    plus = text.str.startswith("+").fillna(False).astype(bool)
    n = digits.str.len()
    ten = ((n == 10) & ~plus).fillna(False).astype(bool)
    eleven = ((n == 11) & digits.str.startswith("1")).fillna(False).astype(bool)
    nanp = ("1" + digits).where(ten, digits).where(ten | eleven)
    placeholder = nanp.isin([f"1{d * 10}" for d in "0123456789"])  # 222-222-2222 and the like
    nanp_ok = nanp.str.fullmatch(r"1[2-9]\d{2}[2-9]\d{6}").fillna(False).astype(bool) & ~placeholder
    out = ("+" + nanp).where(nanp_ok).astype("string[pyarrow]")
    # NANP-shaped numbers that failed the rules are junk; other shapes go to the library.
    rest = text.notna() & ~nanp_ok
    if default_region in _NANP_REGIONS:
        rest &= ~(ten | eleven)
    for idx, raw in text[rest].items():
        out.at[idx] = _parse_with_library(str(raw), default_region)
    return out


def _parse_with_library(raw: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _fold(values: pd.Series, keep_digits: bool) -> pd.Series:
    # Arrow strings: the regexes below run in RE2, whose \p{..} classes know every script.
    text = blank_to_na(values).astype("string[pyarrow]")
    folded = (
        text.str.normalize("NFKD")
        .str.replace(r"\p{Mn}", "", regex=True)  # accents: the combining marks NFKD split off
        .str.casefold()
        .str.replace(r"['’`.]", "", regex=True)
        .str.replace(r"[^\pL\pN]+" if keep_digits else r"[^\pL]+", " ", regex=True)
        .str.strip()
    )
    return folded.mask(folded == "").astype("string[pyarrow]")


def fold_names(names: pd.Series) -> pd.Series:
    """Names folded for comparison: accents removed, case folded, letters and single spaces only.

    'José  O'Brien-Smith' becomes 'jose obrien smith', 'Straße' 'strasse'; letters of
    any script are kept ('Ørsted' is 'ørsted', '李小龍' stays). An empty result is <NA>.
    """
    return _fold(names, keep_digits=False)


def normalise_addresses(addresses: pd.Series) -> pd.Series:
    """Address lines folded like names but keeping their numbers: '1 Main St.' is '1 main st'."""
    return _fold(addresses, keep_digits=True)


def split_full_names(full_names: pd.Series) -> pd.DataFrame:
    """Split one-field names into folded first and last names.

    'SMITH, John' is last-comma-first; otherwise the first word is the first name
    and the last word the last name (middle names and initials are dropped). A
    name written last-first without a comma cannot be told apart by rule; the
    probabilistic matcher compares names both ways round.
    """
    text = blank_to_na(full_names)
    comma = text.str.contains(",", regex=False).fillna(False).astype(bool)
    before, after = text.str.split(",", n=1).str[0], text.str.split(",", n=1).str[1]
    first_raw = after.where(comma, text)
    last_raw = before.where(comma, text)
    first = fold_names(first_raw).str.split(" ").str[0]
    last_words = fold_names(last_raw).str.split(" ")
    last = last_words.str[-1].where(~comma, fold_names(last_raw))
    single = ~comma & (fold_names(text).str.count(" ") == 0).fillna(False).astype(bool)
    first = first.mask(single)
    return pd.DataFrame(
        {"first_name": first.astype("string[pyarrow]"), "last_name": last.astype("string[pyarrow]")},
        index=full_names.index,
    )


def normalise_birth_dates(
    values: pd.Series, formats: tuple[str, ...] = ("%Y-%m-%d", "%d/%m/%Y", "%Y%m%d"), earliest: str = "1900-01-01"
) -> pd.Series:
    """Birth dates as ISO strings ('1970-12-02'); <NA> for junk, impossible or future dates.

    Accepts dates and timestamps as they come out of the lake, or strings in any of
    `formats` (the first that parses wins). A date before `earliest` or after today
    is a placeholder ('1900-01-01' style) or an error, not a birth date.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, errors="coerce")
    else:
        # date and datetime objects (a spreadsheet column with a few text cells) are dates already
        is_date = values.map(lambda v: isinstance(v, dt.date)).astype(bool)
        text = blank_to_na(values.mask(is_date))
        parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
        if is_date.any():
            parsed = parsed.where(~is_date, pd.to_datetime(values.where(is_date), errors="coerce"))
        for fmt in formats:
            todo = parsed.isna() & text.notna()
            if not todo.any():
                break
            parsed = parsed.where(~todo, pd.to_datetime(text.where(todo), format=fmt, errors="coerce"))
    parsed = parsed.dt.tz_localize(None) if getattr(parsed.dt, "tz", None) is not None else parsed
    plausible = (parsed > pd.Timestamp(earliest)) & (parsed <= pd.Timestamp.now().normalize())
    return parsed.where(plausible).dt.strftime("%Y-%m-%d").astype("string[pyarrow]")
