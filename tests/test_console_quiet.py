"""A quiet, informative console: no library warning a user cannot act on, progress on long steps.

Training a small churn model and logging it (and a recommender) to a temporary MLflow registry
raises no warning and prints nothing of MLflow's; Optuna studies, Splink's stages and lifelines'
convergence trouble are reported as records of ours on `custintel.*` loggers.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
import warnings
from pathlib import Path

import implicit.utils
import numpy as np
import optuna
import pandas as pd
import pytest

from custintel.settings import Settings
from features.identity import probabilistic
from features.identity.config import load_identity_config
from features.identity.resolve import ResolveOptions, resolve_records
from features.identity.store import load_identity_records
from models import churn as churn_module
from models import registry as registry_module
from models.churn import CoxTimeToChurn, train_churn
from models.config import ChurnConfig, LightGBMConfig, TimeSplit, TuningConfig
from models.recommendation import Interactions, fit_als, popularity_recommender
from models.registry import Registry
from models.result import LoggedModel, TrainedModel
from models.splits import LabelledTable, hold_out_for_calibration, stage_by_cutoff
from models.tabular import infer_schema
from models.tuning import FitClock, TrialProgress, create_study, run_study

CUTOFFS = [dt.date(2025, 1, 1), dt.date(2025, 4, 1), dt.date(2025, 7, 1), dt.date(2025, 10, 1)]
# What MLflow printed on the console before: its log records and `register_model`'s own lines.
MLFLOW_CONSOLE = ("mlflow.", "Successfully registered model", "Created version", "already exists")


def small_churn_table(customers: int = 300, seed: int = 0) -> tuple[LabelledTable, ChurnConfig]:
    """Four cutoffs of a small population, counts as integers (what made MLflow hint about its schema)."""
    rng = np.random.default_rng(seed)
    frames = []
    for cutoff in CUTOFFS:
        x = rng.normal(size=customers)
        frame = pd.DataFrame(
            {
                "customer_key": [f"C{i}" for i in range(customers)],
                "as_of": pd.Timestamp(cutoff),
                "tickets_90d": rng.poisson(2, customers),
                "spend_90d": rng.gamma(2.0, 10.0, customers),
                "x": x,
                "region": rng.choice(["north", "south", "east"], customers),
            }
        )
        frame["churn_90d"] = rng.random(customers) < 1 / (1 + np.exp(-(x - 1)))
        frame["time_to_churn_days"] = rng.integers(1, 365, customers).astype(float)
        frame["churn_observed"] = frame["churn_90d"].astype(float)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    split = TimeSplit(train_as_of=CUTOFFS[:2], valid_as_of=[CUTOFFS[2]], test_as_of=[CUTOFFS[3]])
    config = ChurnConfig(
        feature_sets=["small@1"],
        split=split,
        tuning=TuningConfig(trials=2),
        lightgbm=LightGBMConfig(max_trees=30, early_stopping_rounds=5),
    )
    table = LabelledTable(
        frame, "customer_key", "churn_90d", stage_by_cutoff(frame["as_of"], split), "as_of",
        "time_to_churn_days", "churn_observed",
    )  # fmt: skip
    return hold_out_for_calibration(table, config.calibration_share, config.calibration_salt), config


def small_interactions(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items = [f"U{i}" for i in range(40)], [f"P{j}" for j in range(8)]
    history = pd.DataFrame({"user": rng.choice(users, 300), "item": rng.choice(items, 300), "weight": 1.0})
    holdout = pd.DataFrame({"user": rng.choice(users, 40), "item": rng.choice(items, 40)})
    return Interactions(history, holdout, catalogue=tuple(items))


def library_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Every caught warning, as category and message (the list must be empty)."""
    return [f"{w.category.__name__} ({w.filename}:{w.lineno}): {str(w.message)[:160]}" for w in caught]


