"""Benchmark: generate a synthetic world and ingest it, side by side with naive baselines.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_generate_ingest --customers 100000 1000000
    .venv/bin/python -m benchmarks.bench_generate_ingest --quick

Every measured step runs in its own child process (this module, called with
``_worker``), so the peak memory reported is that step's own: the peak RSS is
``ru_maxrss`` of that one child as returned by ``os.wait4`` (``RUSAGE_CHILDREN``
would be the maximum over every child so far). The child also reads its own
``VmHWM`` from ``/proc`` as a cross-check. The parent stays lean (no pandas,
pyarrow or duckdb) because Linux carries the parent's high-water mark into a
child's ``ru_maxrss`` at ``exec``.

The CPU clock of the benchmark machines moves between levels within seconds, so
each contender run is sandwiched between two baseline runs (B C B) and only the
ratios measured side by side in one run should be compared across machines.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from benchmarks.child import BenchError, Run, run_child
from benchmarks.child import emit as _emit
from benchmarks.child import status_mib as _status_mib
from benchmarks.machine import code_digest, machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = [100_000, 1_000_000]
QUICK_SIZES = [20_000]
TARGET_CUSTOMERS = 1_000_000
TARGET_SECONDS = 10 * 60
TARGET_PEAK_MIB = 8 * 1024
FAKER_CAP = 20_000
MIB = 1024 * 1024

Event = dict[str, Any]


# --------------------------------------------------------------------------- child side


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _work_generate(p: dict[str, Any]) -> dict[str, Any]:
    """Generate one world with `generate_world`; sizes and row counts of what it wrote."""
    from features.synthetic.config import WorldConfig
    from features.synthetic.sources import SOURCE_FILES
    from features.synthetic.world import TRUTH_DIR, generate_world

    out = Path(p["out"])
    knobs: dict[str, Any] = {"customers": p["customers"], "seed": p["seed"]}
    if p.get("chunk_size"):
        knobs["chunk_size"] = p["chunk_size"]
    cfg = WorldConfig(**knobs)
    rss0 = _status_mib("VmRSS")
    t0 = time.perf_counter()
    summary = generate_world(cfg, out, on_chunk=lambda done, total: _emit("progress", done=done, total=total))
    seconds = time.perf_counter() - t0
    files = {
        t: {"path": rel, "format": fmt, "sep": sep, "rows": summary.rows[t], "bytes": (out / rel).stat().st_size}
        for t, (rel, fmt, sep) in SOURCE_FILES.items()
    }
    return {
        "seconds": seconds,
        "rss_after_imports_mib": rss0,
        "chunk_size": cfg.chunk_size,
        "chunks": -(-cfg.customers // cfg.chunk_size),
        "files": files,
        "source_rows": sum(f["rows"] for f in files.values()),
        "source_bytes": sum(f["bytes"] for f in files.values()),
        "truth_rows": summary.truth_rows,
        "truth_bytes": _dir_bytes(out / TRUTH_DIR),
        "bytes_on_disk": _dir_bytes(out),
    }


def _work_ingest(p: dict[str, Any]) -> dict[str, Any]:
    """Ingest a drop with `ingest_drop` into a fresh home; counts per table."""
    from custintel.settings import Settings
    from features.lake import ingest_drop

    settings = Settings(home=Path(p["home"]))
    rss0 = _status_mib("VmRSS")
    t0 = time.perf_counter()
    report = ingest_drop(
        Path(p["drop"]), settings, progress=lambda table, read: _emit("progress", table=table, read=read)
    )
    seconds = time.perf_counter() - t0
    tables = {
        name: {
            "read": t.read,
            "accepted": t.accepted,
            "quarantined": t.quarantined,
            "skipped": t.skipped,
            "files": t.files,
        }
        for name, t in report.tables.items()
    }
    return {
        "seconds": seconds,
        "rss_after_imports_mib": rss0,
        "drop_id": report.drop_id,
        "tables": tables,
        "read": sum(t["read"] for t in tables.values()),
        "accepted": sum(t["accepted"] for t in tables.values()),
        "quarantined": sum(t["quarantined"] for t in tables.values()),
        "lake_bytes": _dir_bytes(settings.lake_dir),
        "quarantine_bytes": _dir_bytes(settings.quarantine_dir),
    }


def _work_bare_read(p: dict[str, Any]) -> dict[str, Any]:
    """Read every source file with pyarrow and no checks (CSV columns as strings); one file in memory at a time."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    drop = Path(p["drop"])
    files: list[list[str]] = p["files"]  # [table, relative path, format, separator]
    rss0 = _status_mib("VmRSS")
    t0 = time.perf_counter()
    rows: dict[str, int] = {}
    for i, (table, rel, fmt, sep) in enumerate(files):
        path = drop / rel
        if fmt == "csv":
            with open(path, newline="", encoding="utf-8") as f:
                names = next(csv.reader(f, delimiter=sep))
            data = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=sep),
                convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
            )
        else:
            data = pq.read_table(path)
        rows[table] = data.num_rows
        del data
        _emit("progress", done=i + 1, total=len(files))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_after_imports_mib": rss0, "tables": rows, "read": sum(rows.values())}


