"""The one harness every benchmark runs on: child processes, alternating runs, the main() preamble, targets.

Child side (a step runs in ``python -m benchmarks.bench_x _worker STEP PARAMS``): a step is a function of
a JSON params dict that returns a dict. It reports progress as JSON lines on stdout (`emit`), marks its
timed section with `Timed` (the parent stamps the wall clock when the section ends, the child snapshots
its peak RSS there), and `worker_main` prints its result as the last line.

Parent side: `Bench.child` runs one step in its own process and returns a `Run`: the step's own time,
spawn-to-exit and spawn-to-end-of-section walls, the child's peak RSS from `os.wait4` (not
``RUSAGE_CHILDREN``, the maximum over every child so far) cross-checked with the child's ``VmHWM``, the
load average and the digest of the measured code when it started. `sandwich` and `in_turn` alternate
baselines and contenders: this machine's CPU clock moves between levels within seconds, so only runs
measured side by side compare. `main` is every benchmark's entry point: worker dispatch, the console, the
machine (`machine_info`, with `python_speed` at the start and the end), the results file
``benchmarks/results/<name>-<time>.json``, a warning when the measured code changed mid-run, and the exit
code from the `Target`s, printed PASS/FAIL: 0 every target met, 1 a target missed (or a check failed),
2 the benchmark could not measure (setup or a child failed, or it was interrupted).

The parent imports nothing heavy (rich, and psutil for the machine): Linux carries the parent's
high-water mark into a child's ``ru_maxrss`` at exec, so a heavy parent would inflate every child's peak.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

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

from benchmarks.machine import ROOT, code_digest, machine_info, python_speed

RESULTS_DIR = ROOT / "benchmarks" / "results"
EXIT_MET, EXIT_MISSED, EXIT_FAILED = 0, 1, 2
# ru_maxrss and VmHWM read at the same moment should agree; more than this apart is worth a warning.
RSS_TOLERANCE_SHARE, RSS_TOLERANCE_MIB = 0.05, 16.0

Worker = Callable[[dict[str, Any]], dict[str, Any]]
T = TypeVar("T")
U = TypeVar("U")


class BenchError(RuntimeError):
    """The benchmark cannot measure: a child step or the setup failed (the message says which and why)."""


# --------------------------------------------------------------------------- child side


def emit(event: str, **data: Any) -> None:
    """One JSON line on stdout for the parent: progress (`step`, optionally `done`/`total`) or the result."""
    print(json.dumps({"event": event, **data}, default=str), flush=True)  # noqa: T201 - the parent reads it


def status_mib(key: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def maxrss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_end() -> dict[str, Any]:
    """Close the timed section: tell the parent (it stamps the wall clock) and snapshot the peak RSS."""
    emit("timed_done")
    return {"peak_mib": maxrss_mib(), "vmhwm_mib": status_mib("VmHWM")}


class Timed:
    """The timed section of a child step, opened after the step's imports.

    It keeps the RSS after the imports and the start time; `end` closes it (see `timed_end`) and
    `result` gives the fields every step reports: seconds, RSS after imports, peak RSS, VmHWM.
    """

    def __init__(self) -> None:
        self.rss_after_imports_mib = status_mib("VmRSS")
        self.start = time.perf_counter()
        self.seconds: float | None = None
        self.peak: dict[str, Any] = {}

    def end(self, since: float | None = None) -> float:
        """Close the section; its seconds run from `since` (a later clock reading) or from its start."""
        self.seconds = time.perf_counter() - (self.start if since is None else since)
        self.peak = timed_end()
        return self.seconds

    def result(self, **data: Any) -> dict[str, Any]:
        """The step's result: the section's seconds (unless `data` gives its own), RSS readings, then `data`."""
        if self.seconds is None:
            raise RuntimeError("Timed.result before Timed.end: the step never closed its timed section")
        return {"seconds": self.seconds, "rss_after_imports_mib": self.rss_after_imports_mib, **self.peak, **data}


def worker_main(workers: Mapping[str, Worker], argv: list[str]) -> int:
    """Entry point of a child: run one step and print its result as the last JSON line."""
    step, params = argv[0], json.loads(argv[1])
    data = workers[step](params)
    # VmHWM at the very end: the cross-check of the whole child's ru_maxrss from os.wait4.
    emit("result", process_vmhwm_mib=status_mib("VmHWM"), **data)
    return 0


# --------------------------------------------------------------------------- parent side: one child


@dataclass
class Run:
    """One measured child process."""

    step: str
    label: str
    seconds: float  # the step itself, timed inside the child
    wall_seconds: float  # spawn to exit: imports and untimed work (evaluation, writing) included
    timed_wall_seconds: float | None  # spawn to the end of the timed section: imports included
    peak_mib: float | None  # ru_maxrss of the child at the end of the timed section
    process_peak_mib: float  # ru_maxrss of the whole child, from os.wait4
    hwm_mib: float | None  # VmHWM the child read at the end of the timed section (cross-check of peak_mib)
    process_hwm_mib: float | None  # VmHWM the child read as it finished (cross-check of process_peak_mib)
    rss_after_imports_mib: float | None
    load_avg: tuple[float, float, float]  # 1/5/15-minute load average when the child started
    code_digest: str  # of the measured code when the child started: the code it measured
    data: dict[str, Any] = field(repr=False)

    def rss_mismatches(self) -> list[str]:
        """Where ru_maxrss and VmHWM, read at the same moment, disagree by more than the tolerance.

        They differ when ru_maxrss counts more than the child's own memory: the parent's high-water mark
        carried over at exec, or (from os.wait4) a process the child started and waited for, e.g. a server.
        """
        out = []
        for what, rss, hwm in (
            ("at the end of its timed section", self.peak_mib, self.hwm_mib),
            (
                "as it finished (wait4 also counts the processes it waited for)",
                self.process_peak_mib,
                self.process_hwm_mib,
            ),
        ):
            if rss is None or hwm is None:
                continue
            if abs(rss - hwm) > max(RSS_TOLERANCE_SHARE * hwm, RSS_TOLERANCE_MIB):
                out.append(f"{self.label}: ru_maxrss {rss:.0f} MiB differs from the child's VmHWM {hwm:.0f} MiB {what}")
        return out


def run_child(
    module: str,
    step: str,
    label: str,
    params: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None],
    digest: str = "",
) -> Run:
    """Run `python -m module _worker step params` and collect what it reports; raise BenchError on failure."""
    load_avg = os.getloadavg()
    cmd = [sys.executable, "-m", module, "_worker", step, json.dumps(params)]
    result: dict[str, Any] | None = None
    timed_wall: float | None = None
    with tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a stray print from a library
            kind = event.get("event") if isinstance(event, dict) else None
            if kind == "result":
                result = event
            elif kind == "timed_done":
                timed_wall = time.perf_counter() - t0
            elif kind == "progress":
                on_progress(event)
        # wait4, not wait: the rusage of this one child (RUSAGE_CHILDREN is the maximum over all of them).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        if proc.returncode != 0 or result is None:
            err.seek(0)
            tail = "\n".join(err.read().splitlines()[-25:])
            raise BenchError(f"{label} failed with exit code {proc.returncode}:\n{tail}")
    return Run(
        step=step,
        label=label,
        seconds=float(result["seconds"]),
        wall_seconds=wall,
        timed_wall_seconds=timed_wall,
        peak_mib=result.get("peak_mib"),
        process_peak_mib=usage.ru_maxrss / 1024,
        hwm_mib=result.get("vmhwm_mib"),
        process_hwm_mib=result.get("process_vmhwm_mib"),
        rss_after_imports_mib=result.get("rss_after_imports_mib"),
        load_avg=load_avg,
        code_digest=digest,
        data={k: v for k, v in result.items() if k not in ("event", "seconds")},
    )


class Bench:
    """Runs a benchmark's steps as child processes with a progress display, and keeps every run."""

    def __init__(self, module: str, console: Console, digest: Callable[[], str] = lambda: "") -> None:
        self.module = module
        self.console = console
        self.digest = digest
        self.runs: list[Run] = []
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._overall: TaskID | None = None

    def plan(self, steps: int) -> None:
        """Expect `steps` more children: an overall bar counts them."""
        if self._overall is None:
            self._overall = self.progress.add_task("[bold]all steps", total=steps)
        else:
            self.progress.update(self._overall, total=(self.progress.tasks[self._overall].total or 0) + steps)

    def child(self, step: str, label: str, params: dict[str, Any], scope: str = "") -> Run:
        """Run one step in its own process; its time and peak RSS are that child's alone.

        `scope` (e.g. "20,000 customers") prefixes the label on screen and in errors; the run keeps `label`.
        """
        shown = f"{scope} · {label}" if scope else label
        task = self.progress.add_task(shown, total=None)
        try:
            run = run_child(
                self.module, step, f"{label} ({scope})" if scope else label, params,
                lambda e: self._on_progress(task, shown, e), self.digest(),
            )  # fmt: skip
        finally:
            self.progress.remove_task(task)
        run.label = label
        self.runs.append(run)
        if self._overall is not None:
            self.progress.advance(self._overall)
        peak = run.peak_mib if run.peak_mib is not None else run.process_peak_mib
        self.console.log(
            f"{shown}: {run.seconds:,.1f} s (process {run.wall_seconds:,.1f} s), peak {peak:,.0f} MiB, "
            f"load avg {run.load_avg[0]:.1f}"
        )
        return run

    def _on_progress(self, task: TaskID, shown: str, e: dict[str, Any]) -> None:
        description = f"{shown} · {escape(str(e['step']))}" if e.get("step") is not None else shown
        if e.get("done") is not None:
            self.progress.update(task, description=description, total=e.get("total"), completed=e["done"])
        else:
            self.progress.update(task, description=description)


