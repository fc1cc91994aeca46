"""One Optuna study shared by worker processes that get killed (issue 23, item 5).

Three workers tune a real LightGBM objective on a few hundred synthetic rows, on Optuna's journal
file and on PostgreSQL; one is SIGKILLed in the middle of a trial. The study still ends with
exactly the requested COMPLETE trials, the killed trial is FAIL (and run again), no worker leaves
a traceback, and the parent reports the counts. A worker suspended until another fails its trial
(optuna #5582) drops its result with one line instead of an "already finished" error.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from custintel.settings import Settings
from flows.cli import app
from models.config import LightGBMConfig, ParamRange, TuningConfig
from models.registry import CHALLENGER, Registry
from models.tuning import (
    WORKER_ATTR,
    FitClock,
    JournalHeartbeatStorage,
    StudyStorageError,
    TunedClassifier,
    create_study,
    masked_url,
    open_storage,
    run_one_trial,
    run_study,
    storage_kind,
    tune_lightgbm_classifier,
)

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
TRIALS = 4
# Trials of 4,000 trees on 1,500 rows (no early stop before them): about 1.3 s on a quiet core, long enough that a
# worker is caught mid-trial (1,500 trees on 300 rows took 0.2 s: shorter than the interrupter's look).
TRAIN_ROWS = 1500
CONFIG = LightGBMConfig(
    max_trees=4000,
    early_stopping_rounds=4000,
    threads=1,
    fixed={"learning_rate": 0.01},
    search={"num_leaves": ParamRange(low=4, high=32, integer=True)},
)


def _tuning(workers: int, pruning: bool = False) -> TuningConfig:
    return TuningConfig(trials=TRIALS, timeout_seconds=240, pruning=pruning, workers=workers, heartbeat_seconds=1,
                        grace_seconds=2, retries=1)  # fmt: skip


def _rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 8)), columns=[f"x{i}" for i in range(8)])
    y = (x.x0 + 0.5 * x.x1 - 0.3 * x.x2 + rng.normal(size=n) > 0).astype(int).to_numpy()
    return x, y


@pytest.fixture
def postgres_storage() -> Iterator[str]:
    """A fresh PostgreSQL database for one test's study, dropped afterwards."""
    import psycopg

    name = f"custintel_optuna_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _storage_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "journal":
        return f"journal://{tmp_path / 'study.log'}"
    return str(request.getfixturevalue("postgres_storage"))


class Interrupter(threading.Thread):
    """Watches the study from outside; signals the worker of the first running trial after `delay` seconds."""

    def __init__(self, url: str, name: str, sig: signal.Signals, delay: float = 0.3, resume_after_fail: bool = False):
        super().__init__(daemon=True)
        self.url, self.name, self.sig, self.delay, self.resume = url, name, sig, delay, resume_after_fail
        self.pid: int | None = None
        self.trial_number: int | None = None
        self.error: BaseException | None = None

    def _study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=open_storage(self.url, _tuning(1)))

    def run(self) -> None:
        try:
            study = self._study()
            deadline = time.monotonic() + 120
            while self.pid is None and time.monotonic() < deadline:
                for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if WORKER_ATTR in trial.user_attrs:
                        self.trial_number = trial.number
                        self.pid = int(str(trial.user_attrs[WORKER_ATTR]).rsplit(":", 1)[1])
                        break
                else:
                    time.sleep(0.1)
            assert self.pid is not None, "no trial started"
            time.sleep(self.delay)
            os.kill(self.pid, self.sig)
            if self.resume:  # SIGCONT once another worker has failed the suspended worker's trial
                while time.monotonic() < deadline:
                    if study.trials[self.trial_number].state == TrialState.FAIL:
                        break
                    time.sleep(0.2)
                os.kill(self.pid, signal.SIGCONT)
        except BaseException as err:  # surfaced by the test
            self.error = err


