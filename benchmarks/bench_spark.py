"""DuckDB against Spark (local[2]) for identity resolution, feature builds and batch scoring.

`make bench-spark` (or `python -m benchmarks.bench_spark --customers 100000`; `--customers 1000000` for the
larger size). Each measured step is the command a user runs, in a fresh process, with the engine in the
environment (`CUSTINTEL_ENGINE=duckdb|spark`):

- identity: `custintel resolve --engine local` on a copy of the ingested home per engine;
- features: `custintel features --engine local --no-online --as-of 2025-06-01`;
- scoring:  `custintel score --engine local --model churn --as-of 2025-06-01` with the same champion.

Wall time is spawn to exit (a Spark step includes starting its JVM, as a user's command does); peak
memory is the largest sum of the resident sets of the command's whole process tree (the Python
driver, Spark's JVM and its Python workers), sampled every 0.1 s. The ratios are spark/duckdb,
measured in the same run. A step an engine cannot run yet (identity on Spark before the Spark
identity backend lands) is reported as "not available" with the command's last line, and the
Spark home takes DuckDB's identity output so the later steps still compare.

Setup, not measured: generate the world, ingest it, features at the two training cutoffs, train the
churn model (one trial) and promote it. The results go to benchmarks/results/spark-<time>.json.
Batch scores are checked equal between the engines (same model, same features: identical floats).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchmarks.harness import small_churn_training
from benchmarks.machine import ROOT

RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_WORK = Path("/tmp/custintel-bench-spark")
ENGINES = ("duckdb", "spark")
STEPS = ("identity", "features", "scoring")
AS_OF = "2025-06-01"
TRAIN_CUTOFFS = ("2024-11-01", "2025-02-01")
U_MAX_PAIRS = "1e6"
TRAINING_YAML = small_churn_training("custintel-bench-spark", *TRAIN_CUTOFFS, AS_OF)
# The champion without the gate's audit (the benchmark measures scoring, not promotion), as the tests promote.
PROMOTE = (
    "from custintel.settings import Settings; from governance import store; from models.registry import Registry; "
    "store.move_champion(Registry(Settings()), 'custintel-churn', '1', 'bench-spark')"
)
console = Console(width=None if sys.stdout.isatty() else 140)


def _custintel() -> str:
    return str(Path(sys.executable).parent / "custintel")


def _env(home: Path, engine: str, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTINTEL_")}
    env.update(
        CUSTINTEL_HOME=str(home),
        CUSTINTEL_ENGINE=engine,
        CUSTINTEL_IDENTITY_U_MAX_PAIRS=U_MAX_PAIRS,
        CUSTINTEL_TRAINING_CONFIG=str(work / "training.yaml"),
        PREFECT_HOME=str(work / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def measure(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run a command; its wall time, its process tree's peak resident memory (MiB), exit code and last line."""
    peak = 0
    names: set[str] = set()
    done = threading.Event()
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        root = psutil.Process(proc.pid)

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                    total = 0
                    for p in tree:
                        try:
                            total += p.memory_info().rss
                            names.add(p.name())
                        except psutil.Error:
                            pass
                    peak = max(peak, total)
                except psutil.Error:
                    pass
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return {"seconds": round(seconds, 2), "peak_mib": round(peak / 2**20, 1), "exit": code,
            "last": lines[-1][:200] if lines else "", "jvm": "java" in names}  # fmt: skip


def _setup(work: Path, customers: int, seed: int) -> Path:
    """Generate and ingest the world into a base home (reused when a previous run made it for the same size)."""
    base = work / "base"
    stamp = work / f"base-{customers}-{seed}.ok"
    if stamp.is_file():
        return base
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "training.yaml").write_text(TRAINING_YAML, encoding="utf-8")
    env = _env(base, "duckdb", work)
    world = work / "world"
    console.print(f"setup: generating {customers:,} customers and ingesting them into {base}")
    for command in (
        [_custintel(), "generate", "--out", str(world), "--customers", str(customers), "--seed", str(seed)],
        [_custintel(), "ingest", "--source", str(world), "--engine", "local"],
    ):
        run = measure(command, env, work / "setup.log")
        if run["exit"] != 0:
            raise SystemExit(f"setup failed ({' '.join(command[1:3])}): {run['last']} (log: {work / 'setup.log'})")
    stamp.touch()
    return base


def _step(name: str, engine: str, command: list[str], home: Path, work: Path) -> dict[str, Any]:
    console.print(f"{name} on {engine}: {' '.join(command[1:])}")
    run = measure(command, _env(home, engine, work), work / f"{name}-{engine}.log")
    run.update(step=name, engine=engine)
    if run["exit"] != 0:
        run["not_available"] = run["last"]
    elif engine == "spark" and not run["jvm"]:  # the command ignored CUSTINTEL_ENGINE=spark: it ran on DuckDB
        run["not_available"] = "the command does not run on Spark yet (no JVM started; it ran on DuckDB)"
    missing = f"  not available: {run['not_available']}" if "not_available" in run else ""
    console.print(f"  {run['seconds']} s, peak {run['peak_mib']} MiB{missing}")
    return run