def cached_stages(
    bench: Bench,
    marker: Path,
    stages: Sequence[str],
    make: Callable[[str, bool], Run | None],
    identity: Mapping[str, Any] | None = None,
    versions: Mapping[str, int] | None = None,
    kept: Sequence[str] = (),
) -> dict[str, Any]:
    """Untimed setup stages, recorded in `marker` (JSON) and reused while complete; returns that record.

    A stage is made again when it is missing, was made by an older version of its step (`versions`),
    or a stage before it was made again. `make(stage, redo)` runs it (as a child) and returns its run,
    or None when it had nothing to do. A record made for another `identity` (world size, seed) starts
    afresh; `kept` names the fields of a stage's result to remember beside its seconds.
    """
    identity, versions = identity or {}, versions or {}
    state: dict[str, Any] = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    if any(state.get(k) != v for k, v in identity.items()):
        state = {}
    state.update(identity)
    done: dict[str, Any] = state.setdefault("stages", {})
    redo = False
    for stage in stages:
        redo = redo or stage not in done or done[stage].get("version", 1) != versions.get(stage, 1)
        run = make(stage, redo)
        if not redo:
            if run is None:
                bench.console.log(f"{stage}: reused ({done[stage]['seconds']:,.0f} s when made)")
            continue
        if run is None:
            raise BenchError(f"setup stage {stage} had to be made again but made nothing")
        done[stage] = {
            "seconds": round(run.seconds, 1),
            "at": dt.datetime.now().isoformat(),
            **{k: v for k, v in run.data.items() if k in kept},
            "version": versions.get(stage, 1),  # the step's, after `kept`: a result's own "version" cannot shadow it
        }
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    return state