def _work_faker(p: dict[str, Any]) -> dict[str, Any]:
    """The tutorial approach: Faker, one CRM-account-like row at a time, a list of dicts, then a CSV."""
    import pandas as pd
    from faker import Faker

    n, out = int(p["rows"]), Path(p["out"])
    fake = Faker()
    fake.seed_instance(p["seed"])
    rss0 = _status_mib("VmRSS")
    t0 = time.perf_counter()
    rows = []
    for i in range(n):
        rows.append(
            {
                "customer_id": i,
                "name": fake.name(),
                "email": fake.email(),
                "phone": fake.phone_number(),
                "address": fake.address(),
                "date_of_birth": fake.date_of_birth(minimum_age=18, maximum_age=90),
            }
        )
        if (i + 1) % 1000 == 0 or i + 1 == n:
            _emit("progress", done=i + 1, total=n)
    pd.DataFrame(rows).to_csv(out, index=False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_after_imports_mib": rss0, "rows": n, "bytes": out.stat().st_size}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "generate": _work_generate,
    "ingest": _work_ingest,
    "bare_read": _work_bare_read,
    "faker": _work_faker,
}


def _worker_main(argv: list[str]) -> int:
    """Entry point of a child: run one step and print its result as the last JSON line."""
    step, params = argv[0], json.loads(argv[1])
    data = WORKERS[step](params)
    _emit("result", vmhwm_mib=_status_mib("VmHWM"), **data)
    return 0


# --------------------------------------------------------------------------- parent side


@dataclass
class SizeResult:
    """Everything measured for one number of customers."""

    customers: int
    runs: list[Run] = field(default_factory=list)
    comparisons: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    def of(self, step: str) -> list[Run]:
        """The runs of one step, in order."""
        return [r for r in self.runs if r.step == step]


