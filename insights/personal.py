"""The operations insights' stores, as personal stores: what `custintel insights` keeps per customer or ticket.

Every table the insights write under `<home>/insights/` (ticket topics, segments, ...) is a Parquet file
with a `customer_key` column (the customer key, or the source record id where a row was never linked),
so one store finds and erases a person's rows in all of them, as the offline feature store does. The
report (`latest/report.json`) holds only masked examples and aggregates; `governance.dsar`'s verify
searches its text like any other file, and an erasure rebuilds nothing there: the next `custintel
insights` writes it anew from the erased tables.
"""

from __future__ import annotations

from pathlib import Path

from custintel.personal import PersonalStore
from custintel.settings import Settings
from features.personal import OfflineFeatureStore


def insights_tables(settings: Settings) -> list[Path]:
    """Every per-customer table the insights keep (Parquet files under `<home>/insights/`, outside `latest/`)."""
    root = settings.home_dir / "insights"
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.parquet") if "latest" not in p.relative_to(root).parts)


class InsightsStore(OfflineFeatureStore):
    """The insights' per-customer tables: rows keyed by customer key, found and erased like feature rows."""

    name = "insights"

    def _files(self) -> list[Path]:
        return insights_tables(self.settings)


def personal_stores(settings: Settings) -> list[PersonalStore]:
    """The stores of this package that can hold a person's data."""
    return [InsightsStore(settings)]
