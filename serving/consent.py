"""Consent and age per customer, for suppression at answer time.

`latest_consent` is pure: the newest event per (customer, purpose) wins, and on a tie a
withdrawal beats a grant. `build_consent_store` reads the lake's consent tables through
the identity crosswalk and writes one SQLite file the service reads per request.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from custintel.settings import Settings
from features.lake import IngestError, read_lake_table
from serving.policy import ServingPolicy


def latest_consent(events: pd.DataFrame) -> pd.DataFrame:
    """customer_key, purpose, status, recorded_at: each customer's newest decision per purpose."""
    frame = events.dropna(subset=["customer_key", "purpose", "status"]).assign(
        recorded_at=lambda f: pd.to_datetime(f["recorded_at"], errors="coerce"),
        status=lambda f: f["status"].astype(str).str.lower(),
        withdrawn=lambda f: f["status"].astype(str).str.lower() != "granted",  # anything but a grant withdraws
    )
    frame = frame.sort_values(["customer_key", "purpose", "recorded_at", "withdrawn"], na_position="first")
    latest = frame.groupby(["customer_key", "purpose"], as_index=False).tail(1)
    latest = latest.assign(status=latest["withdrawn"].map({True: "withdrawn", False: "granted"}))
    return latest[["customer_key", "purpose", "status", "recorded_at"]].reset_index(drop=True)


def consent_store_path(settings: Settings) -> Path:
    """The service's consent file."""
    return settings.home_dir / "serving" / "consent.sqlite"


def build_consent_store(settings: Settings, policy: ServingPolicy) -> int:
    """(Re)write the consent file from the lake and the identity store; returns the customers with a decision."""
    crosswalk = pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["record_key", "customer_key"])
    by_record = crosswalk.set_index("record_key")["customer_key"]
    parts = []
    for source in policy.consent_sources:
        try:
            table = read_lake_table(settings, source.table)
        except IngestError:
            continue  # this lake has no such source
        keys = source.record_table + ":" + table[source.record_id].astype(str)
        parts.append(
            pd.DataFrame(
                {
                    "customer_key": keys.map(by_record).to_numpy(),
                    "purpose": table[source.purpose].astype(str).str.lower().to_numpy(),
                    "status": table[source.status].to_numpy(),
                    "recorded_at": table[source.recorded_at].to_numpy(),
                }
            )
        )
    events = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["customer_key", "purpose", "status", "recorded_at"])
    )
    consent = latest_consent(events)
    golden_path = settings.identity_dir / "golden_records.parquet"
    golden = pd.read_parquet(golden_path, columns=["customer_key", "birth_date"]) if golden_path.is_file() else None
    path = consent_store_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    with sqlite3.connect(tmp) as con:
        con.execute("CREATE TABLE consent (customer_key TEXT, purpose TEXT, status TEXT, recorded_at TEXT, "
                    "PRIMARY KEY (customer_key, purpose)) WITHOUT ROWID")  # fmt: skip
        con.executemany(
            "INSERT INTO consent VALUES (?, ?, ?, ?)",
            consent.assign(recorded_at=consent["recorded_at"].astype(str)).itertuples(index=False, name=None),
        )
        con.execute("CREATE TABLE customers (customer_key TEXT PRIMARY KEY, birth_date TEXT) WITHOUT ROWID")
        if golden is not None:
            born = pd.to_datetime(golden["birth_date"], errors="coerce").dt.strftime("%Y-%m-%d")
            con.executemany(
                "INSERT OR REPLACE INTO customers VALUES (?, ?)",
                zip(golden["customer_key"], born.where(born.notna(), None), strict=True),
            )
    os.replace(tmp, path)
    return int(consent["customer_key"].nunique())


@dataclass
class CustomerConsent:
    """What the service knows about one customer's consent and age."""

    statuses: dict[str, str] = field(default_factory=dict)  # purpose -> granted | withdrawn
    birth_date: dt.date | None = None

    def age_on(self, day: dt.date) -> float | None:
        """Age in years on `day` (None when the birth date is unknown)."""
        return None if self.birth_date is None else (day - self.birth_date).days / 365.25


class ConsentStore:
    """Read-only lookups in the consent file, one SQLite connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._local.con = con
        return con

    @property
    def available(self) -> bool:
        """Whether the consent file exists."""
        return self.path.is_file()

    def lookup(self, customer_key: str) -> CustomerConsent:
        """A customer's consent decisions and birth date (empty when unknown)."""
        if not self.available:
            return CustomerConsent()
        con = self._connection()
        statuses = dict(
            con.execute("SELECT purpose, status FROM consent WHERE customer_key = ?", (customer_key,)).fetchall()
        )
        row = con.execute("SELECT birth_date FROM customers WHERE customer_key = ?", (customer_key,)).fetchone()
        born = dt.date.fromisoformat(row[0]) if row and row[0] else None
        return CustomerConsent(statuses, born)
