"""The child side of a benchmark step: progress and results as JSON lines, memory readings.

Each benchmark runs its contenders in child processes (so peak memory is the child's own)
and reads what they print: one JSON object per line, the last one the result.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from benchmarks.machine import ROOT, code_digest


class BenchError(RuntimeError):
    """A child step failed; the message carries the tail of its stderr."""


def emit(event: str, **data: Any) -> None:
    """One JSON line on stdout for the parent: progress, or the final result."""
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


def worker_main(workers: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]], argv: list[str]) -> int:
    """Entry point of a child: run one step and print its result as the last JSON line."""
    step, params = argv[0], json.loads(argv[1])
    data = workers[step](params)
    emit("result", **data)
    return 0


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
    hwm_mib: float | None  # VmHWM the child read at the end of the timed section (cross-check)
    rss_after_imports_mib: float | None
    load_avg: tuple[float, float, float]  # 1/5/15-minute load average when the child started
    code_digest: str  # of features/ when the child started: the code it measured
    data: dict[str, Any] = field(repr=False)


def run_child(
    module: str, step: str, label: str, params: dict[str, Any], on_progress: Callable[[dict[str, Any]], None]
) -> Run:
    """Run `python -m module _worker step params` and collect what it reports; raise BenchError on failure."""
    digest = code_digest()
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
            kind = event.get("event")
            if kind == "result":
                result = event
            elif kind == "timed_done":
                timed_wall = time.perf_counter() - t0
            elif kind == "progress":
                on_progress(event)
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
        rss_after_imports_mib=result.get("rss_after_imports_mib"),
        load_avg=load_avg,
        code_digest=digest,
        data={k: v for k, v in result.items() if k not in ("event", "seconds")},
    )


class Bench:
    """Runs a benchmark's children with a rich progress display; the parent imports nothing heavy."""

    def __init__(self, module: str, console: Console) -> None:
        self.module = module
        self.console = console
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        )

    def child(self, step: str, label: str, params: dict[str, Any]) -> Run:
        """Run one step in its own process; its time and peak RSS are that child's alone."""
        task = self.progress.add_task(label, total=None)
        try:
            run = run_child(self.module, step, label, params, lambda e: self._on_progress(task, label, e))
        finally:
            self.progress.remove_task(task)
        peak = "" if run.peak_mib is None else f", peak {run.peak_mib:,.0f} MiB"
        wall, load = run.wall_seconds, run.load_avg[0]
        self.console.log(f"{label}: {run.seconds:,.1f} s (process {wall:,.1f} s){peak}, load avg {load:.1f}")
        return run

    def _on_progress(self, task: TaskID, label: str, e: dict[str, Any]) -> None:
        if "step" in e:
            self.progress.update(task, description=f"{label} · {escape(str(e['step']))}")
