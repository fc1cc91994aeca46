"""Benchmark: the full `train all` as the platform runs it, against a bare script doing the same fits.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_train                               # 100,000 customers, 20 trials
    .venv/bin/python -m benchmarks.bench_train --quick                       # 5,000 customers, 2 trials: a check
    .venv/bin/python -m benchmarks.bench_train --repeats 3                   # A/B three times, medians
    .venv/bin/python -m benchmarks.bench_train --study-timeout 100000        # trials never cut short by time

Setup (untimed, cached under --work and reused when complete): a synthetic world
(`generate_world`), ingested (`ingest_drop`), identities resolved (the plain-function path of
`custintel resolve --engine local`, identity_u_max_pairs 1e6), and the features built at every
cutoff the default training config reads (`run_feature_build` with the plain steps); then a
trivial Prefect flow creates the PREFECT_HOME database the platform runs use.

Contenders, each in its own child process (this module, called with ``_worker``), alternating
(A B, then B A, ...) because this machine's CPU speed moves between two levels:

    A  platform   the Prefect flow `flows.train.train_model(settings, "all", trials=N)`: ephemeral Prefect
                  API (PREFECT_HOME under --work), a fresh MLflow SQLite store and artifact folder in a
                  hard-linked copy of the prepared home; load, tune + fit, log + register, verify.
    B  bare       no flow, no tracking: for each unit of `plan_units(config, "all")` (budget set with
                  `with_budget`), `load_unit` then `fit_unit`: the same fits with the same seeds.

Reported: wall time of each (spawn to the end of the work, imports included; B without its
Prefect import, which a bare script would not need), the overhead share (A - B) / A (target
< 15 % at 100k customers and 20 trials; also net of the fits, the same work in both, whose time moves
with the machine: ((A - fits A) - (B - fits B)) / A), the share of A outside model fitting (wall - sum of
`fit_models`), A's per-unit seconds (load, tune + fit, log + register, verify) beside B's (load,
tune + fit), and the peak RSS of each (A's ephemeral Prefect server, a separate process, shown
apart). The metrics of A and B are compared unit by unit to show they made the same fits.
Results are written to benchmarks/results/train-<time>.json. Exit code 0, 1 when the target is
missed (where it applies), 2 when a child fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.harness import Bench, Run, Session, Spec, Target, Timed, cached_stages, emit, in_turn
from benchmarks.harness import main as harness_main

MODULE = "benchmarks.bench_train"
DEFAULT_WORK = Path("/tmp/custintel-bench-train")
DEFAULT_CUSTOMERS = 100_000
DEFAULT_TRIALS = 20
U_MAX_PAIRS = 1e6
TARGET_OVERHEAD = 0.15
QUICK_CUSTOMERS, QUICK_TRIALS = 5_000, 2
STAGES = ("generate", "ingest", "resolve", "features")
TRACKING_FILES = ("mlflow.db", "artifacts", "mlruns")  # left out of the platform run's copy of the home


# --------------------------------------------------------------------------- child side


def _settings(p: dict[str, Any]) -> Any:
    from custintel.settings import Settings

    return Settings(home=Path(p["home"]), identity_u_max_pairs=U_MAX_PAIRS)


def _work_generate(p: dict[str, Any]) -> dict[str, Any]:
    """Write the synthetic world (source drop and hidden truth)."""
    from features.synthetic import WorldConfig, generate_world

    world = Path(p["world"])
    shutil.rmtree(world, ignore_errors=True)
    t0 = time.perf_counter()
    summary = generate_world(
        WorldConfig(customers=p["customers"], seed=p["seed"]),
        world,
        on_chunk=lambda i, n: emit("progress", step=f"chunk {i}/{n}"),
    )
    return {"seconds": time.perf_counter() - t0, "rows": summary.rows}


def _work_ingest(p: dict[str, Any]) -> dict[str, Any]:
    """Check the drop against the contracts and land it in the lake."""
    from features.lake import ingest_drop

    t0 = time.perf_counter()
    report = ingest_drop(
        Path(p["world"]), _settings(p), progress=lambda table, rows: emit("progress", step=f"{table}: {rows:,} rows")
    )
    return {"seconds": time.perf_counter() - t0, "reconciles": report.reconciles, "tables": len(report.tables)}


def _work_resolve(p: dict[str, Any]) -> dict[str, Any]:
    """Resolve identities with the plain functions (as `custintel resolve --engine local`)."""
    from features.identity.store import resolve_from_lake

    settings = _settings(p)
    shutil.rmtree(settings.identity_dir, ignore_errors=True)
    t0 = time.perf_counter()
    run = resolve_from_lake(settings, False, lambda message: emit("progress", step=message))
    stats = run["stats"]
    return {"seconds": time.perf_counter() - t0, "records": stats["records"], "customers": stats["customers"]}


def _work_features(p: dict[str, Any]) -> dict[str, Any]:
    """Build the features at every cutoff the training config reads (full), or only the missing ones."""
    from flows.features import PLAIN_STEPS, run_feature_build
    from models.config import load_training_config
    from models.training import ensure_features, plan_units

    settings = _settings(p)
    units = plan_units(load_training_config(settings.training_config), "all")
    cutoffs = sorted({d for u in units for d in u.as_of})
    sets = sorted({s for u in units for s in u.feature_sets})

    def log(message: str) -> None:
        emit("progress", step=message)

    def build(days: list[dt.date]) -> Any:
        return run_feature_build(settings, days, False, PLAIN_STEPS, log)

    t0 = time.perf_counter()
    if p["full"]:
        shutil.rmtree(settings.features_dir, ignore_errors=True)
        # One cutoff per build: all six at once exceed DuckDB's default memory limit at 100k customers
        # (the purchase-label grid), and the preparation is untimed.
        for day in cutoffs:
            build([day])
    # A config or feature change since the cache was made: build what the runs would otherwise build inside A.
    topped_up = ensure_features(settings, sets, cutoffs, build)
    return {
        "seconds": time.perf_counter() - t0,
        "cutoffs": [str(d) for d in cutoffs],
        "sets": sets,
        "built_missing": [str(d) for d in topped_up],
    }


def _work_prefect_warmup(p: dict[str, Any]) -> dict[str, Any]:
    """Run a trivial flow once so the PREFECT_HOME database exists (as it would on a used machine)."""
    _platform_env(p["env"])
    t0 = time.perf_counter()
    from prefect import flow

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    warmup()
    return {"seconds": time.perf_counter() - t0}


def _platform_env(env: dict[str, str]) -> None:
    """The platform run's environment: the ephemeral Prefect API, the run's own MLflow store."""
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
        os.environ.pop(key, None)
    os.environ.update(env)


def _descendants_hwm_mib() -> dict[str, float]:
    """Peak RSS (VmHWM) of this process's children, e.g. the ephemeral Prefect server."""
    import psutil

    out: dict[str, float] = {}
    for child in psutil.Process().children(recursive=True):
        try:
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[f"{child.pid} {' '.join(child.cmdline()[:4])[:80]}"] = int(line.split()[1]) / 1024
        except (OSError, ValueError, psutil.Error):
            continue
    return out