class Bench:
    """Runs the steps of every size as child processes, with a rich progress display."""

    def __init__(self, args: argparse.Namespace, work: Path, console: Console) -> None:
        self.args = args
        self.work = work
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        steps_per_size = 2 * (2 * args.repeats + 1)
        self.overall = self.progress.add_task("[bold]all steps", total=steps_per_size * len(args.customers))

    def child(
        self, step: str, label: str, params: dict[str, Any], on_event: Callable[[Event, TaskID], None], customers: int
    ) -> Run:
        """Run one step in a child process; wall time and peak RSS are that child's alone."""
        task = self.progress.add_task(f"{customers:,} · {label}", total=None)
        try:
            run = run_child("benchmarks.bench_generate_ingest", step, f"{label} ({customers:,} customers)", params,
                            lambda e: on_event(e, task))  # fmt: skip
        finally:
            self.progress.remove_task(task)
        run.label = label
        wall = run.wall_seconds
        self.progress.advance(self.overall)
        peak = run.process_peak_mib
        self.console.log(f"{customers:,} · {label}: {run.seconds:,.1f} s (process {wall:,.1f} s), peak {peak:,.0f} MiB")
        return run

    def _steps(self, event: Event, task: TaskID) -> None:
        self.progress.update(task, total=event["total"], completed=event["done"])

    def size(self, customers: int) -> SizeResult:
        """All runs for one size: Faker / generate / Faker ..., then bare read / ingest / bare read ..."""
        res = SizeResult(customers)
        base = self.work / f"n{customers}"
        drop = base / "drop"
        base.mkdir(parents=True, exist_ok=True)
        steps = self._steps
        faker_rows = min(customers, self.args.faker_cap)
        k = self.args.repeats
        try:
            for i in range(k + 1):
                res.runs.append(
                    self.child(
                        "faker",
                        f"naive Faker #{i + 1} ({faker_rows:,} rows)",
                        {"rows": faker_rows, "seed": self.args.seed, "out": str(base / f"faker-{i + 1}.csv")},
                        steps,
                        customers,
                    )
                )
                (base / f"faker-{i + 1}.csv").unlink(missing_ok=True)
                if i < k:
                    shutil.rmtree(drop, ignore_errors=True)
                    res.runs.append(
                        self.child(
                            "generate",
                            f"generate #{i + 1}" if k > 1 else "generate",
                            {
                                "customers": customers,
                                "seed": self.args.seed,
                                "out": str(drop),
                                "chunk_size": self.args.chunk_size,
                            },
                            steps,
                            customers,
                        )
                    )
            gen = res.of("generate")[-1].data
            files = [[t, f["path"], f["format"], f["sep"]] for t, f in gen["files"].items()]
            total_rows = gen["source_rows"]
            read_so_far: dict[str, int] = {}

            def ingest_progress(e: Event, task: TaskID) -> None:
                read_so_far[e["table"]] = e["read"]
                self.progress.update(
                    task,
                    total=total_rows,
                    completed=sum(read_so_far.values()),
                    description=f"{customers:,} · ingest · {e['table']}",
                )

            for i in range(k + 1):
                res.runs.append(
                    self.child(
                        "bare_read", f"bare read #{i + 1}", {"drop": str(drop), "files": files}, steps, customers
                    )
                )
                if i < k:
                    home = base / f"home-{i + 1}"
                    read_so_far.clear()
                    res.runs.append(
                        self.child(
                            "ingest",
                            f"ingest #{i + 1}" if k > 1 else "ingest",
                            {"drop": str(drop), "home": str(home)},
                            ingest_progress,
                            customers,
                        )
                    )
                    if i < k - 1 or not self.args.keep:
                        shutil.rmtree(home, ignore_errors=True)
        except BenchError as exc:
            res.error = str(exc)
            res.problems.append(f"a step failed: {str(exc).splitlines()[0]}")
            return res
        finally:
            if not self.args.keep:
                shutil.rmtree(base, ignore_errors=True)
        _analyse(res)
        return res


# --------------------------------------------------------------------------- analysis


def _pairs(runs: list[Run]) -> list[tuple[Run, Run, Run]]:
    """(baseline before, contender, baseline after) triples of an alternating B C B C B sequence."""
    return [(runs[i - 1], runs[i], runs[i + 1]) for i in range(1, len(runs) - 1, 2)]


def _sequence(res: SizeResult, contender: str, baseline: str) -> list[Run]:
    return [r for r in res.runs if r.step in (contender, baseline)]