# --------------------------------------------------------------------------- parent side: alternation


def sandwich(outer: Callable[[int], T], inner: Callable[[int], U], repeats: int = 1, close: bool = True) -> list[T | U]:
    """outer #1, inner #1, outer #2, ..., inner #k, outer #k+1: every inner run between two outer ones.

    The CPU clock of this machine moves between levels within seconds, so an inner run is compared
    with the outer runs on either side of it (`triples`). `close=False` leaves out the last outer run.
    """
    runs: list[T | U] = []
    for i in range(1, repeats + 1):
        runs += [outer(i), inner(i)]
    if close:
        runs.append(outer(repeats + 1))
    return runs


def triples(runs: list[T]) -> list[tuple[T, T, T]]:
    """(before, middle, after) of each middle run of a `sandwich` (B C B C B gives two)."""
    return [(runs[i - 1], runs[i], runs[i + 1]) for i in range(1, len(runs) - 1, 2)]


def in_turn(repeat: int, first: T, second: T) -> tuple[T, T]:
    """The order of a pair in repeat `repeat` (from 0): first-second, then second-first, and so on."""
    return (first, second) if repeat % 2 == 0 else (second, first)


# --------------------------------------------------------------------------- printing


def seconds_text(seconds: float | None) -> str:
    """Seconds as "12.3 s", with minutes from a minute on ("75.0 s (1m15s)"); "—" when not measured."""
    if seconds is None:
        return "—"
    text = f"{seconds:,.1f} s"
    return text + f" ({int(seconds // 60)}m{int(seconds % 60):02d}s)" if seconds >= 60 else text


