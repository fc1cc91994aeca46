"""The Spark engine's working folders, owned by the process that made them, and the sweep of those a dead run left.

A Spark run writes under the home: the inputs it stages, Splink's checkpoint tables (names, emails
and birth dates of the records being linked), Spark's own scratch space (shuffle and cache blocks,
the Arrow files pyspark hands to the JVM). A process killed mid-run leaves them behind. So every
process works in one folder of its own, with an owner it can be recognised by::

    <home>/spark/runs/<pid>-<id>/owner.json   pid, its start time, the driver JVM's pid and start time, when
    <home>/spark/runs/<pid>-<id>/owner.lock   held (flock) for as long as the process lives
    <home>/spark/runs/<pid>-<id>/<kind>/      checkpoints, local (spark.local.dir), inputs, ...

A folder is a dead run's leftover when its lock is free and its JVM (which outlives a killed Python
by a moment) is gone. `sweep_spark_leftovers` removes them: each run does before it starts (the
first `run_folder` of a process and home), and so does the retention flow. `SparkLeftoversStore`
puts them within reach of access and erasure requests: a leftover is not searched (it may be large,
and half-written), it is reported as what it is and erased whole.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from custintel.atomic_files import write_text_atomically
from custintel.personal import Erased, Holding, Subject
from custintel.retention import Expiry, Item
from custintel.settings import Settings

__all__ = [
    "Leftover",
    "SparkLeftoversStore",
    "leftovers",
    "record_jvm",
    "release_run_folders",
    "run_folder",
    "sweep_spark_leftovers",
]

OWNER = "owner.json"
LOCK = "owner.lock"
REMOVING = ".removing-"  # a leftover being removed: renamed first, so a pass killed midway is finished by the next
LEGACY = ("inputs", "checkpoints")  # <home>/spark/<kind>/ of versions before the run folders: no owner to ask
GRACE_SECONDS = 600  # a folder without a lock file younger than this is a run being set up, not a leftover
WHAT = "staging leftovers of a dead run"

_LOCK = threading.Lock()
_RUNS: dict[tuple[int, str], tuple[Path, IO[str]]] = {}  # (pid, home) -> this process's folder, its held lock


def spark_root(settings: Settings) -> Path:
    """Where the Spark engine's working folders are."""
    return settings.home_dir / "spark"


def runs_root(settings: Settings) -> Path:
    """The run folders, one per process that used Spark on this home."""
    return spark_root(settings) / "runs"


def _started(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (tells a reused pid apart); None when unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _alive(pid: int | None, started: int | None) -> bool:
    """Whether the process runs, and is the one recorded (same start time, when recorded)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid
        pass
    now = _started(pid)
    return started is None or now is None or now == started


def run_folder(settings: Settings, kind: str | None = None) -> Path:
    """This process's Spark folder under the home (its `kind` subfolder when given), made and locked on first use.

    The first call of a process for a home sweeps the leftovers of that home's dead runs first.
    """
    key = (os.getpid(), str(settings.home_dir))
    with _LOCK:
        held = _RUNS.get(key)
        if held is None:
            sweep_spark_leftovers(settings)
            folder = runs_root(settings) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            folder.mkdir(parents=True)
            lock = (folder / LOCK).open("w", encoding="utf-8")
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
            owner = {
                "pid": os.getpid(),
                "pid_started": _started(os.getpid()),
                "host": socket.gethostname(),
                "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            write_text_atomically(folder / OWNER, json.dumps(owner, indent=1))
            held = _RUNS[key] = (folder, lock)
    folder = held[0]
    if kind is None:
        return folder
    sub = folder / kind
    sub.mkdir(parents=True, exist_ok=True)
    return sub


def release_run_folders() -> None:
    """Remove this process's run folders (its Spark session is stopped: nothing of them is needed any more).

    Also at the interpreter's exit; a process killed before either leaves them to the next sweep.
    """
    with _LOCK:
        mine = [k for k in _RUNS if k[0] == os.getpid()]
        for key in mine:
            folder, lock = _RUNS.pop(key)
            _remove(folder)
            lock.close()


atexit.register(release_run_folders)


def record_jvm(settings: Settings, jvm_pid: int | None) -> None:
    """Note the driver JVM's pid in this process's owner file: its folder is in use while the JVM lives."""
    folder = run_folder(settings)
    owner = _owner(folder)
    owner.update({"jvm_pid": jvm_pid, "jvm_started": _started(jvm_pid) if jvm_pid else None})
    write_text_atomically(folder / OWNER, json.dumps(owner, indent=1))


def _owner(folder: Path) -> dict[str, Any]:
    try:
        value = json.loads((folder / OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Leftover:
    """A dead run's folder: where, how many files and bytes it holds, when its run started (if known)."""

    path: Path
    files: int
    size: int
    started_at: dt.date | None
    why: str

    def place(self, settings: Settings) -> str:
        """The folder relative to the home."""
        return str(self.path.relative_to(settings.home_dir))


def _content(folder: Path) -> tuple[int, int]:
    files = size = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and path.name not in (OWNER, LOCK):
                files += 1
                size += path.stat().st_size
    return files, size


@contextlib.contextmanager
def _if_dead(folder: Path) -> Iterator[str | None]:
    """Why the folder is a dead run's (its lock held meanwhile, so no run can start using it); None if it lives."""
    if any(folder == f for f, _ in _RUNS.values()):
        yield None
        return
    lock_path = folder / LOCK
    if not lock_path.is_file():
        try:
            age = time.time() - folder.stat().st_mtime
        except OSError:
            age = 0.0
        yield f"no owner lock, untouched for {age / 60:.0f} min" if age > GRACE_SECONDS else None
        return
    try:
        handle = lock_path.open("a", encoding="utf-8")
    except OSError:
        yield None
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None  # its process holds the lock: alive
            return
        owner = _owner(folder)
        jvm = owner.get("jvm_pid")
        if _alive(jvm, owner.get("jvm_started")):
            yield None  # the process is gone but its JVM still writes: next time
            return
        yield f"its process {owner.get('pid', '?')} is gone"


def _started_at(folder: Path) -> dt.date | None:
    value = _owner(folder).get("started_at")
    try:
        return dt.datetime.fromisoformat(value).date() if isinstance(value, str) else None
    except ValueError:
        return None


def _candidates(settings: Settings) -> Iterator[Path]:
    runs = runs_root(settings)
    if runs.is_dir():
        yield from sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(REMOVING))
    root = spark_root(settings)
    for name in LEGACY:
        if (root / name).is_dir():
            yield from sorted(p for p in (root / name).iterdir() if p.is_dir() or p.is_file())