def run_bench(customers: int, seed: int, work: Path, steps: tuple[str, ...] = STEPS) -> dict[str, Any]:
    """Every step on both engines (or those of `steps`); the scores' equality checked.

    Without "identity" in `steps`, each engine's home of the previous run (same size) is reused as it is:
    its identity output feeds the later steps (at 1M customers Spark's identity takes half an hour).
    """
    base = _setup(work, customers, seed)
    homes = {}
    for engine in ENGINES:
        home = work / f"home-{engine}"
        if "identity" in steps:
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(base, home)
        elif not (home / "identity" / "crosswalk.parquet").is_file():
            raise SystemExit(f"--steps without identity needs {home} from an earlier run of the same size")
        homes[engine] = home
    runs = []
    for engine in ENGINES if "identity" in steps else ():
        run = _step("identity", engine, [_custintel(), "resolve", "--engine", "local"], homes[engine], work)
        runs.append(run)
        if "not_available" in run and engine != "duckdb":  # the later steps still compare, on DuckDB's identity output
            shutil.rmtree(homes[engine] / "identity", ignore_errors=True)
            shutil.copytree(homes["duckdb"] / "identity", homes[engine] / "identity")
    features = [_custintel(), "features", "--engine", "local", "--no-online", "--as-of", AS_OF]
    for engine in ENGINES if "features" in steps else ():
        runs.append(_step("features", engine, features, homes[engine], work))
    if "scoring" not in steps:
        return {"customers": customers, "seed": seed, "runs": runs, "scores_equal": None, "steps": list(steps)}
    # the champion: trained once (DuckDB home, its other cutoffs), unmeasured
    home = homes["duckdb"]
    console.print("setup: features at the training cutoffs, churn trained (one trial) and promoted")
    for command in (
        [_custintel(), "features", "--engine", "local", "--no-online", "--as-of", TRAIN_CUTOFFS[0], "--as-of",
         TRAIN_CUTOFFS[1]],
        [_custintel(), "train", "churn", "--engine", "local", "--trials", "1"],
        [sys.executable, "-c", PROMOTE],
    ):  # fmt: skip
        run = measure(command, _env(home, "duckdb", work), work / "setup.log")
        if run["exit"] != 0:
            raise SystemExit(f"setup failed ({' '.join(command[1:3])}): {run['last']} (log: {work / 'setup.log'})")
    scores = {}
    for engine in ENGINES:
        score = [_custintel(), "score", "--engine", "local", "--model", "churn", "--as-of", AS_OF]
        runs.append(_step("scoring", engine, score, home, work))
        path = home / "scores" / "custintel-churn" / f"as_of={AS_OF}" / "data.parquet"
        if path.is_file():
            scores[engine] = path.read_bytes()
            path.unlink()
    equal = len(scores) == 2 and _same_scores(scores["duckdb"], scores["spark"])
    return {"customers": customers, "seed": seed, "runs": runs, "scores_equal": equal, "steps": list(steps)}


def _same_scores(a: bytes, b: bytes) -> bool:
    import io

    import pyarrow.parquet as pq

    left, right = pq.read_table(io.BytesIO(a)), pq.read_table(io.BytesIO(b))
    return left.select(["customer_key", "score"]).equals(right.select(["customer_key", "score"]))


def report(result: dict[str, Any]) -> Table:
    """Per step: each engine's wall time and peak memory, and spark/duckdb."""
    table = Table(title=f"DuckDB vs Spark (local[2]), {result['customers']:,} customers")
    for column in (
        "step",
        "duckdb s",
        "duckdb MiB",
        "spark s",
        "spark MiB",
        "time spark/duckdb",
        "memory spark/duckdb",
    ):
        table.add_column(column, justify="left" if column == "step" else "right")
    by = {(r["step"], r["engine"]): r for r in result["runs"]}
    for step in ("identity", "features", "scoring"):
        d, s = by.get((step, "duckdb")), by.get((step, "spark"))
        if d is None or s is None:
            continue
        if "not_available" in s:
            table.add_row(step, str(d["seconds"]), str(d["peak_mib"]), "not available", "", "", "")
            continue
        table.add_row(step, str(d["seconds"]), str(d["peak_mib"]), str(s["seconds"]), str(s["peak_mib"]),
                      f"{s['seconds'] / d['seconds']:.2f}", f"{s['peak_mib'] / d['peak_mib']:.2f}")  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the results file; exit 0 when every step ran and scores agree."""
    parser = argparse.ArgumentParser(prog="bench_spark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000, help="World size (100000; 1000000 as an option).")
    parser.add_argument("--seed", type=int, default=7, help="The world's seed.")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="Scratch folder (reused for the same size).")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="Steps to measure, comma-separated (identity,features,scoring); without identity the "
                             "homes of an earlier run of the same size are reused.")  # fmt: skip
    args = parser.parse_args(argv)
    steps = tuple(x.strip() for x in args.steps.split(",") if x.strip())
    if not steps or set(steps) - set(STEPS):
        parser.error(f"--steps: some of {', '.join(STEPS)}")
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    result = run_bench(args.customers, args.seed, args.work, steps)
    result.update(started=started.isoformat(timespec="seconds"), load_before=load, load_after=os.getloadavg(),
                  cpus=os.cpu_count())  # fmt: skip
    console.print(report(result))
    if result["scores_equal"] is not None:
        console.print(f"batch scores equal between engines: {result['scores_equal']}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"spark-{started:%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    console.print(f"results: {out}")
    missing = [r for r in result["runs"] if "not_available" in r and r["step"] != "identity"]
    return 0 if not missing and result["scores_equal"] is not False else 1


if __name__ == "__main__":
    raise SystemExit(main())
