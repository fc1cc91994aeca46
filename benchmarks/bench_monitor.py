"""Benchmark: monitoring a served window of 100k and 1M rows x 50 features, against Evidently's DataDriftPreset.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_monitor                       # 100,000 and 1,000,000 served rows
    .venv/bin/python -m benchmarks.bench_monitor --quick               # 20,000 and 100,000, a few minutes
    .venv/bin/python -m benchmarks.bench_monitor --sizes 1000000 --b-timeout 1200

Setup (untimed, cached under --work, default /tmp/custintel-bench-monitor, reused when complete): a
reference frame (the training rows: 100,000 x 50 features; 42 numeric of varied shapes: normal,
lognormal amounts, integer counts with few values, 0/1 flags, days-since, rates, tenures, some NaN and
a few infinities; 8 categorical strings, one with missing values) and, per size, the current window
from a shifted version of the same generator (8 columns shifted enough to drift, 2 slightly), written
as the service's inference log (`serving.inference_log.InferenceLog`: JSON lines per UTC day, NaN and
infinities as null) over 7 days, plus the same rows as Parquet for the baseline. Fixed seed.

Each measurement runs in its own child process (this module, called with ``_worker``); per size,
in this order: A #1, B, A #2 (--a-runs 1: A, B), so A's figures bracket B's on a machine whose
CPU speed moves within seconds.

    A  ours       `monitoring.served.read_served` over the window (+ the champion-version filter the
                  monitor applies) -> `checks.null_shares` / `checks.data_quality` -> `drift.column_kinds` /
                  `drift.dataset_drift` on every row -> `reports.evidently_drift` on `report_rows`
                  (the shipped policy's) sampled rows per side + `save_html` to a temp file: the steps of
                  `monitoring.monitor.monitor_family` for the inputs, without MLflow and the prediction.
    B  Evidently  `Report([DataDriftPreset(columns=...)], include_tests=True).run(current, reference)` on
                  all the rows (`Dataset.from_pandas` with the same numerical/categorical columns
                  included in the timing), from frames already in memory: B does not read or parse the
                  log (it gets the Parquet copy, loaded untimed), which flatters it. Infinities are
                  replaced by NaN first, as `reports.evidently_drift` does. Killed after --b-timeout
                  seconds (reported as "did not finish").

Timing: "in process" is the timed section inside the child, after the imports (Evidently's included);
"spawn to done" adds interpreter start and imports; the 1M target uses the latter. Peak RSS is the
child's ru_maxrss at the end of its timed section (cross-checked with VmHWM).

Equality (untimed): A's per-column verdicts on all rows (`dataset_drift`) against B's
(`reports.evidently_verdicts` on B's snapshot), and the statistics (`reports.evidently_scores`):
the number of columns whose verdict differs and the largest relative difference of the statistic.
Also shown: how many of the report's verdicts (A's Evidently page, `report_rows` samples) differ from the
all-row verdicts, for information.

Targets (issue 8): at 1,000,000 rows A < 60 s spawn to done; at every size 0 verdict mismatches.
Results go to benchmarks/results/monitor-<time>.json. Exit code 0 when the targets are met, 1 when one
is missed (or cannot be checked because B did not finish), 2 when setup or a run of A fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks.harness import BenchError, Run, Session, Spec, Target, Timed, emit, sandwich
from benchmarks.harness import main as harness_main
from benchmarks.harness import seconds_text as _s
from monitoring.policy import load_policy as load_monitoring_policy

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MODULE = "benchmarks.bench_monitor"
DEFAULT_WORK = Path("/tmp/custintel-bench-monitor")
DEFAULT_SIZES = (100_000, 1_000_000)
QUICK_SIZES = (20_000, 100_000)
REFERENCE_ROWS = 100_000
REPORT_ROWS = load_monitoring_policy().report_rows  # the shipped policy's, as the monitor uses it
DRIFT_SHARE = 0.5
TARGET_ROWS = 1_000_000
TARGET_SECONDS = 60.0
MODEL, VERSION = "custintel-churn", "3"
WINDOW_START = dt.datetime(2025, 9, 1, tzinfo=dt.UTC)
WINDOW_DAYS = 7
GENERATOR = "monitor-bench-v2"  # bump when the generator changes: the cache is keyed on it
SIGALRM_EXIT = -14  # a child killed by its own alarm (B's time limit)


# --------------------------------------------------------------------------- the generator


def _columns(rng: np.random.Generator, n: int, shifted: bool) -> dict[str, np.ndarray]:
    """50 features: 42 numeric of varied shapes, 8 categorical strings. `shifted`: the current window's."""
    import numpy as np

    s = 1.0 if shifted else 0.0
    out: dict[str, np.ndarray] = {}

    def with_nan(values: np.ndarray, share: float) -> np.ndarray:
        values = values.astype(float)
        values[rng.random(n) < share] = np.nan
        return values

    # normal: n00 drifts (+0.3 sd), n01 moves slightly (+0.03 sd); three with missing values
    for j in range(8):
        loc = 10.0 * j + (0.3 * s if j == 0 else 0.03 * s if j == 1 else 0.0) * (1 + j)
        values = rng.normal(loc, 1.0 + j, n)
        out[f"n{j:02d}"] = with_nan(values, 0.05) if j in (2, 5, 7) else values
    # lognormal amounts: a00's spread widens (drifts); a01 has a few infinities in the reference
    for j in range(8):
        values = rng.lognormal(3.0 + 0.4 * j, 1.3 if (j == 0 and shifted) else 1.0, n)
        if j == 1 and not shifted:
            values[rng.random(n) < 0.001] = np.inf
        out[f"a{j:02d}"] = with_nan(values, 0.02) if j in (3, 4) else values
    # integer counts, few values at low rates (tested as categories by Evidently's default): c00, c06 drift
    for j, lam in enumerate((0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0)):
        rate = 0.6 if (j == 0 and shifted) else lam * 1.3 if (j == 6 and shifted) else lam
        out[f"c{j:02d}"] = rng.poisson(rate, n)
    # 0/1 flags: b01 drifts
    for j, p in enumerate((0.1, 0.3, 0.5, 0.8)):
        out[f"b{j:02d}"] = (rng.random(n) < (0.45 if (j == 1 and shifted) else p)).astype(np.int64)
    # uniform shares, one rounded to 2 decimals
    for j in range(2):
        values = rng.random(n) * (j + 1)
        out[f"u{j:02d}"] = values.round(2) if j == 1 else values
    # days since an event, whole days: d00 moves slightly
    for j, scale in enumerate((30.0, 60.0, 120.0, 200.0)):
        out[f"d{j:02d}"] = rng.exponential(scale * (1.02 if (j == 0 and shifted) else 1.0), n).round()
    # rates and zero-inflated amounts
    out["r00"] = rng.beta(2, 5, n)
    out["r01"] = rng.beta(0.5, 0.5, n)
    out["r02"] = np.where(rng.random(n) < 0.6, 0.0, rng.lognormal(4, 1, n))
    out["r03"] = with_nan(np.where(rng.random(n) < 0.3, 0.0, rng.gamma(2, 50, n)), 0.1)
    # tenure in months: t00 drifts (younger customers)
    out["t00"] = rng.integers(0, 60 if shifted else 120, n)
    out["t01"] = rng.integers(0, 240, n)
    out["t02"] = rng.integers(1, 13, n)
    out["t03"] = rng.integers(0, 36, n)
    # categorical strings: k01 and k05 drift; k03 has missing values
    vocab_rng = np.random.default_rng(12345)  # the same vocabularies and shares on both sides
    for j, levels in enumerate((3, 4, 5, 8, 12, 20, 50, 2)):
        names = np.array([f"k{j}_{v:02d}" for v in range(levels)], dtype=object)
        shares = vocab_rng.dirichlet(np.full(levels, 2.0))
        if shifted and j in (1, 5):
            shares = shares[::-1].copy()
        values = names[rng.choice(levels, n, p=shares)]
        if j == 3:
            values[rng.random(n) < 0.03] = None
        out[f"k{j:02d}"] = values
    return out