class _ProgressHandler:
    """Forwards the flow's log lines (Prefect's flow and task run loggers) to the parent as progress."""

    def __init__(self) -> None:
        import logging

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    emit("progress", step=record.getMessage()[:120])
                except Exception:  # noqa: BLE001 - progress must never break the run
                    pass

        self.handler = Handler(level=logging.INFO)
        self.loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]

    def attach(self) -> None:
        """Add the handler (again: Prefect may reconfigure its loggers when the flow starts)."""
        for logger in self.loggers:
            if self.handler not in logger.handlers:
                logger.addHandler(self.handler)


def _work_platform(p: dict[str, Any]) -> dict[str, Any]:
    """Contender A: the Prefect flow train_model, tracked in a fresh MLflow store."""
    _platform_env(p["env"])
    clock = Timed()  # opened before the flow's import, which is timed apart (imports_seconds)
    from flows.train import train_model

    imports = time.perf_counter() - clock.start
    progress = _ProgressHandler()
    progress.attach()
    emit("progress", step="starting the flow (ephemeral Prefect API)")
    t1 = time.perf_counter()
    from custintel.settings import Settings

    settings = Settings(home=Path(p["home"])).to_flow()  # what `custintel train` hands the flow
    outcomes = train_model(settings, "all", trials=p["trials"], timeout=p.get("timeout"))
    seconds = time.perf_counter() - t1
    server = _descendants_hwm_mib()
    clock.end()
    units = [
        {
            "unit": o["family"],
            "seconds": o["seconds"],
            "metrics": o["metrics"],
            "run_id": o["run_id"],
            "registered": o["registered"],
        }  # fmt: skip
        for o in outcomes
    ]
    return clock.result(seconds=seconds, imports_seconds=imports, server_hwm_mib=server, units=units)


