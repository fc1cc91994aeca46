"""Benchmark: do the source-anomaly checks catch injected outages, and stay quiet on normal drops?

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_anomalies                          # 3,000 customers, seeds 11 12 13
    .venv/bin/python -m benchmarks.bench_anomalies --customers 20000 --seeds 7 --outages 1

Per seed: a world is generated and ingested (cached under ``--workdir``, keyed by the generator code), then
- **clean**: `check_sources` on the clean drop, judging the last 120 days (the generator's known
  events acknowledged, as in tests/test_insights_anomalies.py): anomalies found;
- **slices**: the clean profiles cut every 14 days from day 100 on, each table judged like a first drop
  (the shipped policy, 35 days): table-slices with any anomaly / table-slices;
- **outages**: ``--outages`` copies of the drop, each with a missing day of digital events, a spike of
  digital events, CRM email emptied from a Monday (at least 40 days before the export) and support
  resolution emptied from a day, at days drawn at random in the last 120 days; ingested and checked:
  defects caught on the right table, column and day / defects injected, and anomalies matching none.
Timing: profiling and checking a freshly ingested drop (`check_sources`), with the load average.
Targets: every injected defect caught; at most 3% of clean table-slices with an anomaly; no anomaly on
a clean drop. Results: ``--workdir/results/anomalies-<time>.json``; exit 0 when met, 1 when not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import code_digest, machine_info
from custintel.settings import Settings
from features.lake import ingest_drop
from features.synthetic import WorldConfig, generate_world
from features.synthetic.outage import EmptyColumn, MissingDay, VolumeSpike, inject_outage
from insights.anomalies import (
    check_sources,
    check_table,
    slice_profile,
    stored_profiles,
    synthetic_world_policy,
)

TIME_TABLES = [
    "crm_accounts", "billing_accounts", "billing_transactions", "support_tickets", "digital_events",
    "nps_responses", "consent_events", "northwind_customers", "northwind_consents",
]  # fmt: skip
KIND = {"missing_day": "volume", "volume_spike": "volume", "empty_column": "null_rate"}


def build(cfg: WorldConfig, root: Path) -> Path:
    drop = root / "drop"
    if not (drop / "manifest.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        generate_world(cfg, drop)
    home = root / "home"
    if not (home / "lake" / "_manifest.json").is_file():
        ingest_drop(drop, Settings(home=home))
    return drop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--outages", type=int, default=2, help="outage drops per seed")
    ap.add_argument("--workdir", type=Path, default=Path(".custintel/bench-anomalies"))
    args = ap.parse_args()
    results: dict[str, object] = {
        "machine": machine_info(("duckdb", "pandas", "numpy")),
        "customers": args.customers,
        "seeds": {},
    }
    met = True
    for seed in args.seeds:
        cfg = WorldConfig(customers=args.customers, seed=seed, chunk_size=min(args.customers, 50_000))
        # the generator's and the contracts' code in the name: a cached world from older code is not reused
        root = args.workdir / f"{args.customers}-s{seed}-{code_digest(('features/synthetic', 'features/contracts'))}"
        drop = build(cfg, root)
        clean_home = root / "clean-home"
        shutil.rmtree(clean_home, ignore_errors=True)
        shutil.copytree(root / "home", clean_home)
        settings = Settings(home=clean_home)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        clean = check_sources(settings, synthetic_world_policy(cfg))
        seconds = time.perf_counter() - start
        slice_policy = synthetic_world_policy(cfg, first_drop_days=35)
        checked, noisy, found = 0, set(), []
        for table in TIME_TABLES:
            profile = stored_profiles(settings, table)[-1]
            day = cfg.window_start + dt.timedelta(days=100)
            while day < cfg.window_end - dt.timedelta(days=28):
                checked += 1
                for a in check_table(slice_profile(profile, day), [], slice_policy):
                    if not any(k.covers(a) for k in slice_policy.acknowledged):
                        noisy.add((table, day))
                        found.append(a.message)
                day += dt.timedelta(days=14)
        rng = np.random.default_rng(seed)
        caught = injected = extra = 0
        misses: list[str] = []
        extras: list[str] = []
        for k in range(args.outages):
            end = cfg.window_end
            offsets = rng.choice(np.arange(20, 110), 4, replace=False)
            monday = min(end - dt.timedelta(days=int(offsets[2])), end - dt.timedelta(days=40))
            monday -= dt.timedelta(days=monday.weekday())
            defects = [
                MissingDay("digital_events", end - dt.timedelta(days=int(offsets[0]))),
                VolumeSpike("digital_events", end - dt.timedelta(days=int(offsets[1])), factor=3),
                EmptyColumn("crm_accounts", "email", monday),
                EmptyColumn("support_tickets", "resolution", end - dt.timedelta(days=int(offsets[3]))),
            ]
            odrop = root / f"outage-{k}"
            shutil.rmtree(odrop, ignore_errors=True)
            shutil.copytree(drop, odrop, ignore=shutil.ignore_patterns("_truth"))
            truth = inject_outage(odrop, defects)
            ohome = Settings(home=root / f"outage-{k}-home")
            shutil.rmtree(ohome.home_dir, ignore_errors=True)
            ingest_drop(odrop, ohome)
            report = check_sources(ohome, synthetic_world_policy(cfg))

            def hit(d, a) -> bool:  # type: ignore[no-untyped-def]
                if (a.table, a.column, a.kind) != (d.table, d.column, KIND[d.kind]) or a.day is None:
                    return False
                return a.day == d.day if a.period == "day" else a.day <= d.day <= (a.until or a.day)

            for d in truth:
                injected += 1
                if any(hit(d, a) for a in report.anomalies):
                    caught += 1
                else:
                    misses.append(f"{d.kind} {d.table}.{d.column} {d.day}")
            unmatched = [a.message for a in report.anomalies if not any(hit(d, a) for d in truth)]
            extra += len(unmatched)
            extras += unmatched
        rate = len(noisy) / checked if checked else 0.0
        row = {
            "clean_anomalies": [a.message for a in clean.anomalies],
            "check_seconds": round(seconds, 2),
            "load_average": round(load, 2),
            "slices": checked,
            "noisy_slices": len(noisy),
            "slice_fp_rate": round(rate, 4),
            "slice_anomalies": found,
            "injected": injected,
            "caught": caught,
            "missed": misses,
            "unmatched_anomalies": extra,
            "unmatched": extras,
        }
        results["seeds"][str(seed)] = row  # type: ignore[index]
        print(
            f"seed {seed}: clean drop {len(clean.anomalies)} anomalies ({seconds:.1f} s to profile and check, "
            f"load {load:.1f}); slices {len(noisy)}/{checked} noisy ({rate:.1%}); outages caught {caught}/{injected}, "
            f"{extra} unmatched"
        )
        for m in found:
            print(f"    slice: {m}")
        for m in misses:
            print(f"    missed: {m}")
        for m in extras:
            print(f"    unmatched: {m}")
        met &= caught == injected and rate <= 0.03 and not clean.anomalies
    out = args.workdir / "results" / f"anomalies-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {out}; targets {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