def _analyse(res: SizeResult) -> None:
    """Ratios side by side, count reconciliation, and the 1M targets."""
    gens = res.of("generate")
    gen_ratios, faker_extrapolated = [], []
    for before, gen, after in _pairs(_sequence(res, "generate", "faker")):
        per_row = statistics.mean(b.seconds / b.data["rows"] for b in (before, after))
        extrapolated = per_row * gen.data["source_rows"]
        faker_extrapolated.append(extrapolated)
        gen_ratios.append(gen.seconds / extrapolated)
    ingest_ratios, mem_ratios, bare_times, bare_peaks = [], [], [], []
    for before, ing, after in _pairs(_sequence(res, "ingest", "bare_read")):
        bare_t = statistics.mean(b.seconds for b in (before, after))
        bare_m = statistics.mean(b.process_peak_mib for b in (before, after))
        bare_times.append(bare_t)
        bare_peaks.append(bare_m)
        ingest_ratios.append(ing.seconds / bare_t)
        mem_ratios.append(ing.process_peak_mib / bare_m)
    fakers = res.of("faker")
    res.comparisons = {
        "generate_vs_naive_faker": {
            "generate_seconds": statistics.mean(g.seconds for g in gens),
            "faker_sample_rows": fakers[0].data["rows"],
            "faker_sample_seconds": [f.seconds for f in fakers],
            "faker_rows_per_second": statistics.mean(f.data["rows"] / f.seconds for f in fakers),
            "faker_extrapolated_seconds": statistics.mean(faker_extrapolated),
            "extrapolated_to_rows": gens[-1].data["source_rows"],
            "time_ratio": statistics.median(gen_ratios),
            "time_ratio_per_pair": gen_ratios,
            "note": "baseline timed on a capped sample and extrapolated linearly to the rows generate wrote; "
            "its rows have 5 Faker fields, generate's rows are the full multi-source schema",
        },
        "ingest_vs_bare_read": {
            "ingest_seconds": statistics.mean(r.seconds for r in res.of("ingest")),
            "bare_read_seconds": statistics.mean(bare_times),
            "time_ratio": statistics.median(ingest_ratios),
            "time_ratio_per_pair": ingest_ratios,
            "ingest_peak_mib": max(r.process_peak_mib for r in res.of("ingest")),
            "bare_read_peak_mib": statistics.mean(bare_peaks),
            "memory_ratio": statistics.median(mem_ratios),
            "memory_ratio_per_pair": mem_ratios,
        },
    }
    _reconcile(res)
    gen_wall = max(g.wall_seconds for g in gens)
    gen_peak = max(g.process_peak_mib for g in gens)
    if res.customers == TARGET_CUSTOMERS:
        res.targets = {
            "generate_seconds": {"value": gen_wall, "limit": TARGET_SECONDS, "pass": gen_wall < TARGET_SECONDS},
            "generate_peak_mib": {"value": gen_peak, "limit": TARGET_PEAK_MIB, "pass": gen_peak < TARGET_PEAK_MIB},
        }
    else:
        res.targets = {
            "projected_generate_seconds_at_1m": gen_wall * TARGET_CUSTOMERS / res.customers,
            "note": "linear projection of the process wall time, informational only",
        }
    measured = {r.step: r.code_digest for r in res.runs if r.step in ("generate", "ingest")}
    if len(set(measured.values())) > 1:
        res.problems.append(
            f"warning: features/ changed between generate (code {measured['generate']}) "
            f"and ingest (code {measured['ingest']})"
        )
    for r in res.runs:
        if r.hwm_mib is not None and abs(r.process_peak_mib - r.hwm_mib) > max(0.05 * r.hwm_mib, 16):
            res.problems.append(
                f"warning: {r.label}: ru_maxrss {r.process_peak_mib:.0f} MiB differs from the child's own "
                f"VmHWM {r.hwm_mib:.0f} MiB"
            )


def _reconcile(res: SizeResult) -> None:
    """Read == accepted + quarantined per table; every row written is read, by ingest and by the bare read."""
    written = {t: f["rows"] for t, f in res.of("generate")[-1].data["files"].items()}
    for ing in res.of("ingest"):
        for t, c in ing.data["tables"].items():
            if c["read"] != c["accepted"] + c["quarantined"]:
                res.problems.append(
                    f"{ing.label}: {t}: read {c['read']:,} != accepted {c['accepted']:,} "
                    f"+ quarantined {c['quarantined']:,}"
                )
            if t in written and c["read"] != written[t]:
                res.problems.append(f"{ing.label}: {t}: read {c['read']:,} rows, generate wrote {written[t]:,}")
        for t in written:
            if t not in ing.data["tables"]:
                res.problems.append(f"{ing.label}: {t} was written but has no contract / was not ingested")
    for bare in res.of("bare_read"):
        for t, n in bare.data["tables"].items():
            if n != written[t]:
                res.problems.append(f"{bare.label}: {t}: read {n:,} rows, generate wrote {written[t]:,}")


