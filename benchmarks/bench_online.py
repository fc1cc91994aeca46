"""Online-store lookup latency, in process: SQLite and Redis against reading the offline Parquet.

    python -m benchmarks.bench_online [--customers 200000] [--lookups 20000]
    python -m benchmarks.bench_online --quick      # 20,000 customers, 5,000 lookups

Materialises a synthetic feature set (customer_key, as_of and 40 numeric features, the
width of the real sets together) into the SQLite online store and into Redis (when
reachable), then times single-customer lookups in random order, every one recorded.
The baseline, measured in the same run, is what a service would do without an online
store: a DuckDB point query on the offline Parquet file. Target: a lookup in well
under a millisecond in process. Results go to benchmarks/results/online-<time>.json.
Unlike the other benchmarks it measures in the harness's own process: a lookup is
microseconds, and the question is its latency, not a step's peak memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table

from benchmarks.harness import Session, Spec, Target, verdict
from benchmarks.harness import main as harness_main
from features.featurestore.online import (
    OnlineStore,
    OnlineStoreError,
    RedisOnlineStore,
    SQLiteOnlineStore,
    online_documents,
)

FEATURES = 40
TARGET_P99_US = 1000.0
QUICK = {"customers": 20_000, "lookups": 5_000}


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {
        "customer_key": [f"CK{i:014X}" for i in rng.permutation(n)],
        "as_of": pa.array([dt.date(2025, 9, 1)] * n, pa.date32()),
    }
    for j in range(FEATURES):
        cols[f"f{j:02d}"] = rng.poisson(3, n) if j % 2 else rng.random(n) * 100
    return pa.table(cols)


def _time(lookup: Any, keys: list[str]) -> dict[str, float]:
    for k in keys[:200]:  # warm up
        lookup(k)
    samples = np.empty(len(keys))
    for i, k in enumerate(keys):
        t = time.perf_counter_ns()
        found = lookup(k)
        samples[i] = time.perf_counter_ns() - t
        if not found:
            raise RuntimeError(f"lookup of {k} found nothing")
    us = samples / 1000
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "max_us": float(us.max()), "mean_us": float(us.mean())}  # fmt: skip


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_online", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK['customers']:,} customers, {QUICK['lookups']:,} lookups"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.customers, args.lookups = QUICK["customers"], QUICK["lookups"]
    return args


def _run(session: Session) -> None:
    """Run the benchmark and print ratios against the offline baseline."""
    args, console = session.args, session.console
    table = _table(args.customers, 7)
    keys = table.column("customer_key").to_pylist()
    rng = np.random.default_rng(11)
    sample = [keys[i] for i in rng.integers(0, len(keys), args.lookups)]
    results: dict[str, Any] = {}
    session.record["results"] = results
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "data.parquet"
        pq.write_table(table, parquet, compression="zstd")
        stores: list[tuple[str, OnlineStore]] = [("sqlite", SQLiteOnlineStore(Path(tmp) / "online.sqlite"))]
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        try:
            stores.append(("redis", RedisOnlineStore(args.redis_url, namespace)))
        except OnlineStoreError as exc:
            console.print(f"[yellow]Redis skipped:[/] {exc}")
        try:
            for name, store in stores:
                t = time.perf_counter()
                store.replace_set("bench@1", online_documents(table), {"as_of": "2025-09-01"})
                results[f"{name}_materialise_s"] = round(time.perf_counter() - t, 2)
            con = duckdb.connect()
            # The offline baseline: a prepared point query on the Parquet file.
            results["offline_duckdb"] = _time(
                lambda k: con.execute(
                    f"SELECT * FROM read_parquet('{parquet}') WHERE customer_key = ?", [k]
                ).fetchall(),
                sample[: max(500, args.lookups // 20)],
            )
            for name, store in stores:
                results[name] = _time(store.lookup, sample)
        finally:
            for _, store in stores:
                if isinstance(store, RedisOnlineStore):
                    store.drop_namespace()
                store.close()
    session.targets += [
        Target(
            f"{name} p99 < {TARGET_P99_US:.0f} µs in process",
            results[name]["p99_us"],
            TARGET_P99_US,
            results[name]["p99_us"] < TARGET_P99_US,
            f"{results[name]['p99_us']:.1f} µs",
        )
        for name in ("sqlite", "redis")
        if name in results
    ]
    passed = {t.name.split()[0]: t.passed for t in session.targets}
    base = results["offline_duckdb"]["p50_us"]
    out = Table(title=f"online lookups: {args.customers:,} customers x {FEATURES} features, {args.lookups:,} lookups")
    for col in ("backend", "p50 µs", "p99 µs", "max µs", "offline p50 / p50", f"target p99 < {TARGET_P99_US:.0f} µs"):
        out.add_column(col, justify="right")
    for name in ("offline_duckdb", "sqlite", "redis"):
        if name in results:
            r = results[name]
            ok = "-" if name == "offline_duckdb" else verdict(passed[name])
            out.add_row(name, f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['max_us']:.0f}",
                        f"{base / r['p50_us']:.1f}x", ok)  # fmt: skip
    console.print(out)
    console.print({k: v for k, v in results.items() if k.endswith("_s")})
    for target in session.targets:
        console.print(target.line())


SPEC = Spec(name="online", module="benchmarks.bench_online", workers={}, packages=("duckdb", "redis"))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every store's p99 is under the target."""
    return harness_main(SPEC, argv, _parse, _run)


if __name__ == "__main__":
    sys.exit(main())