def test_training_and_logging_a_churn_model_raise_no_warning_and_print_nothing_of_mlflows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gc

    data, config = small_churn_table()
    # Earlier tests' garbage in this process (their PostgreSQL connections: ResourceWarning when collected) is theirs
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = train_churn(data, config, 20, create_study("quiet-churn", config.tuning, None), FitClock())
        registry = Registry(Settings(home=tmp_path / "home"))
        record = registry.log_training_run(
            trained, registry.ensure_experiment("quiet"), {}, {}, str(tmp_path / "train.parquet")
        )
        # A second registration of the same name ("already exists ... creating a new version") is quiet too.
        registry.log_training_run(trained, registry.ensure_experiment("quiet"), {}, {}, str(tmp_path / "t.parquet"))
    assert record.models[0].version == 1
    assert library_warnings(caught) == []
    printed = capsys.readouterr()
    assert not [line for line in (printed.out + printed.err).splitlines() if any(m in line for m in MLFLOW_CONSOLE)]


def test_logging_a_pyfunc_recommender_is_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = small_interactions()
    model = popularity_recommender(data, 3)
    example = pd.DataFrame({"customer_key": ["U1", "U2", "unknown-customer"]})
    trained = TrainedModel(
        "recommendation", [LoggedModel("model", model, "pyfunc", example, "predict", registered_model="quiet-rec")],
        params={"k": 3}, metrics={"test_ndcg_at_3": 0.5}, training_frame=data.history,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = Registry(Settings(home=tmp_path / "home"))
        registry.log_training_run(trained, registry.ensure_experiment("quiet"), {}, {}, str(tmp_path / "i.parquet"))
    assert library_warnings(caught) == []
    printed = capsys.readouterr()
    assert not [line for line in (printed.out + printed.err).splitlines() if any(m in line for m in MLFLOW_CONSOLE)]


def test_the_registry_silences_only_the_messages_it_names(capsys: pytest.CaptureFixture[str]) -> None:
    """Another warning, another record of MLflow's, another line on stderr: all still reach the user."""
    mlflow_sklearn = logging.getLogger("mlflow.sklearn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with registry_module._quiet_mlflow():  # noqa: SLF001
            warnings.warn("Hint: Inferred schema contains integer column(s). ...", UserWarning, stacklevel=1)
            warnings.warn("something MLflow really wants you to know", UserWarning, stacklevel=1)
            with registry_module._without_registration_chatter():  # noqa: SLF001
                sys.stderr.write("Successfully registered model 'x'.\nCreated version '3' of model 'x'.\n")
                sys.stderr.write("a real problem\n")
        records: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        keep = Keep()
        mlflow_sklearn.addHandler(keep)
        try:
            with registry_module._quiet_mlflow():  # noqa: SLF001
                mlflow_sklearn.warning("Saving scikit-learn models in the pickle or cloudpickle format requires ...")
                mlflow_sklearn.warning("the model could not be saved")
        finally:
            mlflow_sklearn.removeHandler(keep)
    assert [str(w.message) for w in caught] == ["something MLflow really wants you to know"]
    assert [r.getMessage() for r in records] == ["the model could not be saved"]
    err = capsys.readouterr().err
    assert "a real problem" in err and "Successfully registered" not in err and "Created version" not in err
    # Nothing stays behind: the filters are gone after the block.
    assert not mlflow_sklearn.filters


def test_tuning_reports_trials_with_the_best_value_so_far(caplog: pytest.LogCaptureFixture) -> None:
    tuning = TuningConfig(trials=4, timeout_seconds=None)
    before = optuna.logging.get_verbosity()
    with caplog.at_level(logging.INFO, logger="custintel.models"):
        study = create_study("quiet-tuning", tuning, None)
        run_study(study, lambda trial: trial.suggest_float("x", 0, 1), tuning, "churn", "AUC")
    lines = [r.getMessage() for r in caplog.records if r.name == "custintel.models"]
    assert lines[0] == "churn: tuning, 4 trial(s)"
    # The first and the last trial always; the others only when ten seconds passed since the last line.
    assert lines[1].startswith("churn: trial 1/4, best AUC 0.") and lines[1].endswith(" so far")
    assert lines[-1] == f"churn: trial 4/4, best AUC {study.best_value:.4f} so far"
    assert not [r for r in caplog.records if r.name.startswith("optuna")]
    assert optuna.logging.get_verbosity() == before  # Optuna's level is put back


def test_trial_progress_keeps_a_readable_rate_and_counts_pruned_trials() -> None:
    progress = TrialProgress("propensity", "AUC", trials=5, every=3600)
    study = optuna.create_study(direction="maximize")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("custintel.models")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for number in range(5):
            trial = study.ask()
            if number == 1:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, 0.5 + number / 100)
            progress(study, study.trials[-1])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert lines == [
        "propensity: trial 1/5, best AUC 0.5000 so far",
        "propensity: trial 5/5, best AUC 0.5400 so far, 1 pruned",
    ]


def test_the_recommender_fits_without_implicits_blas_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)  # implicit checks once per process
    params = {"factors": 4, "regularization": 0.05, "alpha": 10.0, "iterations": 2}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = fit_als(small_interactions(), params, 3, 0, 2, FitClock())
    assert library_warnings(caught) == []
    assert model.recommend("U1")