def mib_text(mib: float | None) -> str:
    """MiB as "1,234"; "—" when it was not measured."""
    return "—" if mib is None else f"{mib:,.0f}"


def runs_table(
    title: str,
    runs: Iterable[Run],
    extra: Sequence[tuple[str, Callable[[Run], str]]],
    process_peak: bool = False,
) -> Table:
    """The runs in the order they ran: time in the child, spawn to exit, peak RSS, RSS after imports, `extra`.

    The peak is the child's at the end of its timed section, or of the whole child with `process_peak`;
    the last of `extra` is left-aligned (a detail).
    """
    table = Table(title=title)
    names = ["run", "step time", "process wall", "peak RSS MiB", "after imports", *(name for name, _ in extra)]
    for i, name in enumerate(names):
        table.add_column(name, justify="left" if i == 0 or (extra and i == len(names) - 1) else "right")
    for r in runs:
        peak = r.process_peak_mib if process_peak else r.peak_mib
        values = (
            seconds_text(r.seconds),
            seconds_text(r.wall_seconds),
            mib_text(peak),
            mib_text(r.rss_after_imports_mib),
        )
        table.add_row(r.label, *values, *(cell(r) for _, cell in extra))
    return table


# --------------------------------------------------------------------------- targets


def verdict(passed: bool | None) -> str:
    """PASS, FAIL, or NOT CHECKED (the value could not be measured), as rich markup."""
    return "[bold yellow]NOT CHECKED[/]" if passed is None else "[bold green]PASS[/]" if passed else "[bold red]FAIL[/]"


@dataclass
class Target:
    """One target of a benchmark: a value against a limit, and whether it passed.

    `passed` None means it could not be checked (counted as missed); a target that does not apply
    at this size (`applies` False) is printed with `note` and not counted.
    """

    name: str  # as printed after "Target "
    value: float | None
    limit: float
    passed: bool | None
    shown: str  # the value as printed
    applies: bool = True
    note: str = ""

    @property
    def missed(self) -> bool:
        """Whether the target counts against the run: it applies and did not pass."""
        return self.applies and self.passed is not True

    def line(self) -> str:
        """The printed verdict, `Target NAME: VALUE → PASS` (rich markup), with the note when it does not apply."""
        tail = f" [dim]({self.note})[/]" if self.note and not self.applies else ""
        return f"Target {self.name}: {self.shown} → {verdict(self.passed)}{tail}"

    def as_dict(self) -> dict[str, Any]:
        """The target as the results file keeps it."""
        out = {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "pass": self.passed,
            "applies": self.applies,
        }
        return out | ({"note": self.note} if self.note else {})


