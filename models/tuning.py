"""Optuna studies: TPE over a configured search space, pruning, a trial and time budget.

The study's storage is in memory unless a study storage is given: an RDB URL (PostgreSQL)
or `journal:///path/to/study.log` (Optuna's journal file, for one machine without a
database). Then several worker processes (`models.tuning_worker`) can share one study:
each records a heartbeat for its running trial, the next worker fails a trial whose
heartbeat stopped (its worker died) and queues it again, and the study ends with the
requested number of COMPLETE trials however many workers were killed.

Time spent inside model fitting is accumulated on a `FitClock`, so a run can report how much
of its wall time went to orchestration and tracking instead.

A study reports its progress on the `custintel.models` logger ("churn: trial 7/40, best
AUC 0.7810 so far"): the first trial, then at most one line every `PROGRESS_SECONDS`, and
the last. Optuna's own INFO lines (one per study and per trial) are silenced while ours run.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
    fail_stale_trials,
)
from optuna.storages._heartbeat import BaseHeartbeat  # fail_stale_trials acts on storages of this class only
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import LightGBMPruningCallback
from sklearn.metrics import roc_auc_score

from models.config import LightGBMConfig, ParamRange, TuningConfig

log = logging.getLogger("custintel.models")
PROGRESS_SECONDS = 10.0  # at most one progress line this often (plus the first and the last trial)


@dataclass
class FitClock:
    """Seconds spent fitting models (accumulated by every trainer)."""

    seconds: float = 0.0

    @contextmanager
    def fitting(self) -> Iterator[None]:
        """Count the time of the block as model fitting."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


@dataclass
class StudySummary:
    """What a study did, for the run's parameters and the note."""

    trials: int
    completed: int
    pruned: int
    best_value: float
    best_params: dict[str, Any]
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0  # trials failed: their worker died (stale) or the objective raised
    workers: int = 1  # processes that ran trials (1: this one)
    worker_exits: list[WorkerExit] = field(default_factory=list)
    best_user_attrs: dict[str, Any] = field(default_factory=dict)

    def as_metrics(self, prefix: str = "tuning") -> dict[str, float]:
        """Flat numbers to log."""
        return {
            f"{prefix}_trials": float(self.trials),
            f"{prefix}_completed": float(self.completed),
            f"{prefix}_pruned": float(self.pruned),
            f"{prefix}_failed": float(self.failed),
            f"{prefix}_workers": float(self.workers),
            f"{prefix}_best_valid_score": self.best_value,
            f"{prefix}_seconds": self.seconds,
        }


@dataclass(frozen=True)
class WorkerExit:
    """How one worker process ended."""

    index: int
    pid: int
    exit_code: int  # negative: killed by that signal
    traceback: bool  # its error output holds a Python traceback (a bug, never an expected condition)
    last_line: str  # the last line of its error output

    def describe(self) -> str:
        """One line: "worker 2 (pid 4242) exited 0" or "... was killed by SIGKILL"."""
        head = f"worker {self.index} (pid {self.pid})"
        if self.exit_code < 0:
            return f"{head} was killed by {signal.Signals(-self.exit_code).name}"
        tail = f": {self.last_line}" if self.exit_code and self.last_line else ""
        return f"{head} exited {self.exit_code}{tail}"


