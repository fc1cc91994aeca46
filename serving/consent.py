"""Consent and age per customer, for suppression at answer time.

`latest_consent` is pure: the newest event per (customer, purpose) wins, and on a tie a
withdrawal beats a grant. `build_consent_store` reads the lake's consent tables through
the identity crosswalk and writes one SQLite file the service reads per request
(`ConsentStore`). `decide_consent` turns what is known of a customer into suppression or
masking under the serving policy; `ConsentChecks` does that per request and per batch.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
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
    crosswalk_path = settings.identity_dir / "crosswalk.parquet"
    # No identity run (a model trained on the user's own table): no consent record can reach a customer key, so
    # every customer's consent is unknown and follows the policy's `unknown_consent`.
    crosswalk = (
        pd.read_parquet(crosswalk_path, columns=["record_key", "customer_key"])
        if crosswalk_path.is_file()
        else pd.DataFrame({"record_key": pd.Series(dtype=str), "customer_key": pd.Series(dtype=str)})
    )
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
    """Read-only lookups in the consent file, one SQLite connection per thread.

    One statement per lookup (decisions and birth date together), one per batch. Whether the
    file exists is checked at most every `RECHECK_SECONDS`, not on every request.
    """

    RECHECK_SECONDS = 5.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._available: bool | None = None
        self._checked_at = 0.0

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            con.execute("PRAGMA mmap_size = 268435456")  # pages through a memory map, not a read call each
            self._local.con = con
        return con

    @property
    def available(self) -> bool:
        """Whether the consent file exists (checked again after a few seconds)."""
        now = time.monotonic()
        if self._available is None or now - self._checked_at > self.RECHECK_SECONDS:
            self._available, self._checked_at = self.path.is_file(), now
        return self._available

    def lookup(self, customer_key: str) -> CustomerConsent:
        """A customer's consent decisions and birth date (empty when unknown)."""
        if not self.available:
            return CustomerConsent()
        rows = self._connection().execute(_ONE, (customer_key,)).fetchall()
        return _consent(rows)

    def lookup_many(self, customer_keys: Sequence[str]) -> dict[str, CustomerConsent]:
        """`lookup` for many customers in one statement; every key asked for is in the answer."""
        keys = list(dict.fromkeys(customer_keys))
        if not self.available or not keys:
            return {k: CustomerConsent() for k in keys}
        rows: dict[str, list[tuple[str | None, str | None]]] = {k: [] for k in keys}
        for key, purpose, value in self._connection().execute(_MANY, (json.dumps(keys),)):
            rows[key].append((purpose, value))
        return {k: _consent(r) for k, r in rows.items()}

    def summaries_many(self, customer_keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """Per customer, their decisions as one text ("purpose=status&...", None: none) and the birth date as stored.

        What `lookup_many` tells, in one row per customer and without an object per decision: callers that
        see the same few patterns again and again (a campaign) decode each distinct pair once
        (`parse_statuses`). Every key asked for is in the answer.
        """
        keys = list(dict.fromkeys(customer_keys))
        if not self.available or not keys:
            return dict.fromkeys(keys, (None, None))
        rows = self._connection().execute(_SUMMARIES, (orjson.dumps(keys).decode(),))
        return {key: (text, born or None) for key, text, born in rows}

    def purpose_many(self, customer_keys: Sequence[str], purpose: str) -> dict[str, tuple[str | None, str | None]]:
        """Per customer, the decision for one purpose and the birth date as stored (None: none recorded).

        What `lookup_many` tells about that purpose, in one row per customer; every key asked for
        is in the answer.
        """
        keys = sorted(set(customer_keys))  # in key order, the tables' order: neighbouring lookups share pages
        if not self.available or not keys:
            return {k: (None, None) for k in keys}
        rows = self._connection().execute(_PURPOSE, (orjson.dumps(keys).decode(), purpose))
        return {key: (status, born or None) for key, status, born in rows}


# A customer's decisions (purpose, status) and, with a NULL purpose, the birth date: one statement.
_ONE = (
    "SELECT purpose, status FROM consent WHERE customer_key = ?1 "
    "UNION ALL SELECT NULL, birth_date FROM customers WHERE customer_key = ?1"
)
_MANY = (
    "WITH asked(key) AS (SELECT value FROM json_each(?1)) "
    "SELECT customer_key, purpose, status FROM consent WHERE customer_key IN asked "
    "UNION ALL SELECT customer_key, NULL, birth_date FROM customers WHERE customer_key IN asked"
)

_PURPOSE = (
    "SELECT a.value, c.status, b.birth_date FROM json_each(?1) a "
    "LEFT JOIN consent c ON c.customer_key = a.value AND c.purpose = ?2 "
    "LEFT JOIN customers b ON b.customer_key = a.value"
)

# One row per customer asked for: their decisions joined in one text (the table's key order), and the birth date.
_SUMMARIES = (
    "SELECT a.value, (SELECT group_concat(c.purpose || '=' || c.status, '&') FROM consent c "
    "WHERE c.customer_key = a.value), b.birth_date FROM json_each(?1) a "
    "LEFT JOIN customers b ON b.customer_key = a.value"
)


def parse_statuses(text: str | None) -> dict[str, str]:
    """`summaries_many`'s decisions text as purpose -> status."""
    if not text:
        return {}
    return dict(part.split("=", 1) for part in text.split("&"))


def _consent(rows: Sequence[tuple[str | None, str | None]]) -> CustomerConsent:
    statuses: dict[str, str] = {}
    born = None
    for purpose, value in rows:
        if purpose is None:
            born = dt.date.fromisoformat(value) if value else None
        elif value is not None:
            statuses[purpose] = value
    return CustomerConsent(statuses, born)


def decide_consent(
    consent: CustomerConsent, purpose: str, policy: ServingPolicy, today: dt.date
) -> tuple[str | None, bool]:
    """Why the answer must be suppressed (None: it may be given), and whether it must be masked."""
    status = consent.statuses.get(purpose)
    if status == "withdrawn":
        return f"the customer withdrew consent for {purpose}", False
    unknown = {str(k): str(v) for k, v in policy.unknown_consent.items()}
    if status is None and unknown.get(purpose, "allow") == "suppress":
        return f"no recorded consent for {purpose}", False
    age = consent.age_on(today)
    if age is not None and age < policy.minors.age_below:
        if policy.minors.action == "suppress":
            return f"a minor (under {policy.minors.age_below})", False
        return None, True
    return None, False


DECISIONS_KEPT = 100_000  # consent decisions kept by (status, birth date) before the cache starts over


class ConsentChecks:
    """`decide_consent` for the customers of a request, from the consent store, as of today."""

    def __init__(self, store: ConsentStore, policy: ServingPolicy) -> None:
        self.store, self.policy = store, policy
        self._decided: dict[Any, Any] = {}  # decisions by (status, birth date), for one day and purpose

    def check(self, customer_key: str | None, purpose: str) -> tuple[str | None, bool]:
        """Suppression reason (or None) and masking, from the consent store."""
        if customer_key is None:
            return None, False  # anonymous features in the body: no one to target
        return decide_consent(self.store.lookup(customer_key), purpose, self.policy, dt.date.today())

    def check_many(self, customer_keys: Sequence[str | None], purpose: str) -> list[tuple[str | None, bool]]:
        """`check` for many customers, with one consent-store statement."""
        keys = [k for k in customer_keys if k is not None]
        if len(keys) <= 1:
            return [self.check(k, purpose) for k in customer_keys]
        found, today = self.store.purpose_many(keys, purpose), dt.date.today()
        # Decisions follow from (status, birth date) on a given day: kept across calls for that day (a few
        # thousand distinct pairs), since deciding costs more than the lookup.
        cache = self._decided
        if cache.get("day") != (today, purpose) or len(cache) > DECISIONS_KEPT:
            cache = self._decided = {"day": (today, purpose)}
        decided: Any = cache
        out: list[tuple[str | None, bool]] = []
        for k in customer_keys:
            if k is None:
                out.append((None, False))
                continue
            seen = found[k]
            decision = decided.get(seen)
            if decision is None:
                status, born = seen
                consent = CustomerConsent({purpose: status} if status is not None else {},
                                          dt.date.fromisoformat(born) if born else None)  # fmt: skip
                decision = decided[seen] = decide_consent(consent, purpose, self.policy, today)
            out.append(decision)
        return out
