"""Arbitration throughput, in process: `decide_batch` customers per second and `decide` latency.

    python -m benchmarks.bench_decide [--customers 100000] [--singles 5000] [--repeats 3]
    python -m benchmarks.bench_decide --quick      # 20,000 customers, 1,000 single decisions
    python -m benchmarks.bench_decide --quick --against DIR [--home HOME]   # before/after, in the same run

Campaigns: CPU per 1,000 customers of `decide_batch` (email) on campaigns of 1,000 and 10,000 customers, and,
with `--home` (a home with champions and an online store, e.g. `make bench-serve`'s), of the service's
`Decider.decide_many` (states from its cache, arbitration, answers, the decision log's rows; the log written
to a temporary file, emptied before every call) and of a single `Decider.decide_one`. `--against DIR`: the
same figures from the code under DIR (e.g. `git archive main | tar -x -C DIR`), each side in a child process
of its own, the two alternating `--repeats` times; the best of each is compared (after / before). Garbage
collection is set as the service sets it (start-up objects frozen, threshold 20,000).

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
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


CAMPAIGNS = (1_000, 10_000)


def _cpu_per_1000(run: Any, size: int, repeats: int, before: Any = None) -> float:
    """Best CPU milliseconds per 1,000 customers of `run()` over `repeats` calls (`before()` untimed before each)."""
    best = float("inf")
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best * 1000 / size * 1000


def campaign_figures(home: str | None, repeats: int) -> dict[str, float]:
    """CPU per 1,000 customers of campaigns (in process, this interpreter's code), and of `decide_one` with a home."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)  # as the service's worker does
    policy = load_policy()
    states = synthetic_states(max(CAMPAIGNS), seed=1)
    out: dict[str, float] = {}
    for size in CAMPAIGNS:
        picked = states[:size]
        out[f"decide_batch x{size}"] = _cpu_per_1000(
            lambda p=picked: decide_batch(policy, p, "email", TODAY, seed=1), size, max(repeats, 3)
        )
    if home is not None:
        out.update(_decider_figures(Path(home), repeats))
    return out


def _decider_figures(home: Path, repeats: int) -> dict[str, float]:
    """`Decider.decide_many` per 1,000 customers and `decide_one` per decision, on a home's champions and store."""
    import sqlite3

    from custintel.settings import Settings
    from decisions.policy import default_policy_text
    from serving.decision_log import DecisionLog
    from serving.decisions import Decider
    from serving.policy import load_serving_policy
    from serving.runtime import Runtime
    from serving.schemas import DecideBatchRequest, DecideRequest

    work = Path(tempfile.mkdtemp(prefix="bench-decide-"))
    policy_file = work / "policy.yaml"  # no campaign cut by the capacity the earlier ones used
    policy_file.write_text(default_policy_text().replace("  email: 20000", "  email: 10000000"), encoding="utf-8")
    settings = Settings(home=home, decision_policy=policy_file)
    runtime = Runtime(settings, load_serving_policy(settings.serving_policy))
    decider = Decider(runtime)
    log_path = work / "decisions.db"
    decider.log = DecisionLog(log_path, decider.log.key_rule, decider.log.salt)
    keys = runtime.customer_keys()[: max(CAMPAIGNS)]
    policy = decider.policies.current.policy
    decider.states(policy, keys, dt.date.today())  # the cache filled, as the service's thread fills it
    gc.collect()
    gc.freeze()

    def empty() -> None:
        with sqlite3.connect(log_path) as con:
            con.execute("DELETE FROM exposures")
            con.execute("DELETE FROM decisions")

    out: dict[str, float] = {}
    try:
        for size in CAMPAIGNS:
            request = DecideBatchRequest(customer_keys=keys[:size], channel="email")
            out[f"decide_many x{size}"] = _cpu_per_1000(lambda r=request: decider.decide_many(r), size,
                                                        max(repeats, 2), empty)  # fmt: skip
        singles = [DecideRequest(customer_key=k, channel="call_centre") for k in keys[:500]]
        empty()
        start = time.process_time()
        for single in singles:
            decider.decide_one(single)
        out["decide_one ms"] = (time.process_time() - start) * 1000 / len(singles)
    finally:
        decider.close()
        runtime.close()
    return out


def _child(code: Path | None, home: str | None, repeats: int) -> dict[str, float]:
    """`campaign_figures` in a child process running the code under `code` (None: this code)."""
    env = dict(os.environ)
    root = code if code is not None else Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # this file's child mode, run by path: the code it times is imported from `root` (first on the path)
    runner = f"import runpy; runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"
    command = [sys.executable, "-c", runner, "--child", "--repeats", str(repeats)]
    if home is not None:
        command += ["--home", home]
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, check=False)  # noqa: S603
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bench_decide: the child for {root} failed: {done.stderr.strip()[-2000:]}")
    figures: dict[str, float] = json.loads(lines[-1])
    return figures


def compare(against: Path, home: str | None, repeats: int) -> dict[str, Any]:
    """Before (the code under `against`) and after (this code), alternating; the best of each and the ratio."""
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    for r in range(repeats):
        order = [(against, before), (None, after)] if r % 2 == 0 else [(None, after), (against, before)]
        for code, into in order:
            for name, value in _child(code, home, 1).items():
                into[name] = min(value, into.get(name, float("inf")))
    load = os.getloadavg()
    print(f"campaigns, CPU (best of {repeats} alternating runs), load average {load[0]:.1f} / {load[1]:.1f}:")
    rows = {}
    for name in before:
        unit = "ms per decision" if name.endswith(" ms") else "ms per 1,000"
        b, a = before[name], after.get(name, float("nan"))
        rows[name] = {"before": b, "after": a, "before_over_after": b / a}
        rate = "" if name.endswith(" ms") else f"  ({1e6 / a:,.0f} customers/s of one core, before {1e6 / b:,.0f})"
        print(f"  {name:22s} {b:8.2f} -> {a:8.2f} {unit}: {b / a:.2f}x less{rate}")
    return {"load_average": load, "figures": rows}


def main() -> None:
    """Run the benchmark and print (and save) its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--singles", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--against", type=Path, help="a source tree to compare with (before/after)")
    parser.add_argument("--home", help="a home with champions and an online store: time Decider.decide_many too")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(campaign_figures(args.home, args.repeats)))  # noqa: T201 - read by the parent
        return
    if args.against is not None:
        result = compare(args.against, args.home, max(args.repeats, 2))
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / f"decide-compare-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json").write_text(json.dumps(result, indent=2))
        return
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