# --------------------------------------------------------------------------- the main() preamble


@dataclass(frozen=True)
class Spec:
    """What makes one benchmark: its name, its child steps, the packages and code it measures."""

    name: str  # the results file is benchmarks/results/<name>-<time>.json
    module: str  # children run `python -m <module> _worker STEP PARAMS`
    workers: Mapping[str, Worker]
    packages: tuple[str, ...]  # their versions go to the results file
    measured: tuple[str, ...] = ("features", "custintel")  # code digested (paths under the repo)
    width: int = 200  # console width when the output is not a terminal
    entries: Mapping[str, Callable[[list[str]], int]] = field(default_factory=dict)  # other child entry points


def make_console(width: int) -> Console:
    """A rich console; off a terminal (a log file, a pipe) a fixed width, so wide tables are not squeezed."""
    console = Console()
    return console if console.is_terminal else Console(width=width)


def _jsonable(o: Any) -> Any:
    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    return str(o)


class Session:
    """One run of a benchmark: console, machine, the measured code's digest, what it found, its results file.

    The benchmark puts its own results in `record` (kept by reference: lists it keeps appending to are
    written as they are at each `save`), its targets in `targets`, failed checks in `problems` (exit 1)
    and remarks in `warnings`; a `BenchError` or `fail` makes the exit code 2.
    """

    def __init__(self, spec: Spec, argv: list[str], args: argparse.Namespace, results_dir: Path = RESULTS_DIR) -> None:
        self.spec = spec
        self.argv = argv
        self.args = args
        self.console = make_console(spec.width)
        self.started = dt.datetime.now()
        self.machine = machine_info(spec.packages)
        self.digest_start = self.digest()
        self.bench = Bench(spec.module, self.console, self.digest)
        self.path = results_dir / f"{spec.name}-{self.started:%Y%m%d-%H%M%S}.json"
        self.record: dict[str, Any] = {}
        self.targets: list[Target] = []
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.error: str | None = None
        self._digest_end: str | None = None
        m = self.machine
        self.console.log(
            f"{m['cpu_count']} cores, load average {' '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}, "
            f"a fixed Python loop {m['python_loop_seconds_at_start']:.2f} s; measured code "
            f"{', '.join(spec.measured)} {self.digest_start}"
        )

    def digest(self) -> str:
        """The digest of the measured code now."""
        return code_digest(self.spec.measured)

    def speed_at_end(self) -> float:
        """The fixed Python loop's seconds at the end (measured once): the machine's speed may have moved."""
        if "python_loop_seconds_at_end" not in self.machine:
            self.machine["python_loop_seconds_at_end"] = python_speed()
        return float(self.machine["python_loop_seconds_at_end"])

    def fail(self, message: str) -> None:
        """Record that the benchmark could not measure something (exit 2); the caller prints it."""
        self.error = message if self.error is None else f"{self.error}\n{message}"

    def exit_code(self) -> int:
        """2 when it could not measure, 1 when a target was missed or a check failed, else 0."""
        if self.error is not None:
            return EXIT_FAILED
        return EXIT_MISSED if self.problems or any(t.missed for t in self.targets) else EXIT_MET

    def _code_digests(self) -> dict[str, Any]:
        end = self._digest_end or self.digest()
        by_run = {r.label: r.code_digest for r in self.bench.runs}
        changed = len({self.digest_start, end, *by_run.values()}) > 1
        return {
            "measured": list(self.spec.measured),
            "start": self.digest_start,
            "end": end,
            "changed": changed,
            **({"by_run": by_run} if changed else {}),
        }

    def save(self) -> Path:
        """Write the results file with what is known so far (call it after every run of a long benchmark)."""
        payload = {
            "benchmark": self.spec.name,
            "command": [Path(sys.executable).name, "-m", self.spec.module, *self.argv],
            "started_at": self.started.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now().isoformat(timespec="seconds"),
            "args": vars(self.args),
            "machine": self.machine,
            "load_avg_at_end": os.getloadavg(),
            "parent_vmhwm_mib": status_mib("VmHWM"),
            "code_digest": self._code_digests(),
            "verdicts": [t.as_dict() for t in self.targets],
            "problems": self.problems,
            "warnings": self.warnings,
            "error": self.error,
            "ok": self.exit_code() == EXIT_MET,
            "exit_code": self.exit_code(),
            **self.record,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
        tmp.replace(self.path)
        return self.path

    def run(self, body: Callable[[], None]) -> int:
        """Run the benchmark's body under the progress display, then `finish`; returns the exit code."""
        try:
            with self.bench.progress:
                body()
        except BenchError as exc:
            self.fail(str(exc))
            self.console.print(f"[bold red]Failed:[/] {escape(str(exc))}")
        except KeyboardInterrupt:
            self.fail("interrupted")
            self.console.print("[bold red]Interrupted[/]: the runs finished so far are written")
        return self.finish()

    def finish(self) -> int:
        """Check the measured code and the memory readings, write the results file, print the verdict."""
        self._digest_end = self.digest()
        found = [f"warning: {m}" for run in self.bench.runs for m in run.rss_mismatches()]
        if self._code_digests()["changed"]:
            found.append(
                f"warning: the measured code ({', '.join(self.spec.measured)}) changed while the benchmark ran; "
                "its runs may have measured different code (digests by run in the results file)"
            )
        for w in found:  # the benchmark printed its own warnings where they arose
            self.console.print(f"[yellow]{escape(w)}")
        self.warnings += found
        start, end = self.machine["python_loop_seconds_at_start"], self.speed_at_end()
        self.console.log(
            f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; the fixed Python loop "
            f"{start:.2f} s at the start, {end:.2f} s at the end"
        )
        self.save()
        self.console.print(f"Results written to [bold]{self.path}[/]")
        code = self.exit_code()
        if code == EXIT_MET:
            counted = sum(t.applies for t in self.targets)
            aside = len(self.targets) - counted
            met = f"{counted} target{'s' if counted != 1 else ''} met" if counted else "no target applies to this run"
            tail = f" ({aside} not counted at this size)" if aside else ""
            self.console.print(f"[bold green]OK[/]: {met}{tail}; every check passed")
        elif code == EXIT_MISSED:
            missed = [t.name for t in self.targets if t.missed]
            why = "; ".join([*(f"target missed: {n}" for n in missed), *self.problems])
            self.console.print(f"[bold red]FAILED[/]: {escape(why)}")
        else:
            self.console.print("[bold red]FAILED[/]: the benchmark could not measure (see above)")
        return code


def main(
    spec: Spec,
    argv: list[str] | None,
    parse: Callable[[list[str]], argparse.Namespace],
    body: Callable[[Session], None],
    results_dir: Path = RESULTS_DIR,
) -> int:
    """Every benchmark's entry point: a child step, another child entry point, or a whole run."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(spec.workers, argv[1:])
    if argv[:1] and argv[0] in spec.entries:
        return spec.entries[argv[0]](argv[1:])
    session = Session(spec, argv, parse(argv), results_dir)
    return session.run(lambda: body(session))


def small_churn_training(experiment: str, train: str, valid: str, test: str) -> str:
    """The tests' small churn config (tests/conftest.py SMALL_TRAINING_YAML): one trial, one cutoff per split."""
    return f"""
experiment: {experiment}
churn:
  feature_sets: [relationship@1, value@1, service@1, digital@1]
  horizon_days: 90
  split: {{train_as_of: [{train}], valid_as_of: [{valid}], test_as_of: [{test}]}}
  calibration: sigmoid
  lightgbm:
    max_trees: 150
    early_stopping_rounds: 20
    threads: 2
    search:
      learning_rate: {{low: 0.03, high: 0.2, log: true}}
      num_leaves: {{low: 4, high: 16, integer: true}}
  tuning: {{trials: 1, timeout_seconds: 120}}
"""
