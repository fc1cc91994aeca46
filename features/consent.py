"""Every consent event in the lake, mapped to customer keys through the identity crosswalk.

Training reads this history once per run and keeps, per (customer, cutoff), only what was
recorded before the cutoff (`models.consent`). Serving keeps the latest decision only
(`serving.consent`); both read the same lake tables, named by the serving policy's
`consent_sources`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from custintel.settings import Settings
from features.lake import IngestError, read_lake_table

HISTORY_COLUMNS = ("customer_key", "purpose", "status", "recorded_at")


@dataclass(frozen=True)
class ConsentTable:
    """A lake table of consent events: the identity records its rows belong to, and its columns."""

    table: str
    record_table: str  # the identity records' source table (crosswalk record keys)
    record_id: str
    purpose: str = "purpose"
    status: str = "status"
    recorded_at: str = "recorded_at"


def empty_history() -> pd.DataFrame:
    """A history with no events (a lake without consent tables, or no identity run)."""
    return pd.DataFrame(
        {
            "customer_key": pd.Series(dtype=str),
            "purpose": pd.Series(dtype=str),
            "status": pd.Series(dtype=str),
            "recorded_at": pd.Series(dtype="datetime64[ns]"),
        }
    )


def read_consent_history(settings: Settings, tables: Sequence[ConsentTable]) -> pd.DataFrame:
    """customer_key, purpose, status, recorded_at (naive UTC): one row per event of a resolved customer.

    Events whose record the identity run did not resolve to a customer are left out (no row of any
    model can belong to them); a lake without one of the tables contributes nothing from it.
    """
    crosswalk_path = settings.identity_dir / "crosswalk.parquet"
    if not crosswalk_path.is_file():
        return empty_history()
    crosswalk = pd.read_parquet(crosswalk_path, columns=["record_key", "customer_key"])
    by_record = crosswalk.drop_duplicates("record_key").set_index("record_key")["customer_key"]
    parts = []
    for source in tables:
        try:
            table = read_lake_table(settings, source.table)
        except IngestError:
            continue  # this lake has no such source
        keys = source.record_table + ":" + table[source.record_id].astype(str)
        recorded = pd.to_datetime(table[source.recorded_at], errors="coerce", utc=True).dt.tz_localize(None)
        parts.append(
            pd.DataFrame(
                {
                    "customer_key": keys.map(by_record).to_numpy(),
                    "purpose": table[source.purpose].astype(str).str.lower().to_numpy(),
                    "status": table[source.status].astype(str).str.lower().to_numpy(),
                    "recorded_at": recorded.to_numpy(),
                }
            )
        )
    if not parts:
        return empty_history()
    history = pd.concat(parts, ignore_index=True).dropna(subset=["customer_key", "recorded_at"])
    return history.astype({"customer_key": str}).reset_index(drop=True)