def _work_bare(p: dict[str, Any]) -> dict[str, Any]:
    """Contender B: the same loads and fits as plain function calls; no flow, no tracking."""
    clock = Timed()
    t0 = clock.start
    import models.churn  # noqa: F401 - the model code B needs (it imports mlflow.pyfunc itself)
    import models.propensity  # noqa: F401
    import models.recommendation  # noqa: F401

    model_imports = time.perf_counter() - t0
    t = time.perf_counter()
    import prefect  # noqa: F401 - only because flows.train imports it; a bare script would not

    prefect_import = time.perf_counter() - t
    from models.config import load_training_config
    from models.training import fit_unit, load_unit, plan_units, with_budget

    imports = time.perf_counter() - t0
    settings = _settings(p)
    t1 = time.perf_counter()
    config = with_budget(load_training_config(settings.training_config), p["trials"], p.get("timeout"))
    prefix = f"{config.experiment}-bench"
    units = []
    # The same loop shape as run_training: the previous unit's data lives until the next one is loaded.
    for unit in plan_units(config, "all"):
        emit("progress", step=f"{unit.name}: loading")
        t = time.perf_counter()
        data = load_unit(settings, config, unit)
        load = time.perf_counter() - t
        emit("progress", step=f"{unit.name}: tuning and fitting")
        t = time.perf_counter()
        trained = fit_unit(unit, data, settings, prefix)
        fit_total = time.perf_counter() - t
        units.append(
            {
                "unit": unit.name,
                "seconds": {
                    "load": round(load, 3),
                    "fit_total": round(fit_total, 3),
                    "fit_models": round(trained.fit_seconds, 3),
                },  # fmt: skip
                "metrics": trained.metrics,
            }
        )
    clock.end(since=t1)
    return clock.result(
        imports_seconds=imports,
        model_imports_seconds=model_imports,
        prefect_import_seconds=prefect_import,
        units=units,
    )


WORKERS = {
    "generate": _work_generate,
    "ingest": _work_ingest,
    "resolve": _work_resolve,
    "features": _work_features,
    "prefect_warmup": _work_prefect_warmup,
    "platform": _work_platform,
    "bare": _work_bare,
}


# --------------------------------------------------------------------------- parent side


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _platform_home(prepared: Path, run_dir: Path) -> Path:
    """A copy of the prepared home (hard links, so cheap) without any MLflow store or artifacts."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    home = run_dir / "home"
    shutil.copytree(
        prepared,
        home,
        copy_function=_link_or_copy,
        ignore=lambda d, names: [n for n in names if Path(d) == prepared and n in TRACKING_FILES],
    )
    return home


def _prepare(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """Make (or reuse) the world, lake, crosswalk and features; returns what the runs need."""
    base = args.work / f"w{args.customers}-s{args.seed}"
    world, home = base / "world", base / "home"
    params = {"world": str(world), "home": str(home), "customers": args.customers, "seed": args.seed}

    def make(stage: str, redo: bool) -> Run | None:
        if stage == "features":  # always checked: a config or feature change since may want more cutoffs
            label = "features at every training cutoff" if redo else "features: checking the cutoffs"
            run = bench.child("features", label, {**params, "full": redo})
            if run.data["built_missing"] and not redo:
                bench.console.log(f"built missing cutoffs {run.data['built_missing']}")
            return run
        if not redo:
            return None
        if stage in ("generate", "ingest"):
            shutil.rmtree(home, ignore_errors=True)  # a new drop: a new lake and everything after it
        return bench.child(stage, f"{stage} ({args.customers:,} customers)", params)

    state = cached_stages(
        bench,
        base / "prepared.json",
        STAGES,
        make,
        identity={"customers": args.customers, "seed": args.seed},
        kept=("rows", "customers", "cutoffs", "sets"),
    )
    prefect_home = args.work / "prefect-home"
    if not args.fresh_prefect_home and not (prefect_home / ".bench-warm").is_file():
        bench.child("prefect_warmup", "creating the Prefect database (untimed)", {"env": _prefect_env(prefect_home)})
        (prefect_home / ".bench-warm").write_text("ok\n", encoding="utf-8")
    return {"home": home, "world": world, "state": state, "prefect_home": prefect_home}


def _prefect_env(prefect_home: Path) -> dict[str, str]:
    return {"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _unit_seconds(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Median per unit and per step over the repeats."""
    keys: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for u in r.data["units"]:
            for k, v in u["seconds"].items():
                keys.setdefault(u["unit"], {}).setdefault(k, []).append(float(v))
    return {unit: {k: _median(v) for k, v in steps.items()} for unit, steps in keys.items()}