def leftovers(settings: Settings) -> list[Leftover]:
    """The dead runs' folders under the home (nothing is removed)."""
    found = []
    for folder in _candidates(settings):
        legacy = folder.parent.name in LEGACY
        if legacy:
            why: str | None = "left in the layout of an earlier version (no owner)"
        else:
            with _if_dead(folder) as why:
                pass
        if why is not None:
            files, size = _content(folder) if folder.is_dir() else (1, folder.stat().st_size)
            found.append(Leftover(folder, files, size, _started_at(folder), why))
    return found


def _remove(path: Path) -> None:
    if path.is_dir():
        trash = path.with_name(f"{REMOVING}{path.name}")
        try:
            path.rename(trash)
        except OSError:
            trash = path
        shutil.rmtree(trash, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_spark_leftovers(settings: Settings, dry_run: bool = False) -> Expiry:
    """Remove the folders dead Spark runs left under the home (a dry run lists them); live runs' stay.

    An item per folder, dated by its run's start (today when unknown), counted in files. Safe
    beside running runs (each holds its lock) and after a kill midway (a renamed folder goes next time).
    """
    expiry = Expiry("spark_leftovers")
    today = dt.datetime.now(dt.UTC).date()
    for folder in _candidates(settings):
        legacy = folder.parent.name in LEGACY
        if legacy:
            why: str | None = "left in the layout of an earlier version (no owner)"
            files = _content(folder)[0] if folder.is_dir() else 1
            if not dry_run:
                _remove(folder)
        else:
            with _if_dead(folder) as why:
                files = _content(folder)[0] if why is not None else 0
                if why is not None and not dry_run:
                    _remove(folder)  # while its lock is held here: no run can take it meanwhile
        if why is None:
            continue
        item = Item(str(folder.relative_to(settings.home_dir)), _started_at(folder) or today, files, why)
        expiry.removed.append(item)
    runs = runs_root(settings)
    if not dry_run and runs.is_dir():
        for trash in runs.glob(f"{REMOVING}*"):
            shutil.rmtree(trash, ignore_errors=True)
            expiry.notes.append(f"removed {trash.name}: left by an earlier sweep")
    return expiry


class SparkLeftoversStore:
    """Dead Spark runs' folders as a personal store: reported on access, erased whole on erasure.

    They may hold anyone's data (Splink's checkpoints hold the linked records), and they are not
    searched: each is reported to every subject as what it is, and an erasure removes them all.
    A live run's folder is its run's to remove; it is not reported.
    """

    name = "spark.leftovers"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each dead run's folder, for every subject: it may hold them."""
        found = [x for x in leftovers(self.settings) if x.files]
        return [
            Holding(
                self.name, x.place(self.settings), s.request, [{"held": f"{WHAT}, {x.files} files", "files": x.files}]
            )
            for x in found
            for s in subjects
        ]

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Remove every dead run's folder whole (idempotent: nothing is left to remove the second time)."""
        if not subjects:
            return []
        expiry = sweep_spark_leftovers(self.settings)
        return [Erased(self.name, i.place, i.count, f"{WHAT}, removed whole") for i in expiry.removed]