def _failed(res: SizeResult) -> bool:
    targets_fail = any(isinstance(v, dict) and not v.get("pass", True) for v in res.targets.values())
    return res.error is not None or targets_fail or any(not p.startswith("warning") for p in res.problems)


# --------------------------------------------------------------------------- output


def _s(seconds: float) -> str:
    text = f"{seconds:,.1f} s"
    return text + f" ({int(seconds // 60)}m{int(seconds % 60):02d}s)" if seconds >= 60 else text


def _ratio(r: float, smaller: str = "faster") -> str:
    return f"{r:.3f}× ({1 / r:,.1f}× {smaller})" if r < 1 else f"{r:.2f}×"


def _verdict(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]FAIL[/]"


def _run_detail(r: Run) -> tuple[str, str, str]:
    """(rows, rows/s, detail) for a run."""
    d = r.data
    if r.step == "generate":
        rows = d["source_rows"]
        detail = (
            f"{d['chunks']} chunk(s), chunk_size {d['chunk_size']:,}; sources {d['source_bytes'] / MIB:,.0f} MiB, "
            f"truth {sum(d['truth_rows'].values()):,} rows / {d['truth_bytes'] / MIB:,.0f} MiB, "
            f"on disk {d['bytes_on_disk'] / MIB:,.0f} MiB"
        )
    elif r.step == "ingest":
        rows = d["read"]
        detail = (
            f"read {d['read']:,} = accepted {d['accepted']:,} + quarantined {d['quarantined']:,}; "
            f"lake {d['lake_bytes'] / MIB:,.0f} MiB, quarantine {d['quarantine_bytes'] / MIB:,.0f} MiB"
        )
    elif r.step == "bare_read":
        rows = d["read"]
        detail = f"{len(d['tables'])} files, pyarrow, no checks, CSV as strings"
    else:
        rows = d["rows"]
        detail = "5 Faker fields per row, row by row, list of dicts, then CSV"
    return f"{rows:,}", f"{rows / r.seconds:,.0f}", detail


