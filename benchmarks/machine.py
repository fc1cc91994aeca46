"""What every benchmark records about the machine and the code it measured."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def code_digest(measured: Iterable[str] = ("features", "custintel")) -> str:
    """SHA-256 over the measured code and contracts, to tell whether it changed during the run.

    `measured` are paths under the repository: a folder counts with every .py and .yaml file below it.
    """
    paths: list[Path] = []
    for entry in measured:
        path = ROOT / entry
        paths += [*path.rglob("*.py"), *path.rglob("*.yaml")] if path.is_dir() else [path]
    h = hashlib.sha256()
    for path in sorted(p for p in set(paths) if p.is_file()):
        h.update(os.path.relpath(path, ROOT).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def python_speed(steps: int = 5_000_000) -> float:
    """Seconds a fixed pure-Python loop takes: the machine's speed for this process right now.

    Shared cloud cores slow down when neighbours are busy (on 2026-11-23 the same loop took 0.19 s on
    this kind of machine, and 0.34 s an hour later); absolute figures only compare at similar speeds.
    """
    import time

    start = time.perf_counter()
    total = 0
    for i in range(steps):
        total += i
    return round(time.perf_counter() - start, 3)


def machine_info(packages: tuple[str, ...]) -> dict[str, Any]:
    """Platform, cores, memory, load and the versions of `packages`."""
    import psutil

    freq = psutil.cpu_freq()
    versions: dict[str, str | None] = {}
    for pkg in packages:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_freq_mhz_at_start": freq.current if freq else None,
        "memory_gib": psutil.virtual_memory().total / 1024**3,
        "load_avg_at_start": os.getloadavg(),
        "python_loop_seconds_at_start": python_speed(),
        "versions": versions,
    }
