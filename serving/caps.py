"""Frequency caps: how often each product was shown to each customer within a sliding window.

Two backends behind one interface, chosen by the settings like the online store: Redis when
`CUSTINTEL_REDIS_URL` is set (so several service replicas share the counters), else one SQLite
file under the home (`caps_path`). Every impression is kept with its time; a count is the
impressions newer than the window.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from custintel.settings import Settings


def caps_path(settings: Settings) -> Path:
    """The embedded backend's file."""
    return settings.home_dir / "serving" / "caps.sqlite"


def open_frequency_caps(settings: Settings, max_impressions: int, window_days: float) -> FrequencyCaps:
    """Redis when CUSTINTEL_REDIS_URL is set, else SQLite under home."""
    if settings.redis_url:
        return RedisFrequencyCaps(settings.redis_url, settings.online_namespace, max_impressions, window_days)
    return SQLiteFrequencyCaps(caps_path(settings), max_impressions, window_days)


class FrequencyCaps(ABC):
    """Impressions per (customer, product) within a window; thread-safe."""

    def __init__(self, max_impressions: int, window_days: float) -> None:
        self.max, self.window = max_impressions, window_days * 86400

    @abstractmethod
    def counts(self, customer_key: str, products: Sequence[str], now: float) -> dict[str, int]:
        """Impressions of each product in the window."""

    @abstractmethod
    def record(self, customer_key: str, products: Sequence[str], now: float) -> None:
        """Count one impression of each product."""

    @abstractmethod
    def impressions(self, customer_keys: Sequence[str]) -> list[tuple[str, str, float]]:
        """Every impression kept of these customers: (customer key, product, time)."""

    @abstractmethod
    def delete(self, customer_keys: Sequence[str]) -> int:
        """Forget every impression of these customers (an erasure request); returns how many were removed."""


class SQLiteFrequencyCaps(FrequencyCaps):
    """Impressions as rows of one SQLite table (WAL), behind a lock shared by the service's threads."""

    def __init__(self, path: Path, max_impressions: int, window_days: float) -> None:
        super().__init__(max_impressions, window_days)
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS shown (customer_key TEXT, product_id TEXT, at REAL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS shown_key ON shown (customer_key, product_id, at)")

    def counts(self, customer_key: str, products: Sequence[str], now: float) -> dict[str, int]:
        """See FrequencyCaps.counts."""
        since = now - self.window
        with self._lock:
            rows = self._db.execute(
                "SELECT product_id, count(*) FROM shown WHERE customer_key = ? AND at > ? GROUP BY product_id",
                (customer_key, since),
            ).fetchall()
        found = dict(rows)
        return {p: int(found.get(p, 0)) for p in products}

    def record(self, customer_key: str, products: Sequence[str], now: float) -> None:
        """See FrequencyCaps.record."""
        with self._lock:
            self._db.executemany("INSERT INTO shown VALUES (?, ?, ?)", [(customer_key, p, now) for p in products])

    def impressions(self, customer_keys: Sequence[str]) -> list[tuple[str, str, float]]:
        """See FrequencyCaps.impressions."""
        with self._lock:
            rows = self._db.execute(
                "SELECT customer_key, product_id, at FROM shown WHERE customer_key IN (SELECT value FROM json_each(?)) "
                "ORDER BY customer_key, at",
                (json.dumps(list(customer_keys)),),
            ).fetchall()
        return [(str(k), str(p), float(a)) for k, p, a in rows]

    def delete(self, customer_keys: Sequence[str]) -> int:
        """See FrequencyCaps.delete (one statement, one transaction)."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM shown WHERE customer_key IN (SELECT value FROM json_each(?))",
                (json.dumps(list(customer_keys)),),
            )
        return max(cursor.rowcount, 0)


class RedisFrequencyCaps(FrequencyCaps):
    """Impressions as one sorted set per (customer, product), scored by time, expiring after the window."""

    def __init__(self, url: str, namespace: str, max_impressions: int, window_days: float) -> None:
        import redis

        super().__init__(max_impressions, window_days)
        self._namespace = namespace
        self._redis = redis.Redis.from_url(url)

    def counts(self, customer_key: str, products: Sequence[str], now: float) -> dict[str, int]:
        """See FrequencyCaps.counts."""
        since = now - self.window
        pipe = self._redis.pipeline()
        for p in products:
            pipe.zcount(self._key(customer_key, p), since, "+inf")
        return dict(zip(products, (int(n) for n in pipe.execute()), strict=True))

    def record(self, customer_key: str, products: Sequence[str], now: float) -> None:
        """See FrequencyCaps.record."""
        pipe = self._redis.pipeline()
        for p in products:
            key = self._key(customer_key, p)
            pipe.zadd(key, {f"{now}:{id(p)}:{time.perf_counter_ns()}": now})
            pipe.zremrangebyscore(key, "-inf", now - self.window)
            pipe.expire(key, int(self.window) + 60)
        pipe.execute()

    def _key(self, customer_key: str, product: str) -> str:
        return f"{self._namespace}:cap:{customer_key}:{product}"

    def _keys_of(self, customer_key: str) -> list[bytes]:
        # Redis glob syntax: the key is escaped so a key holding * or [ matches only itself.
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in f"{self._namespace}:cap:{customer_key}:")
        return list(self._redis.scan_iter(match=escaped + "*", count=1000))

    def impressions(self, customer_keys: Sequence[str]) -> list[tuple[str, str, float]]:
        """See FrequencyCaps.impressions."""
        out = []
        for customer_key in customer_keys:
            prefix = f"{self._namespace}:cap:{customer_key}:"
            for key in self._keys_of(customer_key):
                product = key.decode()[len(prefix) :]
                scored: Any = self._redis.zrange(key, 0, -1, withscores=True)
                out += [(customer_key, product, float(pair[1])) for pair in scored]
        return sorted(out, key=lambda r: (r[0], r[2], r[1]))  # as SQLite gives them: by customer, then time

    def delete(self, customer_keys: Sequence[str]) -> int:
        """See FrequencyCaps.delete: the customers' sorted sets are removed (their sizes counted first)."""
        removed = 0
        for customer_key in customer_keys:
            keys = self._keys_of(customer_key)
            if not keys:
                continue
            pipe = self._redis.pipeline()
            for key in keys:
                pipe.zcard(key)
            removed += sum(int(n) for n in pipe.execute())
            self._redis.delete(*keys)
        return removed