def test_cox_convergence_trouble_is_kept_for_one_line_of_ours() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    # Time to churn ordered exactly by x: complete separation, which lifelines warns about at length.
    duration = np.argsort(np.argsort(-x)).astype(float) + 1
    features = pd.DataFrame({"x": x, "z": rng.normal(size=60)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = CoxTimeToChurn(("x", "z"), (), penalizer=0.0).fit(features, np.c_[duration, np.ones(60)])
    assert library_warnings(caught) == []
    assert model.convergence_warnings_ and all("http" not in w for w in model.convergence_warnings_)
    assert any("complete separation" in w for w in model.convergence_warnings_)


def test_a_long_identity_stage_says_it_is_still_running(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="custintel.identity"):
        with probabilistic._stage("identity: estimating u from up to 10 random pairs", every=0.05):  # noqa: SLF001
            time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.name == "custintel.identity"]
    assert lines[0] == "identity: estimating u from up to 10 random pairs"
    assert any(line.startswith("identity: estimating u from up to 10 random pairs: still running, ") for line in lines)
    assert lines[-1].startswith("identity: estimating u from up to 10 random pairs: done in 0.")


@pytest.mark.slow
def test_identity_resolution_logs_each_splink_stage_without_splinks_own_chatter(
    ingested, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_identity_config()
    records = load_identity_records(ingested.settings, config)
    with caplog.at_level(logging.INFO):
        resolve_records(records, config, ResolveOptions(u_max_pairs=1e5))
    ours = [r.getMessage() for r in caplog.records if r.name == "custintel.identity"]
    for stage in (
        "identity: deterministic pass",
        "identity: estimating the match prior",
        "identity: estimating u from up to 100,000 random pairs",
        "identity: estimating m by EM, session 1/",
        "identity: scoring candidate pairs of",
        "identity: clustering and keys",
        "identity: golden records",
    ):
        assert any(line.startswith(stage) for line in ours), stage
    assert any(": done in " in line for line in ours)
    assert not [r for r in caplog.records if r.name.startswith("splink") and r.levelno >= logging.INFO]
    printed = capsys.readouterr()
    assert "splink" not in (printed.out + printed.err).lower()


def test_the_trainer_reports_cox_convergence_trouble_once_with_what_to_change(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=120)
    frame = pd.DataFrame(
        {
            "customer_key": [f"C{i}" for i in range(120)],
            "x": x,
            "z": rng.normal(size=120),
            "duration": np.argsort(np.argsort(-x)).astype(float) + 1,  # ordered exactly by x: complete separation
            "event": 1.0,
            "label": False,
        }
    )
    stage = pd.Series(np.where(np.arange(120) < 80, "train", "test"), index=frame.index)
    data = LabelledTable(frame, "customer_key", "label", stage, duration="duration", event="event")
    schema = infer_schema(frame, exclude=data.excluded)
    with caplog.at_level(logging.INFO, logger="custintel.models"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = churn_module._fit_survival(data, schema, 0.0, FitClock())  # noqa: SLF001
    assert library_warnings(caught) == []
    problems = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(problems) == 1
    assert problems[0].startswith("churn: the survival model converged poorly (")
    assert problems[0].endswith("a larger churn.survival_penalizer (now 0) usually helps")
