"""One table of identity records from every source that knows who a customer is.

Which tables and columns those are is configuration (`identity.yaml`), so a
customer's own CRM, billing or loyalty tables plug in by mapping their columns.
"""

from __future__ import annotations

import pandas as pd

from features.identity.config import IdentityConfigError, SourceMapping
from features.identity.normalise import (
    blank_to_na,
    fold_names,
    normalise_addresses,
    normalise_birth_dates,
    normalise_emails,
    normalise_phones,
    split_full_names,
)

IDENTITY_COLUMNS = [
    "record_key", "source_table", "record_id", "first_name", "last_name", "email", "phone",
    "birth_date", "address", "postcode", "city", "state", "gender", "billing_key", "national_id", "updated_at",
]  # fmt: skip


def _timestamps(values: pd.Series) -> pd.Series:
    """Timestamps as naive UTC; strings in any ISO 8601 form (with or without zone); junk is NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        parsed = pd.to_datetime(blank_to_na(values), errors="coerce", utc=True, format="ISO8601")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.astype("datetime64[us]")


def _normalised_field(field: str, values: pd.Series) -> pd.Series:
    if field in ("first_name", "last_name", "city"):
        return fold_names(values)
    if field == "address":
        return normalise_addresses(values)
    if field == "email":
        return normalise_emails(values)
    if field == "phone":
        return normalise_phones(values)
    if field == "birth_date":
        return normalise_birth_dates(values)
    if field in ("state", "gender"):
        return blank_to_na(values).str.upper()
    if field == "postcode":  # 'sw1a 1aa' and 'SW1A1AA' are one postcode
        return blank_to_na(values).str.upper().str.replace(r"[^0-9A-Z]", "", regex=True)
    if field == "national_id":  # SSN, NI or tax number: letters and digits only
        ids = blank_to_na(values).str.upper().str.replace(r"[^0-9A-Z]", "", regex=True)
        return ids.mask(ids == "")
    return blank_to_na(values)  # billing_key: an opaque identifier


def identity_records_from_source(frame: pd.DataFrame, source: SourceMapping) -> pd.DataFrame:
    """Normalised identity fields of one source table, one row per source record.

    Records are keyed `<table>:<record id>`; fields the source does not map are <NA>.
    """
    needed = [source.id, *source.columns.values()]
    missing = sorted({c for c in needed if c not in frame.columns})
    if missing:
        raise IdentityConfigError(f"source {source.table!r}: column(s) {missing} are not in the table")
    raw_ids = frame[source.id]
    if pd.api.types.is_float_dtype(raw_ids):  # integer ids with gaps arrive as floats: 7.0 is record 7
        raw_ids = raw_ids.astype("Int64")
    ids = blank_to_na(raw_ids)
    if source.repeated_ids:  # chosen before normalising: a table of purchases has far more rows than ids
        stamps = _timestamps(frame[source.columns["updated_at"]]) if "updated_at" in source.columns else None
        keep = _latest_row_per_id(ids, stamps)
        frame, ids = frame.loc[keep], ids.loc[keep]
    out = pd.DataFrame({"source_table": source.table, "record_id": ids}, index=frame.index)
    out["source_table"] = out["source_table"].astype("string[pyarrow]")
    out["record_key"] = (source.table + ":" + ids).astype("string[pyarrow]")
    cols = source.columns
    if "full_name" in cols:
        names = split_full_names(frame[cols["full_name"]])
        out["first_name"], out["last_name"] = names["first_name"], names["last_name"]
    for field, column in cols.items():
        if field in ("full_name", "updated_at"):
            continue
        out[field] = _normalised_field(field, frame[column])
    out["updated_at"] = _timestamps(frame[cols["updated_at"]]) if "updated_at" in cols else pd.NaT
    for name in IDENTITY_COLUMNS:
        if name not in out:
            out[name] = pd.Series(pd.NA, index=out.index, dtype="string[pyarrow]")
    out["updated_at"] = out["updated_at"].astype("datetime64[us]")
    # a record without its own id cannot be keyed or traced back: it is left out
    return out.loc[ids.notna(), IDENTITY_COLUMNS].reset_index(drop=True)


def _latest_row_per_id(ids: pd.Series, stamps: pd.Series | None) -> pd.Index:
    """Index labels of one row per id (a table with many rows per id): the most recently updated, else the last."""
    order = pd.DataFrame({"id": ids.to_numpy(), "pos": range(len(ids))}, index=ids.index)
    keys = ["pos"]
    if stamps is not None:
        order["stamp"] = stamps.to_numpy()
        keys = ["stamp", "pos"]
    latest = order.sort_values(keys, kind="stable", na_position="first").drop_duplicates("id", keep="last")
    return latest.sort_values("pos", kind="stable").index


def assemble_identity_records(tables: dict[str, pd.DataFrame], sources: list[SourceMapping]) -> pd.DataFrame:
    """Identity records of every configured source, stacked; record keys must be unique."""
    frames = []
    for source in sources:
        if source.table not in tables:
            raise IdentityConfigError(f"source table {source.table!r} was not loaded")
        frames.append(identity_records_from_source(tables[source.table], source))
    records = pd.concat(frames, ignore_index=True)
    dupes = records["record_key"][records["record_key"].duplicated()]
    if not dupes.empty:
        raise IdentityConfigError(
            f"{dupes.size} record key(s) appear twice (e.g. {dupes.iloc[0]!r}): a source id column must be unique, "
            "or mark a table with many rows per id (e.g. one per purchase) 'repeated_ids: true'"
        )
    return records
