"""Optuna studies: TPE over a configured search space, pruning, a trial and time budget.

The study's storage is in memory unless an RDB URL is given (then several workers can
share one study). Time spent inside model fitting is accumulated on a `FitClock`, so a
run can report how much of its wall time went to orchestration and tracking instead.

A study reports its progress on the `custintel.models` logger ("churn: trial 7/40, best
AUC 0.7810 so far"): the first trial, then at most one line every `PROGRESS_SECONDS`, and
the last. Optuna's own INFO lines (one per study and per trial) are silenced while ours run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
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

    def as_metrics(self, prefix: str = "tuning") -> dict[str, float]:
        """Flat numbers to log."""
        return {
            f"{prefix}_trials": float(self.trials),
            f"{prefix}_completed": float(self.completed),
            f"{prefix}_pruned": float(self.pruned),
            f"{prefix}_best_valid_score": self.best_value,
            f"{prefix}_seconds": self.seconds,
        }


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


def create_study(name: str, tuning: TuningConfig, storage: str | None) -> optuna.Study:
    """A maximising TPE study (with a median pruner when pruning is on), in memory or in `storage`."""
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=20)
        if tuning.pruning
        else optuna.pruners.NopPruner()
    )
    with _optuna_quiet():
        return optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=storage is not None,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=tuning.seed),
            pruner=pruner,
        )


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
    name when not given) and naming the best `metric` so far.
    """
    start = time.perf_counter()
    progress = TrialProgress(label or study.study_name, metric, tuning.trials)
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
    states = [t.state for t in study.trials]
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"study {study.study_name} completed no trial within its budget")
    history = [
        {"number": t.number, "state": t.state.name, "value": t.value, **t.params}
        for t in study.trials
    ]  # fmt: skip
    return StudySummary(
        trials=len(states),
        completed=len(completed),
        pruned=sum(s == optuna.trial.TrialState.PRUNED for s in states),
        best_value=float(study.best_value),
        best_params=dict(study.best_params),
        seconds=time.perf_counter() - start,
        history=history,
    )


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
    (x_train, y_train), (x_valid, y_valid) = train, valid
    if np.unique(y_train).size < 2 or np.unique(y_valid).size < 2:
        raise ValueError("the training and the validation labels each need both classes")
    best: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        params = lightgbm_params(config, suggest(trial, config.search), tuning.seed)
        model = lgb.LGBMClassifier(**params)
        callbacks: list[Callable[..., Any]] = [lgb.early_stopping(config.early_stopping_rounds, verbose=False)]
        if tuning.pruning:
            callbacks.append(LightGBMPruningCallback(trial, "auc", valid_name="valid"))
        with clock.fitting():
            model.fit(
                x_train,
                y_train,
                sample_weight=sample_weight,
                eval_X=(x_valid,),
                eval_y=(y_valid,),
                eval_names=["valid"],
                eval_metric="auc",
                callbacks=callbacks,
            )
        score = float(roc_auc_score(y_valid, positive_proba(model, x_valid)))
        trial.set_user_attr("best_iteration", int(model.best_iteration_ or params["n_estimators"]))
        if not best or score > best["score"]:
            best.update(score=score, model=model, params={**params, "n_estimators": trial.user_attrs["best_iteration"]})
        return score

    summary = run_study(study, objective, tuning, label, "AUC")
    return TunedClassifier(best["model"], best["params"], summary)