def _print_size(console: Console, res: SizeResult) -> None:
    """The runs, the side-by-side ratios, the per-table counts and the targets of one size."""
    console.rule(f"[bold]{res.customers:,} customers")
    runs = Table(title=f"Runs, {res.customers:,} customers (in the order they ran)", show_lines=False)
    for col, just in (
        ("run", "left"),
        ("step time", "right"),
        ("process wall", "right"),
        ("peak RSS MiB", "right"),
        ("after imports", "right"),
        ("rows", "right"),
        ("rows/s", "right"),
        ("detail", "left"),
    ):
        runs.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in res.runs:
        rows, rate, detail = _run_detail(r)
        base = "—" if r.rss_after_imports_mib is None else f"{r.rss_after_imports_mib:,.0f}"
        runs.add_row(r.label, _s(r.seconds), _s(r.wall_seconds), f"{r.process_peak_mib:,.0f}", base, rows, rate, detail)
    console.print(runs)
    if res.error:
        console.print(f"[bold red]{escape(res.error)}")
        return
    g, i = res.comparisons["generate_vs_naive_faker"], res.comparisons["ingest_vs_bare_read"]
    cmp = Table(title="Side by side (ratio = contender / baseline; < 1 means the contender is faster or smaller)")
    for col in ("comparison", "contender", "baseline", "ratio", "note"):
        cmp.add_column(col)
    cmp.add_row(
        "generate vs naive Faker, time",
        _s(g["generate_seconds"]),
        f"{_s(g['faker_extrapolated_seconds'])} [bold yellow]EXTRAPOLATED[/]",
        _ratio(g["time_ratio"]),
        f"Faker timed on {g['faker_sample_rows']:,} rows ({g['faker_rows_per_second']:,.0f} rows/s), "
        f"extrapolated linearly to the {g['extrapolated_to_rows']:,} rows generate wrote",
    )
    cmp.add_row(
        "ingest vs bare read, time",
        _s(i["ingest_seconds"]),
        _s(i["bare_read_seconds"]),
        _ratio(i["time_ratio"]),
        "bare read = mean of the runs before and after",
    )
    cmp.add_row(
        "ingest vs bare read, peak RSS",
        f"{i['ingest_peak_mib']:,.0f} MiB",
        f"{i['bare_read_peak_mib']:,.0f} MiB",
        _ratio(i["memory_ratio"], "smaller"),
        "bare read holds one whole file at a time; ingest streams batches",
    )
    console.print(cmp)
    ing, bare = res.of("ingest")[-1].data["tables"], res.of("bare_read")[-1].data["tables"]
    written = {t: f["rows"] for t, f in res.of("generate")[-1].data["files"].items()}
    counts = Table(title="Rows per table (generate wrote / bare read / ingest read = accepted + quarantined)")
    for col in ("table", "written", "bare read", "ingest read", "accepted", "quarantined", "reconciles"):
        counts.add_column(col, justify="left" if col == "table" else "right")
    for t, c in ing.items():
        ok = c["read"] == c["accepted"] + c["quarantined"] and c["read"] == written.get(t, c["read"])
        counts.add_row(
            t,
            f"{written.get(t, 0):,}",
            f"{bare.get(t, 0):,}",
            f"{c['read']:,}",
            f"{c['accepted']:,}",
            f"{c['quarantined']:,}",
            "[green]yes[/]" if ok else "[red]NO[/]",
        )
    console.print(counts)
    if res.customers == TARGET_CUSTOMERS:
        t = res.targets
        console.print(
            f"Target generate 1M < {TARGET_SECONDS / 60:.0f} min on {os.cpu_count()} cores: "
            f"{_s(t['generate_seconds']['value'])} (process wall) → {_verdict(t['generate_seconds']['pass'])}"
        )
        console.print(
            f"Target generate 1M peak RSS < {TARGET_PEAK_MIB / 1024:.0f} GiB: "
            f"{t['generate_peak_mib']['value']:,.0f} MiB → {_verdict(t['generate_peak_mib']['pass'])}"
        )
    else:
        console.print(
            f"Projection to 1M customers (linear, informational; not a target check): generate ≈ "
            f"{_s(res.targets['projected_generate_seconds_at_1m'])} (limit {_s(TARGET_SECONDS)})"
        )
    for p in res.problems:
        console.print(f"[{'yellow' if p.startswith('warning') else 'bold red'}]{escape(p)}")


def _print_summary(console: Console, results: list[SizeResult], out: Path) -> None:
    console.rule("[bold]Summary")
    t = Table(title="generate + ingest (ratios measured side by side in this run)")
    for col in (
        "customers",
        "generate",
        "gen peak MiB",
        "gen / Faker (extrap.)",
        "ingest",
        "ingest peak MiB",
        "ingest / bare read (time)",
        "(memory)",
        "counts",
        "1M targets",
    ):
        t.add_column(col, justify="right")
    for r in results:
        if r.error:
            t.add_row(f"{r.customers:,}", *["—"] * 7, "[red]step failed[/]", "[red]FAIL[/]")
            continue
        gen, ing = r.of("generate")[-1], r.of("ingest")[-1]
        c = r.comparisons
        counts_ok = not any(not p.startswith("warning") for p in r.problems)
        if r.customers == TARGET_CUSTOMERS:
            verdict = _verdict(all(v["pass"] for v in r.targets.values()))
        else:
            verdict = f"n/a (≈{r.targets['projected_generate_seconds_at_1m'] / 60:,.1f} min projected)"
        t.add_row(
            f"{r.customers:,}",
            _s(gen.wall_seconds),
            f"{gen.process_peak_mib:,.0f}",
            f"{c['generate_vs_naive_faker']['time_ratio']:.3f}",
            _s(ing.wall_seconds),
            f"{ing.process_peak_mib:,.0f}",
            f"{c['ingest_vs_bare_read']['time_ratio']:.2f}",
            f"{c['ingest_vs_bare_read']['memory_ratio']:.2f}",
            "[green]reconcile[/]" if counts_ok else "[red]MISMATCH[/]",
            verdict,
        )
    console.print(t)
    console.print(
        "generate / ingest columns are process wall times (interpreter start and imports included); "
        "ratios use the step time measured inside each child. Peak RSS = ru_maxrss of that child."
    )
    console.print(f"Results written to [bold]{out}[/]")