def _frame(n: int, seed: int, shifted: bool) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    return pd.DataFrame(_columns(np.random.default_rng(seed), n, shifted))


def _write_log(frame: pd.DataFrame, log_dir: Path, seed: int) -> dict[str, int]:
    """The rows as the service's inference log: one JSON object a line, one file per UTC day."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed + 1)
    n = len(frame)
    start = WINDOW_START.timestamp()
    at = np.sort(start + rng.random(n) * WINDOW_DAYS * 86400)
    score = rng.beta(2, 8, n)
    inputs = {}
    for c in frame.columns:
        col = frame[c]
        if col.dtype == object:
            inputs[c] = pa.array(col.to_numpy(), type=pa.string(), from_pandas=True)
        else:
            values = col.to_numpy()
            # orjson (the service's writer) writes NaN and infinities as null
            mask = ~np.isfinite(values) if values.dtype.kind == "f" else None
            inputs[c] = pa.array(values, mask=mask)
    table = pa.table(
        {
            "at": at,
            "caller": pa.array(np.where(rng.random(n) < 0.5, "k-3f9a1c", "k-77b0e2"), pa.string()),
            "endpoint": pa.array(["/churn/score"] * n, pa.string()),
            "model": pa.array([MODEL] * n, pa.string()),
            "version": pa.array([VERSION] * n, pa.string()),
            "i": np.arange(n),
            "as_of": pa.array(["2025-09-01"] * n, pa.string()),
            "answer": pa.StructArray.from_arrays([pa.array(score), pa.array(score > 0.3)], names=["score", "decision"]),
            "inputs": pa.StructArray.from_arrays(list(inputs.values()), names=list(inputs)),
            "day": (at - start) // 86400,
        }
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    with duckdb.connect() as con:
        con.register("served", table)
        for d in range(WINDOW_DAYS):
            day = (WINDOW_START + dt.timedelta(days=d)).date().isoformat()
            path = log_dir / f"{day}.jsonl"
            con.execute(
                f'COPY (SELECT "at", caller, endpoint, model, version, substr(md5(i::VARCHAR), 1, 24) AS customer, '
                f"as_of, answer, inputs FROM served WHERE day = {d} ORDER BY \"at\") TO '{path}' (FORMAT JSON)"
            )
            counts[day] = int(con.execute(f"SELECT count(*) FROM served WHERE day = {d}").fetchone()[0])  # type: ignore[index]
    return counts


def _work_setup(p: dict[str, Any]) -> dict[str, Any]:
    """Write the reference, and per size the current window as an inference log and as Parquet (cached)."""
    import numpy as np

    t0 = time.perf_counter()
    root = Path(p["root"])
    root.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    ref_path = root / "reference.parquet"
    if not ref_path.is_file():
        emit("progress", step=f"reference: {REFERENCE_ROWS:,} rows")
        tmp = ref_path.with_suffix(".tmp")
        _frame(REFERENCE_ROWS, p["seed"], shifted=False).to_parquet(tmp, index=False)
        tmp.replace(ref_path)
        made.append("reference")
    sizes: dict[str, Any] = {}
    for n in p["sizes"]:
        folder = root / f"n{n}"
        done = folder / "done.json"
        if done.is_file():
            sizes[str(n)] = json.loads(done.read_text(encoding="utf-8"))
            continue
        shutil.rmtree(folder, ignore_errors=True)
        emit("progress", step=f"current window: {n:,} rows")
        current = _frame(n, p["seed"] + n, shifted=True)
        emit("progress", step=f"{n:,} rows -> inference log (JSON lines per day)")
        counts = _write_log(current, folder / "log", p["seed"] + n)
        # What the service logs and read_served gives back: infinities and NaN both become missing.
        numeric = current.select_dtypes("number").columns
        current[numeric] = current[numeric].replace([np.inf, -np.inf], np.nan)
        current.to_parquet(folder / "current.parquet", index=False)
        info = {
            "rows": n,
            "days": counts,
            "log_mib": sum(f.stat().st_size for f in (folder / "log").glob("*.jsonl")) / 2**20,
            "parquet_mib": (folder / "current.parquet").stat().st_size / 2**20,
        }
        done.write_text(json.dumps(info), encoding="utf-8")
        sizes[str(n)] = info
        made.append(str(n))
    return {"seconds": time.perf_counter() - t0, "made": made, "sizes": sizes}


# --------------------------------------------------------------------------- the contenders


def _verdicts(drift: Any) -> dict[str, dict[str, Any]]:
    return {c.column: {"method": c.method, "score": c.score, "drifted": c.drifted} for c in drift.columns}


def _work_ours(p: dict[str, Any]) -> dict[str, Any]:
    """Contender A: read the log, data quality, drift on every row, Evidently's page on samples."""
    import evidently.presets  # noqa: F401 - imported before the clock, as B's is
    import pandas as pd

    from monitoring import reports
    from monitoring.checks import data_quality, null_shares
    from monitoring.drift import column_kinds, dataset_drift
    from monitoring.policy import DataQualityPolicy
    from monitoring.served import read_served

    clock = Timed()
    stages: dict[str, float] = {}
    t = clock.start

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    emit("progress", step="reference")
    reference = pd.read_parquet(p["reference"])
    columns = list(reference.columns)
    lap("reference")
    emit("progress", step="read_served")
    start = dt.datetime.fromisoformat(p["start"])
    end = dt.datetime.fromisoformat(p["end"])
    answer = {
        reports.PREDICTION: "TRY_CAST(answer->>'score' AS DOUBLE)",
        "decision": "TRY_CAST(answer->>'decision' AS BOOLEAN)",
    }
    window = read_served(Path(p["log_dir"]), MODEL, start, end, {c: reference[c].dtype for c in columns}, answer)
    current = window.frame[window.frame["version"].astype(str) == VERSION].reset_index(drop=True)
    lap("read_served")
    emit("progress", step="data quality")
    findings, _ = data_quality(
        null_shares(reference, columns), current, window.absent_inputs, window.type_errors, DataQualityPolicy()
    )
    lap("quality")
    emit("progress", step="dataset_drift (every row)")
    kinds = column_kinds(reference, columns)
    drift = dataset_drift(reference, current, kinds, {}, DRIFT_SHARE)
    lap("drift")
    emit("progress", step=f"Evidently report ({p['report_rows']:,} rows per side) + save_html")
    snapshot = reports.evidently_drift(
        reports.sample_rows(reference, p["report_rows"]),
        reports.sample_rows(current, p["report_rows"]),
        kinds,
        {},
        DRIFT_SHARE,
        with_prediction=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        snapshot.save_html(str(Path(tmp) / "evidently.html"))
        html_mib = (Path(tmp) / "evidently.html").stat().st_size / 2**20
    lap("report")
    clock.end()
    return clock.result(
        stage_seconds=stages,
        rows=len(current),
        suppressed=window.suppressed,
        files=len(window.files),
        findings=[f.as_dict() for f in findings],
        type_errors={k: v for k, v in window.type_errors.items() if v},
        absent_inputs={k: v for k, v in window.absent_inputs.items() if v},
        nulls={c: int(n) for c, n in current[columns].isna().sum().items()},
        kinds=kinds,
        verdicts=_verdicts(drift),
        report_verdicts=reports.evidently_verdicts(snapshot),
        html_mib=html_mib,
    )


def _work_evidently(p: dict[str, Any]) -> dict[str, Any]:
    """Contender B: Evidently's DataDriftPreset on every row, from frames already in memory."""
    import signal

    import numpy as np
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from monitoring import reports
    from monitoring.drift import column_kinds

    signal.alarm(int(p["timeout"]))  # default action: the kernel ends the process, even inside C code
    reference = pd.read_parquet(p["reference"])
    current = pd.read_parquet(p["current"])
    columns = list(reference.columns)
    kinds = column_kinds(reference, columns)
    numeric = [c for c, k in kinds.items() if k == "num"]
    categorical = [c for c, k in kinds.items() if k == "cat"]
    for frame in (reference, current):  # as reports.evidently_drift does: infinities as missing
        frame[numeric] = frame[numeric].replace([np.inf, -np.inf], np.nan)
    emit("progress", step=f"DataDriftPreset on {len(current):,} rows")
    clock = Timed()
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    ref = Dataset.from_pandas(reference, data_definition=definition)
    cur = Dataset.from_pandas(current, data_definition=definition)
    convert = time.perf_counter() - clock.start
    snapshot = Report([DataDriftPreset(columns=columns)], include_tests=True).run(cur, ref)
    seconds = clock.end()
    signal.alarm(0)
    return clock.result(
        stage_seconds={"from_pandas": convert, "run": seconds - convert},
        rows=len(current),
        verdicts=reports.evidently_verdicts(snapshot),
        scores=reports.evidently_scores(snapshot),
    )


WORKERS = {"setup": _work_setup, "ours": _work_ours, "evidently": _work_evidently}


# --------------------------------------------------------------------------- parent side


def _root(args: argparse.Namespace) -> Path:
    """The setup cache of this generator and seed."""
    return args.work / f"{GENERATOR}-s{args.seed}"


def _compare(ours: dict[str, dict[str, Any]], verdicts: dict[str, bool], scores: dict[str, float]) -> dict[str, Any]:
    """A's all-row verdicts and statistics against Evidently's on the same rows."""
    differ = sorted(c for c in ours if verdicts.get(c) is not None and verdicts[c] != ours[c]["drifted"])
    only = sorted(set(ours) ^ set(verdicts))
    rel: dict[str, float] = {}
    for c, v in ours.items():
        if c in scores:
            a, b = float(v["score"]), float(scores[c])
            rel[c] = 0.0 if a == b else abs(a - b) / max(abs(b), 1e-300)
    worst = max(rel, key=lambda c: rel[c]) if rel else None
    return {
        "verdict_mismatches": len(differ) + len(only),
        "differ": differ,
        "only_one_side": only,
        "max_rel_diff": rel[worst] if worst else None,
        "max_rel_diff_column": worst,
        "compared": len(rel),
    }


def _m(mib: float | None) -> str:
    return "—" if mib is None else f"{mib:,.0f} MiB"


def _run_dict(run: Run) -> dict[str, Any]:
    return {
        "label": run.label,
        "seconds": run.seconds,
        "spawn_to_done_seconds": run.timed_wall_seconds,
        "process_wall_seconds": run.wall_seconds,
        "peak_mib": run.peak_mib,
        "vmhwm_mib": run.hwm_mib,
        "process_peak_mib": run.process_peak_mib,
        "rss_after_imports_mib": run.rss_after_imports_mib,
        "load_avg": run.load_avg,
        "stage_seconds": run.data.get("stage_seconds"),
    }


def _measure_size(session: Session, args: argparse.Namespace, n: int, info: dict[str, Any]) -> dict[str, Any]:
    """A, B, A for one size; then the comparison."""
    bench = session.bench
    root = _root(args)
    folder = root / f"n{n}"
    start = WINDOW_START
    end = start + dt.timedelta(days=WINDOW_DAYS)
    a_params = {
        "reference": str(root / "reference.parquet"),
        "log_dir": str(folder / "log"),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "report_rows": REPORT_ROWS,
    }
    b_params = {
        "reference": str(root / "reference.parquet"),
        "current": str(folder / "current.parquet"),
        "timeout": args.b_timeout,
    }
    b_error: str | None = None

    def ours(i: int) -> Run:
        return bench.child("ours", f"{n:,} rows · A ours #{i}", a_params)

    def evidently(_: int) -> Run | None:
        nonlocal b_error
        try:
            return bench.child("evidently", f"{n:,} rows · B Evidently DataDriftPreset", b_params)
        except BenchError as exc:  # B not finishing is a result (its target cannot be checked), not a crash
            timed_out = f"exit code {SIGALRM_EXIT}" in str(exc)
            b_error = f"did not finish in {args.b_timeout:,} s" if timed_out else str(exc)
            bench.console.log(f"[yellow]B at {n:,} rows: {escape(b_error.splitlines()[0])}")
            return None

    runs = sandwich(ours, evidently, close=args.a_runs > 1)  # A B A: A's figures bracket B's
    a_runs = [r for r in runs if r is not None and r.step == "ours"]
    b_run = next((r for r in runs if r is not None and r.step == "evidently"), None)
    a0 = a_runs[0]
    wall = [r.timed_wall_seconds or r.wall_seconds for r in a_runs]
    a_seconds = statistics.mean(r.seconds for r in a_runs)
    a_wall = statistics.mean(wall)
    stage_names = list(a0.data["stage_seconds"])
    stages = {k: statistics.mean(r.data["stage_seconds"][k] for r in a_runs) for k in stage_names}
    a_peak = max(r.peak_mib or 0.0 for r in a_runs)
    problems = []
    if any(r.data["rows"] != n for r in a_runs):
        problems.append(f"A read {[r.data['rows'] for r in a_runs]} rows, the log holds {n}")
    if a0.data["type_errors"] or a0.data["absent_inputs"]:
        problems.append(f"A found type errors / absent inputs: {a0.data['type_errors']} {a0.data['absent_inputs']}")
    if any(r.data["verdicts"] != a0.data["verdicts"] for r in a_runs[1:]):
        problems.append("A's two runs gave different verdicts")
    comparison = None
    if b_run is not None:
        comparison = _compare(a0.data["verdicts"], b_run.data["verdicts"], b_run.data["scores"])
        if b_run.data["rows"] != n:
            problems.append(f"B got {b_run.data['rows']} rows, expected {n}")
    report_vs_all = sum(
        1 for c, v in a0.data["verdicts"].items() if a0.data["report_verdicts"].get(c, v["drifted"]) != v["drifted"]
    )
    applies = n >= TARGET_ROWS
    mismatches = None if comparison is None else comparison["verdict_mismatches"]
    return {
        "rows": n,
        "log_mib": info.get("log_mib"),
        "a": {
            "runs": [_run_dict(r) for r in a_runs],
            "in_process_seconds": a_seconds,
            "spawn_to_done_seconds": a_wall,
            "stage_seconds": stages,
            "peak_mib": a_peak,
            "drifted": sorted(c for c, v in a0.data["verdicts"].items() if v["drifted"]),
            "methods_by_column": {c: v["method"] for c, v in a0.data["verdicts"].items()},
            "methods": {
                m: sum(v["method"] == m for v in a0.data["verdicts"].values())
                for m in sorted({v["method"] for v in a0.data["verdicts"].values()})
            },  # fmt: skip
            "findings": a0.data["findings"],
            "report_verdicts_differing_from_all_rows": report_vs_all,
            "html_mib": a0.data["html_mib"],
        },
        "b": None if b_run is None else _run_dict(b_run),
        "b_error": b_error,
        "speedup_in_process": None if b_run is None else b_run.seconds / a_seconds,
        "peak_ratio": None if b_run is None or not b_run.peak_mib else b_run.peak_mib / a_peak,
        "comparison": comparison,
        "problems": problems,
        "monitoring_changed_mid_run": len({r.code_digest for r in runs if r is not None}) > 1,
        "targets": [
            Target(
                f"{n:,} rows: A < {TARGET_SECONDS:.0f} s spawn to done",
                a_wall,
                TARGET_SECONDS,
                a_wall < TARGET_SECONDS,
                _s(a_wall),
                applies=applies,
                note=f"applies at {TARGET_ROWS:,} rows",
            ),
            Target(
                f"{n:,} rows: verdict mismatches = 0",
                mismatches,
                0,
                None if mismatches is None else mismatches == 0 and not problems,
                "—" if mismatches is None else str(mismatches),
            ),
        ],
    }


def _print(console: Console, results: list[dict[str, Any]]) -> None:
    t = Table(
        title="Monitoring a served window x 50 features (A: ours, end to end from the log; B: Evidently on frames)"
    )
    for col in ("rows", "A read", "A quality", "A drift", "A report", "A in process", "A spawn→done", "A peak RSS",
                "B (in memory)", "B peak RSS", "B / A", "RSS B / A", "mismatches", "max rel diff"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in results:
        a, b, cmp = r["a"], r["b"], r["comparison"]
        st = a["stage_seconds"]
        t.add_row(
            f"{r['rows']:,}",
            _s(st["read_served"] + st["reference"]),
            _s(st["quality"]),
            _s(st["drift"]),
            _s(st["report"]),
            _s(a["in_process_seconds"]),
            _s(a["spawn_to_done_seconds"]),
            _m(a["peak_mib"]),
            _s(b["seconds"]) if b else escape(r["b_error"] or "—")[:40],
            _m(b["peak_mib"]) if b else "—",
            f"{r['speedup_in_process']:.1f}×" if r["speedup_in_process"] else "—",
            f"{r['peak_ratio']:.2f}×" if r["peak_ratio"] else "—",
            "—" if cmp is None else str(cmp["verdict_mismatches"]),
            "—" if cmp is None or cmp["max_rel_diff"] is None else f"{cmp['max_rel_diff']:.1e}",
        )
    console.print(t)
    for r in results:
        a, cmp = r["a"], r["comparison"]
        runs = "; ".join(
            f"{x['label'].split('· ')[-1]} {_s(x['seconds'])} (load {x['load_avg'][0]:.1f})"
            for x in [*a["runs"], *([r["b"]] if r["b"] else [])]
        )
        console.print(f"[bold]{r['rows']:,} rows[/] ({r['log_mib']:,.0f} MiB of log): {runs}")
        if r["b"]:
            bs = r["b"]["stage_seconds"]
            console.print(f"  B: Dataset.from_pandas {_s(bs['from_pandas'])}, Report.run {_s(bs['run'])}")
        console.print(
            f"  drifted (A, all rows): {len(a['drifted'])} of {len(a['methods_by_column'])} {a['drifted']}; "
            f"tests {a['methods']}; "
            f"the {REPORT_ROWS:,}-row report's verdicts differ from the all-row ones on "
            f"{a['report_verdicts_differing_from_all_rows']}"
        )
        if cmp:
            console.print(
                f"  A vs B on the same rows: {cmp['verdict_mismatches']} verdicts differ {cmp['differ'] or ''}"
                f"{' only one side: ' + str(cmp['only_one_side']) if cmp['only_one_side'] else ''}; "
                f"statistics of {cmp['compared']} columns, max relative difference "
                f"{cmp['max_rel_diff']:.2e} ({cmp['max_rel_diff_column']})"
            )
        for problem in r["problems"]:
            console.print(f"  [bold red]problem:[/] {escape(problem)}")
        if r["monitoring_changed_mid_run"]:
            console.print("  [bold yellow]warning: monitoring/ changed while this size was measured[/]")
    console.print(
        "B is flattered: it gets the rows as frames already in memory (no log read, no JSON parse), and no "
        "HTML page is drawn; A reads and parses the log, checks data quality and draws Evidently's page."
    )
    for r in results:
        for target in r["targets"]:
            if target.applies:
                console.print(target.line())


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Monitoring time and peak memory of a served window x 50 features (read the inference log, "
        "data quality, drift on every row, Evidently's page on samples) against Evidently's DataDriftPreset "
        "on the same rows, each in its own process, with the verdicts compared.",
    )
    ap.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="served rows per window, comma-separated (default 100000,1000000)",
    )
    ap.add_argument("--quick", action="store_true", help="sizes 20000,100000: a fast check")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"setup cache (default {DEFAULT_WORK})")
    ap.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    ap.add_argument("--b-timeout", type=int, default=900, help="seconds before B is stopped (default 900)")
    ap.add_argument("--a-runs", type=int, choices=(1, 2), default=2, help="A runs per size: 2 = before and after B")
    args = ap.parse_args(argv)
    args.sizes = list(QUICK_SIZES) if args.quick else [int(s) for s in str(args.sizes).split(",") if s.strip()]
    args.work = args.work.expanduser().resolve()
    return args


def _run(session: Session) -> None:
    args, console, bench = session.args, session.console, session.bench
    results: list[dict[str, Any]] = []
    session.record.update(generator=GENERATOR, reference_rows=REFERENCE_ROWS, report_rows=REPORT_ROWS, results=results)
    console.log(f"setup cache {args.work}")
    setup = bench.child(
        "setup",
        "setup (untimed, cached): reference + served windows",
        {"root": str(_root(args)), "sizes": args.sizes, "seed": args.seed},
    )
    console.log(f"setup made {setup.data['made'] or 'nothing (cached)'}")
    try:
        for n in args.sizes:
            results.append(_measure_size(session, args, n, setup.data["sizes"][str(n)]))
            session.targets += results[-1]["targets"]
    finally:
        if results:
            _print(console, results)


SPEC = Spec(
    name="monitor",
    module=MODULE,
    workers=WORKERS,
    packages=("numpy", "pandas", "pyarrow", "duckdb", "scipy", "evidently", "custintel"),
    measured=("monitoring",),
    width=220,
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every target is met, 1 when one is missed, 2 when setup or a run fails."""
    return harness_main(SPEC, argv, _parse, _run)


if __name__ == "__main__":
    sys.exit(main())
