"""Privacy constraints on matching: allowed fields, and a mode on salted hashes only.

Two controls, both from settings:
- the fields whose purpose allows identity matching (drop `birth_date`, say, and
  no rule or comparison reads it);
- a hashed mode, where the matcher never sees a clear identifier: each
  normalised identifier is replaced by an HMAC-SHA256 under a secret salt, and
  only the deterministic rules run, on equal hashes. Equal inputs give equal
  hashes, so exact matching loses nothing; fuzzy comparison is impossible by design.
"""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd

from features.identity.probabilistic import MATCH_FIELDS

# Identity columns each matching field covers.
FIELD_COLUMNS = {
    "name": ("first_name", "last_name"),
    "birth_date": ("birth_date",),
    "email": ("email",),
    "phone": ("phone",),
    "address": ("address", "city"),
    "postcode": ("postcode",),
    "billing_key": ("billing_key",),
    "national_id": ("national_id",),
}
ALL_FIELDS = (*MATCH_FIELDS, "billing_key")  # MATCH_FIELDS includes national_id
# Composite identifiers built before hashing, so the hashed mode can still link records
# that agree on name and birth date (or name and postcode) when emails and phones differ.
_COMPOSITES = {
    "name_birth_date": ("first_name", "last_name", "birth_date"),
    "name_postcode": ("first_name", "last_name", "postcode"),
}
HASHED_RULES = ("email", "phone", "billing_key", "national_id", "name_birth_date", "name_postcode")


class PrivacyError(ValueError):
    """A privacy setting is inconsistent (an unknown field, a missing salt)."""


def check_fields(fields: list[str]) -> tuple[str, ...]:
    """Validate the allowed matching fields; returns them in canonical order."""
    unknown = sorted(set(fields) - set(ALL_FIELDS))
    if unknown:
        raise PrivacyError(f"identity_match_fields: unknown field(s) {unknown}; known: {list(ALL_FIELDS)}")
    return tuple(f for f in ALL_FIELDS if f in fields)


def restrict_fields(records: pd.DataFrame, fields: tuple[str, ...]) -> pd.DataFrame:
    """A copy of the records in which every field not allowed for matching is blanked."""
    out = records.copy()
    for field, columns in FIELD_COLUMNS.items():
        if field not in fields:
            for column in columns:
                out[column] = pd.Series(pd.NA, index=out.index, dtype="string")
    return out


def _hmac(values: pd.Series, salt: bytes) -> pd.Series:
    def digest(text: object) -> object:
        if text is None or text is pd.NA:
            return pd.NA
        return hmac.new(salt, str(text).encode("utf-8"), hashlib.sha256).hexdigest()

    return values.astype("object").map(digest).astype("string")


def hash_identifiers(records: pd.DataFrame, salt: str, fields: tuple[str, ...]) -> pd.DataFrame:
    """Records reduced to salted hashes of their allowed identifiers.

    Output columns: record_key, source_table, and one hash column per rule in
    `HASHED_RULES` whose fields are all allowed (others are <NA>). Nothing in
    the output can be read back to a name, email or phone without the salt.
    """
    if not salt:
        raise PrivacyError("the hashed mode needs a secret salt (CUSTINTEL_IDENTITY_HASH_SALT)")
    key = salt.encode("utf-8")
    allowed = {c for f in fields for c in FIELD_COLUMNS[f]}
    out = records[["record_key", "source_table"]].copy()
    for rule in HASHED_RULES:
        parts = _COMPOSITES.get(rule, (rule,))
        if not set(parts) <= allowed:
            out[rule] = pd.Series(pd.NA, index=out.index, dtype="string")
            continue
        # names in alphabetical order, so 'Doe Jane' and 'Jane Doe' hash alike
        first, last = records["first_name"].astype("string"), records["last_name"].astype("string")
        columns = {"first_name": first.where(first <= last, last), "last_name": last.where(first <= last, first)}
        text = columns.get(parts[0], records[parts[0]]).astype("string")
        for part in parts[1:]:
            text = text + "|" + columns.get(part, records[part]).astype("string")
        out[rule] = _hmac(text, key)
    return out