def _tune(url: str, tuning: TuningConfig, interrupter_of: signal.Signals, resume: bool = False) -> tuple[
    TunedClassifier, Interrupter, optuna.Study
]:  # fmt: skip
    name = f"workers-{uuid.uuid4().hex[:8]}"
    study = create_study(name, tuning, url)
    interrupter = Interrupter(url, name, interrupter_of, resume_after_fail=resume)
    interrupter.start()
    train, valid = _rows(TRAIN_ROWS, 0), _rows(200, 1)
    tuned = tune_lightgbm_classifier(train, valid, CONFIG, tuning, study, FitClock(), label="test")
    interrupter.join(10)
    assert interrupter.error is None, interrupter.error
    return tuned, interrupter, optuna.load_study(study_name=name, storage=open_storage(url, tuning))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_study_ends_with_the_requested_complete_trials_when_a_worker_is_killed_mid_trial(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    url = _storage_url(kind, tmp_path, request)
    caplog.set_level(logging.INFO, logger="custintel.models")
    tuned, killer, study = _tune(url, _tuning(3), signal.SIGKILL)

    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == TRIALS and TrialState.RUNNING not in states
    killed = study.trials[killer.trial_number or 0]
    assert killed.state == TrialState.FAIL and killed.user_attrs[WORKER_ATTR].endswith(f":{killer.pid}")
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params  # run again, with the same parameters

    exits = {e.pid: e for e in tuned.study.worker_exits}
    assert exits[killer.pid].exit_code == -signal.SIGKILL
    assert [e.exit_code for pid, e in exits.items() if pid != killer.pid] == [0, 0]
    assert not any(e.traceback for e in exits.values())
    assert tuned.study.completed == TRIALS and tuned.study.failed == states.count(TrialState.FAIL) >= 1
    assert tuned.study.workers == 3 and tuned.study.as_metrics()["tuning_failed"] >= 1
    assert "was killed by SIGKILL" in caplog.text
    assert f"{TRIALS} complete, 0 pruned, {tuned.study.failed} failed trial(s)" in caplog.text

    # The parent fits the best trial's parameters for its best iteration: a real, better-than-chance model.
    best = study.best_trial
    assert tuned.params["num_leaves"] == best.params["num_leaves"]
    assert tuned.params["n_estimators"] == best.user_attrs["best_iteration"]
    x_valid, y_valid = _rows(200, 1)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(y_valid, tuned.model.predict_proba(x_valid)[:, 1])
    assert auc == pytest.approx(best.value, abs=1e-9) and auc > 0.75
    assert storage_kind(url) == kind


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_resumed_after_its_trial_was_failed_drops_its_result_in_one_line(tmp_path: Path) -> None:
    """optuna #5582: the suspended worker comes back to a trial already failed; no 'already finished' error."""
    url = f"journal://{tmp_path / 'study.log'}"
    tuned, stopper, study = _tune(url, _tuning(2), signal.SIGSTOP, resume=True)

    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == TRIALS
    assert study.trials[stopper.trial_number or 0].state == TrialState.FAIL
    (resumed,) = [e for e in tuned.study.worker_exits if e.pid == stopper.pid]
    assert resumed.exit_code == 0 and not resumed.traceback
    assert "1 stale" in resumed.last_line  # its summary line: the dropped trial counted as stale
    assert all(e.exit_code == 0 and not e.traceback for e in tuned.study.worker_exits)


@pytest.mark.parametrize("how", ["tell", "report"])
def test_telling_or_reporting_a_trial_another_worker_failed_is_one_log_line(
    how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"journal://{tmp_path / 'study.log'}"
    tuning = _tuning(1)
    study = create_study("race", tuning, url)
    other = open_storage(url, tuning)  # another worker's handle on the same journal

    def objective(trial: optuna.Trial) -> float:
        other.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)  # its heartbeat check failed us
        if how == "report":
            trial.report(0.5, step=1)
        return 0.5

    caplog.set_level(logging.WARNING, logger="custintel.models")
    assert run_one_trial(study, objective, "race", wanted=3) == "stale"
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert caplog.text.count("was failed by another worker while this one ran it") == 1


def test_two_workers_failing_the_same_stale_trial_queue_one_retry(tmp_path: Path) -> None:
    url = f"journal://{tmp_path / 'study.log'}"
    tuning = _tuning(1)
    first = create_study("stale", tuning, url)
    trial = first.ask()
    storage = open_storage(url, tuning)
    assert isinstance(storage, JournalHeartbeatStorage)
    storage.record_heartbeat(trial._trial_id)
    old = time.time() - 60
    os.utime(storage.heartbeat_dir / str(trial._trial_id), (old, old))  # its worker stopped a minute ago
    second = optuna.load_study(study_name="stale", storage=storage)
    ids = storage._get_stale_trial_ids(second._study_id)
    assert ids == [trial._trial_id]
    optuna.storages.fail_stale_trials(first)
    optuna.storages.fail_stale_trials(second)  # sees it failed already: nothing to do, no error
    states = [t.state for t in second.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]  # one retry queued, not two


def test_an_unreachable_or_unusable_study_storage_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StudyStorageError, match=r"postgres:\*\*\*@127\.0\.0\.1:1/nothing: .*refused"):
        open_storage("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/nothing", _tuning(2))
    assert masked_url("postgresql://me:pa:ss@host/db") == "postgresql://me:***@host/db"

    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    result = runner.invoke(app, [*home, "train", "churn", "--tuning-workers", "2", "--study-storage",
                                 "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/nothing"])  # fmt: skip
    assert result.exit_code == 1 and "s3cret" not in result.output
    assert "postgresql+psycopg://postgres:***@127.0.0.1:1/nothing" in result.output
    assert "refused" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1

    missing = tmp_path / "nowhere" / "study.log"
    result = runner.invoke(app, [*home, "train", "churn", "--study-storage", f"journal://{missing}"])
    assert result.exit_code == 1 and f"the folder {missing.parent} does not exist" in result.output

    result = runner.invoke(app, [*home, "train", "churn", "--tuning-workers", "3"])
    assert result.exit_code == 1 and "--tuning-workers 3 needs a study storage" in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_training_with_tuning_workers_records_the_study_in_the_run(
    trainable: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTINTEL_TRAINING_CONFIG", str(trainable.training_config))
    journal = tmp_path / "studies" / "churn.log"
    journal.parent.mkdir()
    result = CliRunner().invoke(app, ["--home", str(trainable.home_dir), "train", "churn", "--engine", "local",
                                      "--tuning-workers", "2", "--study-storage", f"journal://{journal}"])  # fmt: skip
    assert result.exit_code == 0, result.output

    registry = Registry(trainable)
    version = registry.alias_version("custintel-churn", CHALLENGER)
    run = registry.client.get_run(registry.client.get_model_version("custintel-churn", str(version)).run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["tuning_storage"] == "journal" and params["tuning_workers"] == "2"
    assert params["tuning_study"].startswith("custintel-test-") and params["tuning_study"].endswith("-churn")
    assert metrics["tuning_completed"] == 2 and metrics["tuning_failed"] == 0 and metrics["tuning_workers"] == 2
    study = optuna.load_study(
        study_name=params["tuning_study"], storage=open_storage(f"journal://{journal}", _tuning(1))
    )
    workers = {t.user_attrs[WORKER_ATTR] for t in study.trials}
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2 and str(os.getpid()) not in str(workers)
    assert metrics["test_auc"] > 0.5  # the best trial's parameters, refitted in the parent: a working model


def test_of_two_trials_started_at_once_the_later_stands_down_when_enough_are_claimed(tmp_path: Path) -> None:
    study = create_study("claims", _tuning(1), f"journal://{tmp_path / 'study.log'}")
    first = study.ask()  # another worker's trial, running: with one trial wanted, it is enough
    assert run_one_trial(study, lambda trial: 1.0, "claims", wanted=1) == "surplus"
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL]
    assert study.trials[1].user_attrs["surplus"] is True
    study.tell(first, 0.5)
    assert run_one_trial(study, lambda trial: trial.suggest_float("x", 0, 1), "claims", wanted=3) == "COMPLETE"


def test_an_objective_that_cannot_be_sent_to_workers_is_tuned_in_this_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tuning = _tuning(3).model_copy(update={"trials": 3})
    study = create_study("local", tuning, f"journal://{tmp_path / 'study.log'}")
    caplog.set_level(logging.INFO, logger="custintel.models")
    summary = run_study(study, lambda trial: trial.suggest_float("x", 0, 1), tuning, "recommendation")
    assert summary.completed == 3 and summary.workers == 1
    assert "recommendation: its objective cannot be sent to worker processes; tuned in this process" in caplog.text
    with pytest.raises(StudyStorageError, match="3 tuning workers need a study storage"):
        tune_lightgbm_classifier(_rows(100, 0), _rows(100, 1), CONFIG, tuning, create_study("m", tuning, None),
                                 FitClock(), label="churn")  # fmt: skip