def _same_fits(a: Run, b: Run) -> dict[str, Any]:
    """Per unit: how far A's metrics are from B's (the same seeds should give the same numbers)."""
    out: dict[str, Any] = {}
    bm = {u["unit"]: u["metrics"] for u in b.data["units"]}
    for u in a.data["units"]:
        other = bm.get(u["unit"], {})
        common = sorted(k for k in set(u["metrics"]) & set(other) if "seconds" not in k)  # not the timings
        diffs = {k: abs(float(u["metrics"][k]) - float(other[k])) for k in common}
        worst = max(diffs, key=lambda k: diffs[k]) if diffs else None
        out[u["unit"]] = {
            "metrics_compared": len(common),
            "max_abs_diff": diffs[worst] if worst else None,
            "worst_metric": worst,
            "trials": (u["metrics"].get("tuning_trials"), other.get("tuning_trials")),
        }
    return out


def _analyse(a_runs: list[Run], b_runs: list[Run], args: argparse.Namespace) -> dict[str, Any]:
    def wall(r: Run) -> float:  # spawn to the end of the work: what a user waits for
        return r.timed_wall_seconds if r.timed_wall_seconds is not None else r.wall_seconds

    def fit_models(r: Run) -> float:
        return sum(float(u["seconds"].get("fit_models", 0.0)) for u in r.data["units"])

    pairs = []
    for a, b in zip(a_runs, b_runs, strict=True):
        wa, wb = wall(a), wall(b) - b.data["prefect_import_seconds"]
        pairs.append(
            {
                "a_wall": wa,
                "b_wall": wb,
                "b_wall_with_prefect_import": wall(b),
                "a_in_flow": a.seconds,
                "b_in_loop": b.seconds,
                "overhead_share": (wa - wb) / wa,
                "overhead_share_in_process": (a.seconds - b.seconds) / a.seconds,
                # The fits are the same work in both: a difference in their time is the machine (CPU level, load).
                "overhead_share_outside_fits": ((wa - fit_models(a)) - (wb - fit_models(b))) / wa,
                "a_fit_models": fit_models(a),
                "b_fit_models": fit_models(b),
                "a_outside_fit_share": (wa - fit_models(a)) / wa,
                "b_outside_fit_share": (wb - fit_models(b)) / wb,
                "a_peak_mib": a.peak_mib,
                "a_server_hwm_mib": sum(a.data.get("server_hwm_mib", {}).values()),
                "b_peak_mib": b.peak_mib,
                "a_imports": a.data["imports_seconds"],
                "b_imports": b.data["imports_seconds"],
                "a_load_avg": a.load_avg[0],
                "b_load_avg": b.load_avg[0],
            }
        )
    med = {k: _median([p[k] for p in pairs]) for k in pairs[0]}
    applies = args.customers >= DEFAULT_CUSTOMERS and args.trials >= DEFAULT_TRIALS
    digests = sorted({r.code_digest for r in [*a_runs, *b_runs]})
    return {
        "pairs": pairs,
        "median": med,
        "units_a": _unit_seconds(a_runs),
        "units_b": _unit_seconds(b_runs),
        "same_fits": _same_fits(a_runs[0], b_runs[0]),
        "target": Target(
            f"overhead share (A - B) / A < {TARGET_OVERHEAD:.0%}",
            med["overhead_share"],
            TARGET_OVERHEAD,
            med["overhead_share"] < TARGET_OVERHEAD,
            f"{med['overhead_share']:.1%} (in process, without imports and start-up: "
            f"{med['overhead_share_in_process']:.1%}; outside the model fits, which are the same work in both: "
            f"{med['overhead_share_outside_fits']:.1%})",
            applies=applies,
            note=f"the target applies at {DEFAULT_CUSTOMERS:,} customers and {DEFAULT_TRIALS} trials: not counted",
        ),
        "code_digests": digests,
    }


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _print(console: Console, an: dict[str, Any], args: argparse.Namespace) -> None:
    m = an["median"]
    n = len(an["pairs"])
    t = Table(title=f"train all: {args.customers:,} customers, {args.trials} trials per study "
              f"(median of {n} alternating pair{'s' if n > 1 else ''})")  # fmt: skip
    for col in ("", "A platform (Prefect + MLflow)", "B bare script", "A / B"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row("wall s (spawn to done)", _s(m["a_wall"]), _s(m["b_wall"]), f"{m['a_wall'] / m['b_wall']:.2f}×")
    t.add_row(
        "  in the flow / the loop s", _s(m["a_in_flow"]), _s(m["b_in_loop"]), f"{m['a_in_flow'] / m['b_in_loop']:.2f}×"
    )
    t.add_row("  imports s", _s(m["a_imports"]), _s(m["b_imports"]), "")
    t.add_row("sum of fit_models s", _s(m["a_fit_models"]), _s(m["b_fit_models"]),
              f"{m['a_fit_models'] / m['b_fit_models']:.2f}×" if m["b_fit_models"] else "")  # fmt: skip
    t.add_row("outside model fitting", f"{m['a_outside_fit_share']:.0%}", f"{m['b_outside_fit_share']:.0%}", "")
    t.add_row("peak RSS MiB", _s(m["a_peak_mib"]), _s(m["b_peak_mib"]),
              f"{m['a_peak_mib'] / m['b_peak_mib']:.2f}×" if m["b_peak_mib"] else "")  # fmt: skip
    t.add_row("  + Prefect server process MiB", _s(m["a_server_hwm_mib"]), "", "")
    console.print(t)

    u = Table(title="Per unit, seconds (median over repeats)")
    for col in ("unit", "A load", "A tune+fit", "(fit models)", "A log+register", "A verify",
                "B load", "B tune+fit", "(fit models)", "tune+fit A/B"):  # fmt: skip
        u.add_column(col, justify="left" if col == "unit" else "right")
    ua, ub = an["units_a"], an["units_b"]
    for name in ua:
        a, b = ua[name], ub.get(name, {})
        ratio = f"{a['fit_total'] / b['fit_total']:.2f}×" if b.get("fit_total") else ""
        u.add_row(name, _s(a.get("load")), _s(a.get("fit_total")), _s(a.get("fit_models")),
                  _s(a.get("log_and_register")), _s(a.get("verify")), _s(b.get("load")), _s(b.get("fit_total")),
                  _s(b.get("fit_models")), ratio)  # fmt: skip
    console.print(u)

    same = an["same_fits"]
    console.print(
        "Same fits (A #1 vs B #1, metrics compared): "
        + "; ".join(
            f"{k} {v['metrics_compared']} metrics, max |Δ| {v['max_abs_diff'] or 0:.2g}"
            + (f" ({v['worst_metric']})" if v["max_abs_diff"] else "")
            for k, v in same.items()
        )
    )
    if len(an["pairs"]) > 1:
        console.print("Overhead per pair: " + ", ".join(f"{p['overhead_share']:.1%}" for p in an["pairs"]))
    console.print(an["target"].line())
    console.print(
        "[dim]B's wall leaves out its Prefect import (flows.train imports it; a bare script would not). "
        "Load averages at start: "
        + ", ".join(f"A {p['a_load_avg']:.1f} / B {p['b_load_avg']:.1f}" for p in an["pairs"])
        + "[/]"  # fmt: skip
    )


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Wall time and peak memory of `train all` as the Prefect flow with MLflow tracking, "
        "against a bare script making the same fits, each in its own process, alternating.",
    )
    ap.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS, help="world size (default 100,000)")
    ap.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="Optuna trials per study (default 20)")
    ap.add_argument(
        "--study-timeout",
        type=float,
        help="seconds per Optuna study, for both contenders (default: the config's, 600 s; a study cut short "
        "by time runs fewer trials on a slower pass, and A and B no longer make the same fits)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="A/B pairs, alternating the order (default 1)")
    ap.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help=f"setup cache and run homes (default {DEFAULT_WORK})"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CUSTOMERS:,} customers and {QUICK_TRIALS} trials: a check that the whole run works",
    )
    ap.add_argument("--seed", type=int, default=7, help="seed of the generated world")
    ap.add_argument("--keep", action="store_true", help="keep the platform runs' homes (MLflow store, artifacts)")
    ap.add_argument(
        "--fresh-prefect-home",
        action="store_true",
        help="give each platform run a new PREFECT_HOME (a first run's start-up) instead of a used one",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.customers, args.trials = QUICK_CUSTOMERS, QUICK_TRIALS
    if args.customers < 10 or args.trials < 1 or args.repeats < 1:
        ap.error("--customers >= 10, --trials >= 1 and --repeats >= 1")
    args.work = args.work.expanduser().resolve()
    return args


def _run(session: Session) -> None:
    """Prepare (or reuse) the data, run A and B alternately, print and save the comparison."""
    args, console, bench = session.args, session.console, session.bench
    args.work.mkdir(parents=True, exist_ok=True)
    a_runs: list[Run] = []
    b_runs: list[Run] = []
    session.record.update(
        prepared={},
        method="A and B alternate in child processes; wall = spawn to the end of the work (imports "
        "included; B without its Prefect import); the CPU speed of this machine moves between two levels, "
        "so only the ratios within a pair are meaningful",
        analysis={},
        runs={"platform": a_runs, "bare": b_runs},
    )
    prepared = _prepare(args, bench)
    session.record["prepared"] = prepared
    console.log(f"prepared home {prepared['home']}; cutoffs {prepared['state']['stages']['features']['cutoffs']}")
    for i in range(args.repeats):
        for step in in_turn(i, "platform", "bare"):
            if step == "platform":
                run_dir = args.work / "runs" / f"platform-{i + 1}"
                home = _platform_home(prepared["home"], run_dir)
                prefect_home = run_dir / "prefect-home" if args.fresh_prefect_home else prepared["prefect_home"]
                env = {**_prefect_env(prefect_home), "CUSTINTEL_HOME": str(home),
                       "CUSTINTEL_MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}  # fmt: skip
                params = {"home": str(home), "trials": args.trials, "timeout": args.study_timeout, "env": env}
                try:
                    a_runs.append(bench.child("platform", f"A platform #{i + 1}: train_model flow", params))
                finally:
                    if not args.keep:
                        shutil.rmtree(run_dir, ignore_errors=True)
            else:
                params = {"home": str(prepared["home"]), "trials": args.trials, "timeout": args.study_timeout}
                b_runs.append(bench.child("bare", f"B bare #{i + 1}: load_unit + fit_unit", params))
            session.save()  # a later crash or an interrupt keeps the runs so far
    analysis = _analyse(a_runs, b_runs, args)
    session.record["analysis"] = analysis
    session.targets.append(analysis["target"])
    _print(console, analysis, args)


SPEC = Spec(
    name="train",
    module=MODULE,
    workers=WORKERS,
    packages=("prefect", "mlflow", "optuna", "lightgbm", "implicit", "scikit-learn", "pandas"),
    measured=("features", "models", "flows", "custintel"),
)


def main(argv: list[str] | None = None) -> int:
    """Prepare (or reuse) the data, run A and B alternately, print and write the comparison."""
    return harness_main(SPEC, argv, _parse, _run)


if __name__ == "__main__":
    sys.exit(main())