def suggest(trial: optuna.Trial, space: dict[str, ParamRange]) -> dict[str, Any]:
    """Draw one value per searched parameter."""
    out: dict[str, Any] = {}
    for name, r in space.items():
        if r.integer:
            out[name] = trial.suggest_int(name, int(math.ceil(r.low)), int(math.floor(r.high)), log=r.log)
        else:
            out[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
    return out


@contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's INFO lines ("A new study created", "Trial 3 finished") off for the block; its level put back."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(before, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


JOURNAL_SCHEME = "journal://"
STORAGE_ENV = "CUSTINTEL_STUDY_STORAGE"  # how a worker process gets the URL (never on its command line)
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


class StudyStorageError(ValueError):
    """A study storage that cannot be used; the message names the URL (password masked) and why."""


def masked_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    return _PASSWORD.sub(r"\1***@", url)


def storage_kind(url: str | None) -> str:
    """What kind of storage the URL names: memory, journal, postgresql, sqlite, mysql, ..."""
    if not url:
        return "memory"
    if url.startswith(JOURNAL_SCHEME):
        return "journal"
    return url.split(":", 1)[0].split("+", 1)[0]


def _first_line(err: BaseException) -> str:
    reason = getattr(err, "orig", None) or err
    return (str(reason).strip().splitlines() or [type(reason).__name__])[0].strip()


class JournalHeartbeatStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage with the heartbeats its RDB storage has (the journal has none).

    A running trial's heartbeat is a small file `<journal>.heartbeats/<trial id>` whose
    modification time the worker refreshes; a RUNNING trial whose file is older than the grace
    period is stale. Trials without a file (never started by a worker) are never stale.
    """

    def __init__(
        self,
        path: Path,
        heartbeat_interval: int,
        grace_period: int | None,
        stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        super().__init__(JournalFileBackend(str(path)))
        self.heartbeat_dir = path.with_name(path.name + ".heartbeats")
        self.heartbeat_dir.mkdir(exist_ok=True)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 2 * heartbeat_interval
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        """Refresh the trial's heartbeat file."""
        beat = self.heartbeat_dir / str(trial_id)
        beat.touch()
        os.utime(beat)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            try:
                seen = (self.heartbeat_dir / str(trial._trial_id)).stat().st_mtime
            except FileNotFoundError:
                continue
            if now - seen > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        """Seconds between heartbeats."""
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """What to do with a trial failed as stale (queue it again)."""
        return self.stale_trial_callback


def open_storage(url: str, tuning: TuningConfig) -> BaseStorage:
    """The study storage the URL names, with heartbeats (and a retry of trials whose worker died).

    `journal:///path/study.log` is Optuna's journal file (its folder must exist); anything else is
    an SQLAlchemy URL (PostgreSQL for several machines). Raises StudyStorageError naming the URL
    (password masked) and the reason when the storage cannot be opened.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=tuning.retries) if tuning.retries else None
        if url.startswith(JOURNAL_SCHEME):
            path = Path(url[len(JOURNAL_SCHEME) :])
            if not path.is_absolute():
                raise StudyStorageError(f"study storage {url}: give an absolute path (journal:///folder/study.log)")
            if not path.parent.is_dir():
                raise StudyStorageError(f"study storage {url}: the folder {path.parent} does not exist")
            try:
                return JournalHeartbeatStorage(path, tuning.heartbeat_seconds, tuning.grace_seconds, retry)
            except OSError as err:
                raise StudyStorageError(f"study storage {url}: {_first_line(err)}") from None
        try:
            return RDBStorage(
                url,
                heartbeat_interval=tuning.heartbeat_seconds,
                grace_period=tuning.grace_seconds,
                heartbeat_stale_trial_callback=retry,
            )
        except Exception as err:  # noqa: BLE001 - SQLAlchemy, the driver or a bad URL: one line either way
            raise StudyStorageError(f"study storage {masked_url(url)}: {_first_line(err)}") from None


def check_storage(url: str) -> str:
    """Open the storage once (a command checks it before any work); its kind."""
    open_storage(url, TuningConfig())
    return storage_kind(url)


class SharedStudy(optuna.Study):
    """A study in a shared storage that knows the storage's URL, so worker processes can open it too."""

    def __init__(
        self,
        study_name: str,
        storage: BaseStorage,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        url: str,
    ) -> None:
        super().__init__(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        self.storage_url = url


def make_pruner(tuning: TuningConfig) -> optuna.pruners.BasePruner:
    """A median pruner when pruning is on, else none."""
    if tuning.pruning:
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=20)
    return optuna.pruners.NopPruner()


def create_study(name: str, tuning: TuningConfig, storage: str | None) -> optuna.Study:
    """A maximising TPE study (with a median pruner when pruning is on), in memory or in `storage`.

    A study in a storage has heartbeats (see `open_storage`), so workers sharing it can fail the
    trials of workers that died.
    """
    pruner = make_pruner(tuning)
    sampler = optuna.samplers.TPESampler(seed=tuning.seed)
    with _optuna_quiet():
        if storage is None:
            return optuna.create_study(study_name=name, direction="maximize", sampler=sampler, pruner=pruner)
        opened = open_storage(storage, tuning)
        optuna.create_study(
            study_name=name, storage=opened, load_if_exists=True, direction="maximize", sampler=sampler, pruner=pruner
        )
        return SharedStudy(name, opened, sampler, pruner, storage)


class TrialProgress:
    """An Optuna callback that logs "<label>: trial n/N, best <metric> x so far" at a readable rate."""

    def __init__(self, label: str, metric: str, trials: int, every: float = PROGRESS_SECONDS) -> None:
        self.label = label
        self.metric = metric
        self.trials = trials
        self.every = every
        self.done = 0
        self.pruned = 0
        self.last: float | None = None  # perf_counter of the last line

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Count the finished trial; log a line for the first, the last, and every `every` seconds between."""
        self.done += 1
        self.pruned += trial.state == optuna.trial.TrialState.PRUNED
        now = time.perf_counter()
        if self.last is not None and self.done < self.trials and now - self.last < self.every:
            return
        self.last = now
        log.info("%s", self.line(study))

    def line(self, study: optuna.Study) -> str:
        """The progress line as it stands."""
        try:
            best = f"best {self.metric} {study.best_value:.4f} so far"
        except ValueError:  # no trial completed yet
            best = "no trial completed yet"
        pruned = f", {self.pruned} pruned" if self.pruned else ""
        return f"{self.label}: trial {self.done}/{self.trials}, {best}{pruned}"


def run_study(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    tuning: TuningConfig,
    label: str | None = None,
    metric: str = "score",
) -> StudySummary:
    """Run trials until the trial count or the time budget is spent (checked between trials).

    Progress goes to the `custintel.models` logger, each line starting with `label` (the study's
    name when not given) and naming the best `metric` so far. With `tuning.workers` above 1 the
    trials run in that many worker processes on the study's shared storage (`run_study_in_workers`).
    """
    name = label or study.study_name
    if tuning.workers > 1:
        try:
            job = pickle.dumps(WorkerJob(study.study_name, objective, tuning, name), protocol=5)
        except (pickle.PicklingError, AttributeError, TypeError):
            log.info("%s: its objective cannot be sent to worker processes; tuned in this process", name)
        else:
            return run_study_in_workers(study, job, tuning, name, metric)
    start = time.perf_counter()
    progress = TrialProgress(name, metric, tuning.trials)
    budget = f" within {tuning.timeout_seconds:g} s" if tuning.timeout_seconds else ""
    log.info("%s: tuning, %d trial(s)%s", progress.label, tuning.trials, budget)
    with _optuna_quiet():
        study.optimize(
            objective,
            n_trials=tuning.trials,
            timeout=tuning.timeout_seconds,
            gc_after_trial=False,
            callbacks=[progress],
        )
    if tuning.timeout_seconds and progress.done < tuning.trials:
        log.info(
            "%s: tuning stopped by its %g s budget after %d of %d trials",
            progress.label, tuning.timeout_seconds, progress.done, tuning.trials,
        )  # fmt: skip
    return summarize_study(study, time.perf_counter() - start)


def summarize_study(
    study: optuna.Study, seconds: float, workers: int = 1, exits: list[WorkerExit] | None = None
) -> StudySummary:
    """The study's trials counted by state, and its best trial (an error when none completed)."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    if not states[TrialState.COMPLETE]:
        raise RuntimeError(f"study {study.study_name} completed no trial within its budget")
    history = [
        {"number": t.number, "state": t.state.name, "value": t.value, **t.params}
        for t in trials
    ]  # fmt: skip
    best = study.best_trial
    return StudySummary(
        trials=len(trials),
        completed=states[TrialState.COMPLETE],
        pruned=states[TrialState.PRUNED],
        best_value=float(study.best_value),
        best_params=dict(best.params),
        seconds=seconds,
        history=history,
        failed=states[TrialState.FAIL],
        workers=workers,
        worker_exits=list(exits or []),
        best_user_attrs=dict(best.user_attrs),
    )


# -- several worker processes on one study ---------------------------------------------------------------------


@dataclass
class WorkerJob:
    """What a worker process needs besides the storage URL (which it reads from STORAGE_ENV)."""

    study_name: str
    objective: Callable[[optuna.Trial], float]
    tuning: TuningConfig
    label: str


WORKER_ATTR = "worker"  # a trial's user attribute: host:pid of the process that ran it
POLL_SECONDS = 0.5  # a worker with nothing to start looks again this often (a running trial may die)


class _Heartbeat:
    """Record a trial's heartbeat now and every interval, in a daemon thread, until the block ends."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        assert isinstance(storage, BaseHeartbeat)
        self.storage = storage
        self.trial_id = trial_id
        self.interval = storage.get_heartbeat_interval() or 10
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> _Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def claimed_before(study: optuna.Study, number: int) -> int:
    """Trials numbered below `number` that are complete, running or queued: they may all complete."""
    claims = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=claims))


def run_one_trial(study: optuna.Study, objective: Callable[[optuna.Trial], float], label: str, wanted: int) -> str:
    """Ask for a trial (a queued retry first), run it under a heartbeat and tell its result; its outcome.

    The outcome is the trial's state name, "surplus" (two workers asked at once and enough trials
    were already claimed: the later one is failed before it runs, so the study never ends with more
    than `wanted` complete trials), or "stale" (optuna #5582: another worker failed this trial while
    it ran, because its heartbeat stopped, say the process was suspended; its result is dropped with
    one line, never an "already finished" error).
    """
    storage = study._storage
    with warnings.catch_warnings():  # we run the heartbeat ourselves, not through Study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
        trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    if claimed_before(study, trial.number) >= wanted:
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return "surplus"
    value: float | None = None
    state = TrialState.COMPLETE
    try:
        with _Heartbeat(storage, trial._trial_id):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except UpdateFinishedTrialError:  # reporting a step of a trial another worker has failed
                _log_stale(label, trial.number)
                return "stale"
            except Exception:
                with _dropping_if_finished(label, trial.number):
                    study.tell(trial, state=TrialState.FAIL)
                raise
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except ValueError as err:
        # Study.tell refuses a trial that is no longer RUNNING ("Cannot tell a FAIL trial."): only that
        # case is the race, anything else is re-raised.
        if not storage.get_trial(trial._trial_id).state.is_finished():
            raise
        _log_stale(label, trial.number, err)
        return "stale"
    return state.name


@contextmanager
def _dropping_if_finished(label: str, number: int) -> Iterator[None]:
    try:
        yield
    except (ValueError, UpdateFinishedTrialError):
        _log_stale(label, number)


def _log_stale(label: str, number: int, err: BaseException | None = None) -> None:
    log.warning(
        "%s: trial %d was failed by another worker while this one ran it (its heartbeat stopped); "
        "its result is dropped",
        label, number,
    )  # fmt: skip


def work_on_study(
    study: optuna.Study, objective: Callable[[optuna.Trial], float], tuning: TuningConfig, label: str
) -> Counter[str]:
    """A worker's loop: run trials until the study holds `tuning.trials` COMPLETE ones or the time is up.

    Before each trial, trials whose worker died (heartbeat older than the grace period) are failed
    and queued again (the storage's retry callback). A new trial starts only while fewer than the
    requested number are complete or running; otherwise the worker waits, since a running trial may
    still die and need a replacement. Returns how its trials ended.
    """
    deadline = time.monotonic() + tuning.timeout_seconds if tuning.timeout_seconds else math.inf
    outcomes: Counter[str] = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        while time.monotonic() < deadline:
            fail_stale_trials(study)
            states = Counter(t.state for t in study.get_trials(deepcopy=False))
            if states[TrialState.COMPLETE] >= tuning.trials:
                break
            if states[TrialState.COMPLETE] + states[TrialState.RUNNING] >= tuning.trials:
                time.sleep(POLL_SECONDS)
                continue
            outcomes[run_one_trial(study, objective, label, tuning.trials)] += 1
    return outcomes


def load_worker_study(url: str, job: WorkerJob, index: int) -> optuna.Study:
    """The shared study as a worker opens it: its own sampler seed, so workers do not draw the same points."""
    storage = open_storage(url, job.tuning)
    sampler = optuna.samplers.TPESampler(seed=job.tuning.seed + 1000 * index)
    with _optuna_quiet():
        return optuna.load_study(
            study_name=job.study_name, storage=storage, sampler=sampler, pruner=make_pruner(job.tuning)
        )


def start_worker(job_path: Path, index: int, url: str, err_path: Path) -> subprocess.Popen[bytes]:
    """One worker process (`python -m models.tuning_worker`); the storage URL goes in its environment."""
    with err_path.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "models.tuning_worker", str(job_path), str(index)],
            env={**os.environ, STORAGE_ENV: url},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _worker_exit(index: int, process: subprocess.Popen[bytes], err_path: Path) -> WorkerExit:
    text = err_path.read_text(errors="replace") if err_path.exists() else ""
    lines = [line for line in text.splitlines() if line.strip()]
    return WorkerExit(index, process.pid, int(process.returncode), "Traceback (most recent call last)" in text,
                      lines[-1].strip() if lines else "")  # fmt: skip


def run_study_in_workers(
    study: optuna.Study,
    job: bytes,
    tuning: TuningConfig,
    label: str,
    metric: str = "score",
) -> StudySummary:
    """Run the study in `tuning.workers` processes sharing its storage; wait; count its trials.

    `job` is the pickled `WorkerJob` (the objective with its data) every worker loads.

    The workers may be killed at any point: the survivors fail a dead worker's running trial once
    its heartbeat is older than the grace period, queue it again, and keep going until the study
    holds the requested number of COMPLETE trials (or the time budget is spent). A trial left
    RUNNING when every worker is gone is failed here, after the grace period.
    """
    url = getattr(study, "storage_url", None)
    if not isinstance(study, SharedStudy) or url is None:
        raise StudyStorageError(
            f"{label}: {tuning.workers} tuning workers need a study storage (--study-storage: a PostgreSQL URL "
            "or journal:///folder/study.log)"
        )
    start = time.perf_counter()
    budget = f" within {tuning.timeout_seconds:g} s" if tuning.timeout_seconds else ""
    log.info("%s: tuning, %d complete trial(s)%s, in %d worker processes on %s storage",
             label, tuning.trials, budget, tuning.workers, storage_kind(url))  # fmt: skip
    exits: list[WorkerExit] = []
    with tempfile.TemporaryDirectory(prefix="custintel-tuning-") as tmp:
        job_path = Path(tmp) / "job.pkl"
        job_path.write_bytes(job)  # the folder is private to this user (mkdtemp: 0700)
        errs = [Path(tmp) / f"worker-{i}.err" for i in range(tuning.workers)]
        processes = [start_worker(job_path, i, url, errs[i]) for i in range(tuning.workers)]
        # Generous: the budget is checked between trials, and a worker may wait out a grace period.
        limit = (tuning.timeout_seconds or math.inf) + 120 + 4 * tuning.heartbeat_seconds
        for process in processes:
            try:
                process.wait(timeout=max(1.0, limit - (time.perf_counter() - start)))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        exits = [_worker_exit(i, p, errs[i]) for i, p in enumerate(processes)]
    for ended in exits:
        (log.warning if ended.exit_code else log.info)("%s: %s", label, ended.describe())
    _fail_abandoned(study, tuning)
    summary = summarize_study(study, time.perf_counter() - start, tuning.workers, exits)
    log.info("%s: %d complete, %d pruned, %d failed trial(s); best %s %.4f", label, summary.completed,
             summary.pruned, summary.failed, metric, summary.best_value)  # fmt: skip
    return summary


def _fail_abandoned(study: optuna.Study, tuning: TuningConfig) -> None:
    """Trials still RUNNING once every worker has gone: wait out their grace period, then fail them."""
    running: Container[TrialState] = (TrialState.RUNNING,)
    if not study.get_trials(deepcopy=False, states=running):
        return
    grace = tuning.grace_seconds or 2 * tuning.heartbeat_seconds
    deadline = time.monotonic() + grace + tuning.heartbeat_seconds + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        while study.get_trials(deepcopy=False, states=running) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            fail_stale_trials(study)


def positive_proba(model: Any, X: Any) -> np.ndarray:  # noqa: N803
    """The positive class's probability of a binary classifier, as a float array."""
    return np.asarray(model.predict_proba(X), dtype="float64")[:, 1]


@dataclass
class TunedClassifier:
    """The best trial's fitted LightGBM classifier and the study behind it."""

    model: lgb.LGBMClassifier
    params: dict[str, Any]
    study: StudySummary


LEAF_SHARE = 0.1  # a leaf of at most this share of the training rows: larger and the trees cannot split at all


def scaled_to_rows(config: LightGBMConfig, rows: int) -> LightGBMConfig:
    """The config with `min_child_samples` at most LEAF_SHARE of the training rows.

    A search space sized for a large customer base (leaves of 50 to 800 rows) on a table of
    a few hundred rows draws trees that cannot split: a constant model. Ranges already
    below the cap are returned unchanged, so large tables are searched as configured.
    """
    cap = max(2, int(rows * LEAF_SHARE))
    update: dict[str, Any] = {}
    space = config.search.get("min_child_samples")
    if space is not None and space.high > cap:
        low = min(space.low, max(1, cap // 2))
        update["search"] = {**config.search, "min_child_samples": space.model_copy(update={"low": low, "high": cap})}
    fixed = config.fixed.get("min_child_samples")
    if isinstance(fixed, (int, float)) and not isinstance(fixed, bool) and fixed > cap:
        update["fixed"] = {**config.fixed, "min_child_samples": cap}
    if not update:
        return config
    log.info("min_child_samples capped at %s (%.0f%% of the %s training rows)", cap, LEAF_SHARE * 100, f"{rows:,}")
    return config.model_copy(update=update)


def lightgbm_params(config: LightGBMConfig, drawn: dict[str, Any], seed: int) -> dict[str, Any]:
    """The full parameter set of one LightGBM fit."""
    return {
        "n_estimators": config.max_trees,
        "n_jobs": config.threads,
        "random_state": seed,
        "verbose": -1,
        **config.fixed,
        **drawn,
    }


def tune_lightgbm_classifier(
    train: tuple[pd.DataFrame, np.ndarray],
    valid: tuple[pd.DataFrame, np.ndarray],
    config: LightGBMConfig,
    tuning: TuningConfig,
    study: optuna.Study,
    clock: FitClock,
    sample_weight: np.ndarray | None = None,
    label: str | None = None,
) -> TunedClassifier:
    """Search LightGBM parameters by validation AUC, with early stopping on the validation cutoffs.

    Keeps the best trial's model, so the final model is not fitted a second time. `label` starts
    the progress lines (the family: "churn: trial 3/20, best AUC 0.7810 so far").
    """
    (x_train, y_train), (_, y_valid) = train, valid
    if np.unique(y_train).size < 2 or np.unique(y_valid).size < 2:
        raise ValueError("the training and the validation labels each need both classes")
    objective = LightGBMObjective(train, valid, config, tuning, sample_weight, clock)
    summary = run_study(study, objective, tuning, label, "AUC")
    if summary.workers > 1:  # the fits ran in the worker processes, for the whole of the study's time
        clock.seconds += summary.seconds
    if objective.best_model is not None and summary.workers == 1:
        return TunedClassifier(objective.best_model, objective.best_params, summary)
    # The trials ran in worker processes: fit the best trial's parameters here, for its best iteration.
    params = {**lightgbm_params(config, summary.best_params, tuning.seed),
              "n_estimators": int(summary.best_user_attrs.get("best_iteration", config.max_trees))}  # fmt: skip
    model = lgb.LGBMClassifier(**params)
    with clock.fitting():
        model.fit(x_train, y_train, sample_weight=sample_weight)
    return TunedClassifier(model, params, summary)


class LightGBMObjective:
    """Validation AUC of a LightGBM classifier with the trial's parameters (picklable: workers run it too).

    Early stopping on the validation rows; the best iteration is kept as the trial's user attribute
    `best_iteration`. In the process that runs it, the best model so far is kept, so the final
    model is not fitted a second time.
    """

    def __init__(
        self,
        train: tuple[pd.DataFrame, np.ndarray],
        valid: tuple[pd.DataFrame, np.ndarray],
        config: LightGBMConfig,
        tuning: TuningConfig,
        sample_weight: np.ndarray | None = None,
        clock: FitClock | None = None,
    ) -> None:
        self.train = train
        self.clock = clock or FitClock()
        self.valid = valid
        self.config = config
        self.tuning = tuning
        self.sample_weight = sample_weight
        self.best_score = -math.inf
        self.best_model: lgb.LGBMClassifier | None = None
        self.best_params: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "best_model": None, "best_params": {}, "best_score": -math.inf}

    def __call__(self, trial: optuna.Trial) -> float:
        """Fit with the trial's parameters; the validation AUC."""
        (x_train, y_train), (x_valid, y_valid) = self.train, self.valid
        config = self.config
        params = lightgbm_params(config, suggest(trial, config.search), self.tuning.seed)
        model = lgb.LGBMClassifier(**params)
        callbacks: list[Callable[..., Any]] = [lgb.early_stopping(config.early_stopping_rounds, verbose=False)]
        if self.tuning.pruning:
            callbacks.append(LightGBMPruningCallback(trial, "auc", valid_name="valid"))
        with self.clock.fitting():
            model.fit(
                x_train,
                y_train,
                sample_weight=self.sample_weight,
                eval_X=(x_valid,),
                eval_y=(y_valid,),
                eval_names=["valid"],
                eval_metric="auc",
                callbacks=callbacks,
            )
        score = float(roc_auc_score(y_valid, positive_proba(model, x_valid)))
        best_iteration = int(model.best_iteration_ or params["n_estimators"])
        trial.set_user_attr("best_iteration", best_iteration)
        if score > self.best_score:
            self.best_score, self.best_model = score, model
            self.best_params = {**params, "n_estimators": best_iteration}
        return score
