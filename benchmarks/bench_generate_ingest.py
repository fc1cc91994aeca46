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
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks import harness
from benchmarks.harness import BenchError, Run, Session, Spec, Target, Timed, emit
from benchmarks.harness import seconds_text as _s

DEFAULT_SIZES = [100_000, 1_000_000]
QUICK_SIZES = [20_000]
TARGET_CUSTOMERS = 1_000_000
TARGET_SECONDS = 10 * 60
TARGET_PEAK_MIB = 8 * 1024
FAKER_CAP = 20_000
MIB = 1024 * 1024


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
    clock = Timed()
    summary = generate_world(cfg, out, on_chunk=lambda done, total: emit("progress", done=done, total=total))
    clock.end()
    files = {
        t: {"path": rel, "format": fmt, "sep": sep, "rows": summary.rows[t], "bytes": (out / rel).stat().st_size}
        for t, (rel, fmt, sep) in SOURCE_FILES.items()
    }
    return clock.result(
        chunk_size=cfg.chunk_size,
        chunks=-(-cfg.customers // cfg.chunk_size),
        files=files,
        source_rows=sum(f["rows"] for f in files.values()),
        source_bytes=sum(f["bytes"] for f in files.values()),
        truth_rows=summary.truth_rows,
        truth_bytes=_dir_bytes(out / TRUTH_DIR),
        bytes_on_disk=_dir_bytes(out),
    )


def _work_ingest(p: dict[str, Any]) -> dict[str, Any]:
    """Ingest a drop with `ingest_drop` into a fresh home; counts per table."""
    from custintel.settings import Settings
    from features.lake import ingest_drop

    settings = Settings(home=Path(p["home"]))
    read_so_far: dict[str, int] = {}

    def progress(table: str, read: int) -> None:
        read_so_far[table] = read
        emit("progress", step=table, done=sum(read_so_far.values()), total=p["total_rows"])

    clock = Timed()
    report = ingest_drop(Path(p["drop"]), settings, progress=progress)
    clock.end()
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
    return clock.result(
        drop_id=report.drop_id,
        tables=tables,
        read=sum(t["read"] for t in tables.values()),
        accepted=sum(t["accepted"] for t in tables.values()),
        quarantined=sum(t["quarantined"] for t in tables.values()),
        lake_bytes=_dir_bytes(settings.lake_dir),
        quarantine_bytes=_dir_bytes(settings.quarantine_dir),
    )


def _work_bare_read(p: dict[str, Any]) -> dict[str, Any]:
    """Read every source file with pyarrow and no checks (CSV columns as strings); one file in memory at a time."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    drop = Path(p["drop"])
    files: list[list[str]] = p["files"]  # [table, relative path, format, separator]
    clock = Timed()
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
        emit("progress", done=i + 1, total=len(files))
    clock.end()
    return clock.result(tables=rows, read=sum(rows.values()))


def _work_faker(p: dict[str, Any]) -> dict[str, Any]:
    """The tutorial approach: Faker, one CRM-account-like row at a time, a list of dicts, then a CSV."""
    import pandas as pd
    from faker import Faker

    n, out = int(p["rows"]), Path(p["out"])
    fake = Faker()
    fake.seed_instance(p["seed"])
    clock = Timed()
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
            emit("progress", done=i + 1, total=n)
    pd.DataFrame(rows).to_csv(out, index=False)
    clock.end()
    return clock.result(rows=n, bytes=out.stat().st_size)


WORKERS = {
    "generate": _work_generate,
    "ingest": _work_ingest,
    "bare_read": _work_bare_read,
    "faker": _work_faker,
}


# --------------------------------------------------------------------------- parent side


@dataclass
class SizeResult:
    """Everything measured for one number of customers."""

    customers: int
    runs: list[Run] = field(default_factory=list)
    comparisons: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    projected_generate_seconds_at_1m: float | None = None  # other sizes: informational only
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    def of(self, step: str) -> list[Run]:
        """The runs of one step, in order."""
        return [r for r in self.runs if r.step == step]


def _measure_size(session: Session, args: argparse.Namespace, work: Path, customers: int) -> SizeResult:
    """All runs for one size: Faker / generate / Faker ..., then bare read / ingest / bare read ..."""
    bench, scope = session.bench, f"{customers:,} customers"
    res = SizeResult(customers)
    base = work / f"n{customers}"
    drop = base / "drop"
    base.mkdir(parents=True, exist_ok=True)
    faker_rows = min(customers, args.faker_cap)
    k = args.repeats

    def faker(i: int) -> Run:
        out = base / f"faker-{i}.csv"
        params = {"rows": faker_rows, "seed": args.seed, "out": str(out)}
        run = bench.child("faker", f"naive Faker #{i} ({faker_rows:,} rows)", params, scope)
        out.unlink(missing_ok=True)
        return run

    def generate(i: int) -> Run:
        shutil.rmtree(drop, ignore_errors=True)
        params = {"customers": customers, "seed": args.seed, "out": str(drop), "chunk_size": args.chunk_size}
        return bench.child("generate", f"generate #{i}" if k > 1 else "generate", params, scope)

    def bare_read(i: int) -> Run:
        return bench.child("bare_read", f"bare read #{i}", {"drop": str(drop), "files": files}, scope)

    def ingest(i: int) -> Run:
        home = base / f"home-{i}"
        params = {"drop": str(drop), "home": str(home), "total_rows": total_rows}
        try:
            return bench.child("ingest", f"ingest #{i}" if k > 1 else "ingest", params, scope)
        finally:
            if i < k or not args.keep:
                shutil.rmtree(home, ignore_errors=True)

    try:
        res.runs += harness.sandwich(faker, generate, k)
        gen = res.of("generate")[-1].data
        files = [[t, f["path"], f["format"], f["sep"]] for t, f in gen["files"].items()]
        total_rows = gen["source_rows"]
        res.runs += harness.sandwich(bare_read, ingest, k)
    except BenchError as exc:
        res.error = str(exc)
        session.fail(str(exc))
        return res
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    _analyse(res)
    session.problems += res.problems
    return res


# --------------------------------------------------------------------------- analysis


def _sequence(res: SizeResult, contender: str, baseline: str) -> list[Run]:
    return [r for r in res.runs if r.step in (contender, baseline)]


def _analyse(res: SizeResult) -> None:
    """Ratios side by side, count reconciliation, and the 1M targets."""
    gens = res.of("generate")
    gen_ratios, faker_extrapolated = [], []
    for before, gen, after in harness.triples(_sequence(res, "generate", "faker")):
        per_row = statistics.mean(b.seconds / b.data["rows"] for b in (before, after))
        extrapolated = per_row * gen.data["source_rows"]
        faker_extrapolated.append(extrapolated)
        gen_ratios.append(gen.seconds / extrapolated)
    ingest_ratios, mem_ratios, bare_times, bare_peaks = [], [], [], []
    for before, ing, after in harness.triples(_sequence(res, "ingest", "bare_read")):
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
        res.targets = [
            Target(
                f"generate 1M < {TARGET_SECONDS / 60:.0f} min on {os.cpu_count()} cores",
                gen_wall, TARGET_SECONDS, gen_wall < TARGET_SECONDS, f"{_s(gen_wall)} (process wall)",
            ),
            Target(
                f"generate 1M peak RSS < {TARGET_PEAK_MIB / 1024:.0f} GiB",
                gen_peak, TARGET_PEAK_MIB, gen_peak < TARGET_PEAK_MIB, f"{gen_peak:,.0f} MiB",
            ),
        ]  # fmt: skip
    else:
        # A linear projection of the process wall time, informational only.
        res.projected_generate_seconds_at_1m = gen_wall * TARGET_CUSTOMERS / res.customers


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


# --------------------------------------------------------------------------- output


def _ratio(r: float, smaller: str = "faster") -> str:
    return f"{r:.3f}× ({1 / r:,.1f}× {smaller})" if r < 1 else f"{r:.2f}×"


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
    columns = [(name, lambda r, i=i: _run_detail(r)[i]) for i, name in enumerate(("rows", "rows/s", "detail"))]
    title = f"Runs, {res.customers:,} customers (in the order they ran)"
    console.print(harness.runs_table(title, res.runs, columns, process_peak=True))
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
    for target in res.targets:
        console.print(target.line())
    if res.projected_generate_seconds_at_1m is not None:
        console.print(
            f"Projection to 1M customers (linear, informational; not a target check): generate ≈ "
            f"{_s(res.projected_generate_seconds_at_1m)} (limit {_s(TARGET_SECONDS)})"
        )
    for p in res.problems:
        console.print(f"[bold red]{escape(p)}")


def _print_summary(console: Console, results: list[SizeResult]) -> None:
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
        if r.projected_generate_seconds_at_1m is None:
            met = harness.verdict(all(t.passed for t in r.targets))
        else:
            met = f"n/a (≈{r.projected_generate_seconds_at_1m / 60:,.1f} min projected)"
        t.add_row(
            f"{r.customers:,}",
            _s(gen.wall_seconds),
            f"{gen.process_peak_mib:,.0f}",
            f"{c['generate_vs_naive_faker']['time_ratio']:.3f}",
            _s(ing.wall_seconds),
            f"{ing.process_peak_mib:,.0f}",
            f"{c['ingest_vs_bare_read']['time_ratio']:.2f}",
            f"{c['ingest_vs_bare_read']['memory_ratio']:.2f}",
            "[green]reconcile[/]" if not r.problems else "[red]MISMATCH[/]",
            met,
        )
    console.print(t)
    console.print(
        "generate / ingest columns are process wall times (interpreter start and imports included); "
        "ratios use the step time measured inside each child. Peak RSS = ru_maxrss of that child."
    )


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


def _run(session: Session) -> None:
    args = session.args
    made_work = args.out is None
    work = Path(tempfile.mkdtemp(prefix="bench-generate-ingest-", dir="/tmp")) if made_work else args.out
    work.mkdir(parents=True, exist_ok=True)
    session.console.print(f"Working folder: {work}{' (kept)' if args.keep else ' (removed at the end)'}")
    session.bench.plan(2 * (2 * args.repeats + 1) * len(args.customers))
    results: list[SizeResult] = []
    session.record.update(
        targets={
            "customers": TARGET_CUSTOMERS,
            "generate_seconds": TARGET_SECONDS,
            "generate_peak_mib": TARGET_PEAK_MIB,
        },
        sizes=results,
    )
    try:
        for n in args.customers:
            res = _measure_size(session, args, work, n)
            results.append(res)
            session.targets += res.targets
            _print_size(session.console, res)
    finally:
        if made_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    _print_summary(session.console, results)


SPEC = Spec(
    name="generate_ingest",
    module="benchmarks.bench_generate_ingest",
    workers=WORKERS,
    packages=("numpy", "pandas", "pyarrow", "duckdb", "faker", "custintel"),
    width=160,
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every count reconciles and every target passes."""
    return harness.main(SPEC, argv, _parse, _run)


if __name__ == "__main__":
    sys.exit(main())