# --------------------------------------------------------------------------- main


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_generate_ingest",
        description="Time and peak memory of generate_world and ingest_drop, each in its "
        "own process, side by side with naive baselines.",
    )
    ap.add_argument(
        "--customers",
        type=int,
        nargs="+",
        default=DEFAULT_SIZES,
        metavar="N",
        help=f"world sizes to measure (default: {' '.join(map(str, DEFAULT_SIZES))})",
    )
    ap.add_argument("--quick", action="store_true", help=f"measure {QUICK_SIZES[0]:,} customers only")
    ap.add_argument("--out", type=Path, default=None, help="working folder (default: a temp dir under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated drops and lakes")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--chunk-size", type=int, default=None, help="WorldConfig.chunk_size (default: its default)")
    ap.add_argument("--faker-cap", type=int, default=FAKER_CAP, help="rows the naive Faker baseline generates")
    ap.add_argument("--repeats", type=int, default=1, help="contender runs per size, each between two baselines")
    args = ap.parse_args(argv)
    if args.quick:
        args.customers = QUICK_SIZES
    if args.repeats < 1 or args.faker_cap < 1 or min(args.customers) < 10:
        ap.error("--repeats and --faker-cap must be >= 1 and every size >= 10")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every count reconciles and every target passes."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return _worker_main(argv[1:])
    args = _parse(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    started = dt.datetime.now()
    made_work = args.out is None
    work = Path(tempfile.mkdtemp(prefix="bench-generate-ingest-", dir="/tmp")) if made_work else args.out
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"Working folder: {work}{' (kept)' if args.keep else ' (removed at the end)'}")
    machine = machine_info(("numpy", "pandas", "pyarrow", "duckdb", "faker", "custintel"))
    digest_start = code_digest()
    results: list[SizeResult] = []
    bench = Bench(args, work, console)
    try:
        with bench.progress:
            for n in args.customers:
                res = bench.size(n)
                results.append(res)
                _print_size(console, res)
    finally:
        if made_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ok = not any(_failed(r) for r in results)
    digest_end = code_digest()
    if digest_end != digest_start:
        console.print(
            "[bold yellow]warning: features/ changed while the benchmark ran; "
            "the sizes may have measured different code[/]"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"generate_ingest-{started:%Y%m%d-%H%M%S}.json"
    payload = {
        "benchmark": "generate_ingest",
        "command": [Path(sys.executable).name, "-m", "benchmarks.bench_generate_ingest", *argv],
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now().isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
        "parent_vmhwm_mib": _status_mib("VmHWM"),
        "targets": {
            "customers": TARGET_CUSTOMERS,
            "generate_seconds": TARGET_SECONDS,
            "generate_peak_mib": TARGET_PEAK_MIB,
        },
        "code_digest": {"start": digest_start, "end": digest_end},
        "ok": ok,
        "sizes": [asdict(r) for r in results],
    }
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    _print_summary(console, results, out)
    console.print(
        "[bold green]OK[/]"
        if ok
        else "[bold red]FAILED: a target failed, a count does not reconcile or a step crashed[/]"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
