"""Arbitration throughput, in process: `decide_batch` customers per second and `decide` latency.

    python -m benchmarks.bench_decide [--customers 100000] [--singles 5000] [--repeats 3]
    python -m benchmarks.bench_decide --quick      # 20,000 customers, 1,000 single decisions

Builds synthetic customer states shaped like the default world's (every add-on of the catalogue with a
propensity, consent, a few products held, some contact history, service signals), then times the default
policy's batch decisions on each channel (email: capacity not binding; call_centre: capacity 400, so the
equity repair runs) and single decisions. Reports wall and CPU throughput: this machine's cores are
shared, so the CPU figure is the one that says what the code costs. Target: a batch of at least 10,000
customers/s. Standalone (no harness child processes): the question is the code's speed, not its memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import numpy as np

from decisions.arbitration import CustomerState, decide, decide_batch
from decisions.policy import load_policy
from features.synthetic import reference as ref

TODAY = dt.date(2026, 12, 1)
TARGET_PER_S = 10_000


def synthetic_states(n: int, seed: int = 0) -> list[CustomerState]:
    """Customers shaped like the default world's scores and signals."""
    rng = np.random.default_rng(seed)
    products = [p[0] for p in ref.PRODUCTS if not p[4]]
    margins = {p[0]: p[3] * 6 for p in ref.PRODUCTS if not p[4]}  # one table shared by everyone
    out = []
    for i in range(n):
        held = frozenset(rng.choice(products, size=int(rng.integers(0, 4)), replace=False).tolist())
        scores = rng.random(len(products)) * 0.05
        history: tuple[tuple[str, dt.date], ...] = ()
        if rng.random() < 0.2:
            history = (("retention_offer", TODAY - dt.timedelta(days=int(rng.integers(1, 200)))),)
        out.append(
            CustomerState(
                f"c{i}",
                consent={"profiling": bool(rng.random() < 0.9), "marketing": bool(rng.random() < 0.8)},
                is_minor=bool(rng.random() < 0.02),
                group=str(rng.choice(["F", "M"])),
                products_held=held,
                churn_risk=float(rng.random()),
                uplift=float(rng.normal(0.03, 0.05)),
                # No score for a product held (as the states builder leaves it out).
                propensity={q: p for q, p in zip(products, scores.tolist(), strict=True) if q not in held},
                margin=margins,
                signals={
                    "yearly_value": float(rng.gamma(2, 200)),
                    "failed_self_service": float(rng.poisson(0.5)),
                    "repeat_contacts": float(rng.poisson(0.3)),
                    "billing_tickets": float(rng.poisson(0.2)),
                },
                history=history,
            )
        )
    return out


def main() -> None:
    """Run the benchmark and print (and save) its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--singles", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.customers, args.singles, args.repeats = 20_000, 1_000, 1
    policy = load_policy()
    states = synthetic_states(args.customers)
    result: dict[str, object] = {"customers": args.customers, "at": dt.datetime.now(dt.UTC).isoformat()}
    for channel in ("email", "call_centre"):
        walls, cpus = [], []
        for r in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            batch = decide_batch(policy, states, channel, TODAY, seed=r)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        contacts = sum(d.actions[0].kind != "none" for d in batch.decisions)
        figures = {
            "wall_per_s": args.customers / min(walls),
            "cpu_per_s": args.customers / min(cpus),
            "contacts": contacts,
            "value": batch.value,
            "value_given_up": batch.value_given_up,
        }
        result[f"batch_{channel}"] = figures
        print(
            f"decide_batch {channel}: {figures['wall_per_s']:,.0f} customers/s wall, "
            f"{figures['cpu_per_s']:,.0f} CPU ({contacts:,} contacts) "
            f"[target {TARGET_PER_S:,}: {'met' if figures['cpu_per_s'] >= TARGET_PER_S else 'NOT met'}]"
        )
    latencies = []
    for i, state in enumerate(states[: args.singles]):
        start = time.perf_counter()
        decide(policy, state, "call_centre", TODAY, seed=i)
        latencies.append((time.perf_counter() - start) * 1e6)
    latencies.sort()
    single = {
        "median_us": statistics.median(latencies),
        "p99_us": latencies[int(0.99 * (len(latencies) - 1))],
    }
    result["single"] = single
    print(f"decide: median {single['median_us']:.0f} us, p99 {single['p99_us']:.0f} us per decision")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"decide-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
