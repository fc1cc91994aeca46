"""Churn: a calibrated LightGBM classifier for churn within a horizon, and a Cox model for time to churn.

What differs from the other families: probability calibration, a contact threshold set
from the retention team's weekly capacity, and the survival model. Everything is data
in, `TrainedModel` out.

Calibration comes, by default, from the newest fully labelled data: a hashed 30% of the
test cutoff's customers (`calibrate_on: newest_cutoff`), the others being the test rows.
Tuning and early stopping stay on the validation cutoff. After a shift in the base rate
(churn rose), a model calibrated on the older validation cutoff would be miscalibrated
on test for everyone; calibrated at the newest cutoff, its probabilities are those of the
present, and what the gate still finds between groups is a real disparity. Platt scaling
is monotone, so the ranking (AUC, who is contacted) does not depend on where it is fitted.
A calibrator is applied only when it earns its place (`calibration: auto`): none, sigmoid and
isotonic are compared by log loss cross-fitted on the calibration rows, and the plain model is
kept unless a calibrator improves it (every method's log loss and Brier are logged).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from typing import Any

import numpy as np
import optuna
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceWarning
from lifelines.utils import concordance_index
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from models import evaluation as ev
from models import plots
from models.clv import bgnbd_baseline
from models.config import ChurnConfig, LightGBMConfig, TuningConfig
from models.result import EvaluationSet, LoggedModel, TrainedModel
from models.splits import CALIBRATION, LabelledTable, SplitError, hold_out_for_calibration, latest_snapshot
from models.tabular import FramePreparer, TabularSchema, infer_schema
from models.tuning import FitClock, scaled_to_rows, tune_lightgbm_classifier

log = logging.getLogger("custintel.models")


class CoxTimeToChurn(BaseEstimator):
    """Cox proportional-hazards model on standardised numbers and one-hot categories.

    `fit(X, y)` takes y as two columns: time to the event (or to censoring) and whether
    the event was observed. `predict` returns the partial hazard (higher: sooner).
    lifelines' convergence warnings are kept in `convergence_warnings_` (one line each)
    rather than printed: the trainer reports them once, with what to change.
    """

    def __init__(
        self,
        numeric: tuple[str, ...] = (),
        categorical: tuple[str, ...] = (),
        penalizer: float = 0.1,
        top_categories: int = 10,
    ) -> None:
        self.numeric = numeric
        self.categorical = categorical
        self.penalizer = penalizer
        self.top_categories = top_categories

    def _design(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N802, N803
        cols: dict[str, np.ndarray] = {}
        for c in self.numeric_:
            v = pd.to_numeric(X[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            cols[c] = (np.where(np.isnan(v), self.medians_[c], v) - self.means_[c]) / self.scales_[c]
        for c, levels in self.levels_.items():
            text = X[c].astype("object").where(X[c].notna(), None).map(lambda v: None if v is None else str(v))
            for level in levels:
                cols[f"{c}={level}"] = np.asarray(text == level, dtype="float64")
        return pd.DataFrame(cols, index=X.index)

    def fit(self, X: pd.DataFrame, y: pd.DataFrame | np.ndarray) -> CoxTimeToChurn:  # noqa: N803
        """Fit on features X and y = (duration, event)."""
        target = np.asarray(y, dtype="float64")
        if target.ndim != 2 or target.shape[1] != 2:
            raise ValueError("y must hold two columns: duration and event")
        self.medians_, self.means_, self.scales_ = {}, {}, {}
        self.numeric_ = []
        for c in self.numeric:
            v = pd.to_numeric(X[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            median = float(np.nanmedian(v)) if np.isfinite(v).any() else 0.0
            filled = np.where(np.isnan(v), median, v)
            if filled.std() == 0:
                continue
            self.numeric_.append(c)
            self.medians_[c], self.means_[c], self.scales_[c] = median, float(filled.mean()), float(filled.std())
        self.levels_ = {}
        for c in self.categorical:
            counts = X[c].dropna().astype(str).value_counts()
            self.levels_[c] = [str(v) for v in counts.index[1 : self.top_categories + 1]]  # the commonest is the base
        design = self._design(X)
        design["_duration"] = np.maximum(target[:, 0], 1e-3)
        design["_event"] = target[:, 1]
        self.fitter_ = CoxPHFitter(penalizer=self.penalizer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.fitter_.fit(design, duration_col="_duration", event_col="_event")
        self.convergence_warnings_ = _first_lines(w for w in caught if issubclass(w.category, ConvergenceWarning))
        for other in caught:  # anything else lifelines (or numpy under it) says is passed on unchanged
            if not issubclass(other.category, ConvergenceWarning):
                warnings.warn_explicit(other.message, other.category, other.filename, other.lineno, source=other.source)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        """Partial hazard of each row: relative risk of churning soon."""
        check_is_fitted(self, "fitter_")
        return np.asarray(self.fitter_.predict_partial_hazard(self._design(X)), dtype="float64")

    def predict_churn_by(self, X: pd.DataFrame, days: float) -> np.ndarray:  # noqa: N803
        """Probability of churning within `days`."""
        check_is_fitted(self, "fitter_")
        surv = self.fitter_.predict_survival_function(self._design(X), times=[days])
        return 1.0 - np.asarray(surv, dtype="float64").ravel()

    def score(self, X: pd.DataFrame, y: pd.DataFrame | np.ndarray) -> float:  # noqa: N803
        """Concordance index (Harrell's C) of the partial hazard."""
        target = np.asarray(y, dtype="float64")
        return float(concordance_index(target[:, 0], -self.predict(X), target[:, 1]))


def _first_lines(caught: Any) -> list[str]:
    """The first line of each distinct warning, without lifelines' links to its documentation, in order."""
    lines: list[str] = []
    for w in caught:
        text = str(w.message).strip()
        line = re.sub(r"\s*(Please see|See) .*$", "", text.splitlines()[0].strip()) if text else ""
        line = line or w.category.__name__
        if line not in lines:
            lines.append(line)
    return lines


def labelled_rows(data: LabelledTable, stage: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of a stage with a known label, and the label as 0/1."""
    rows = data.rows(stage)
    rows = rows[rows[data.label].notna()]
    return rows, rows[data.label].astype(bool).to_numpy(dtype="int64")


def fit_tuned_pipeline(
    data: LabelledTable,
    schema: TabularSchema,
    lightgbm: LightGBMConfig,
    tuning: TuningConfig,
    study: optuna.Study,
    clock: FitClock,
    family: str = "churn",
) -> tuple[Pipeline, dict[str, Any], Any]:
    """Preparer + the best LightGBM of the study, as one fitted pipeline (shared with propensity).

    `family` names the study in its progress lines.
    """
    preparer = FramePreparer(schema.numeric, schema.categorical)
    train, y_train = labelled_rows(data, "train")
    valid, y_valid = labelled_rows(data, "valid")
    with clock.fitting():
        preparer.fit(train)
    weights = train[data.weight].to_numpy(dtype="float64") if data.weight else None
    lightgbm = scaled_to_rows(lightgbm, len(train))
    tuned = tune_lightgbm_classifier(
        (preparer.transform(train), y_train), (preparer.transform(valid), y_valid), lightgbm, tuning, study, clock,
        sample_weight=weights, label=family,
    )  # fmt: skip
    return Pipeline([("prepare", preparer), ("model", tuned.model)]), tuned.params, tuned.study


def importance(pipeline: Pipeline) -> pd.DataFrame:
    """Total gain of each input of the pipeline's LightGBM model."""
    model = pipeline.named_steps["model"]
    gain = model.booster_.feature_importance(importance_type="gain")
    names = list(pipeline.named_steps["prepare"].get_feature_names_out())
    return pd.DataFrame({"feature": names, "gain": gain}).sort_values("gain", ascending=False, ignore_index=True)


def with_calibration_rows(data: LabelledTable, config: ChurnConfig) -> LabelledTable:
    """The table with its calibration rows held out of the test stage, when the config calibrates there."""
    if config.calibrate_on != "newest_cutoff":
        return data
    return hold_out_for_calibration(data, config.calibration_share, config.calibration_salt)


def calibration_rows(data: LabelledTable, config: ChurnConfig) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The labelled rows the calibrator is fitted on, their labels, and where they come from in words.

    The table's calibration rows when it has them (`churn_table` holds them out of the test
    cutoffs), else its validation rows: a user's own table keeps the split it was given.
    """
    held_out = bool((data.stage == CALIBRATION).any())
    rows, y = labelled_rows(data, CALIBRATION if held_out else "valid")
    where = (
        f"{config.calibration_share:.0%} of the test cutoffs' customers (salted key hash; the rest are the test rows)"
        if held_out
        else "the validation rows"
    )
    if np.unique(y).size < 2:
        raise SplitError(
            f"churn.calibrate_on {config.calibrate_on}: the calibration rows ({where}) hold "
            f"{'no labelled row' if y.size == 0 else 'one class only'}; calibrate_on: validation, or more customers"
        )
    return rows, y, where


def contact_capacity(given: int | None, share: float, scored: int) -> tuple[int, str]:
    """How many customers the retention team contacts, and where that number comes from in words.

    An absolute number when one is given; else `share` of the scored customers (at least one),
    so a 1,000-row table is not half flagged by a capacity sized for a whole customer base.
    """
    if given is not None:
        return given, f"{given:,} customers a week (given)"
    capacity = max(1, math.ceil(share * scored))
    return capacity, f"{share:.1%} of the {scored:,} customers scored (churn.contact_share; no absolute capacity given)"


CALIBRATION_FOLDS = 5
# A calibrator is kept only when it lowers the cross-fitted log loss by more than this share: below it the gain is
# fold noise, and the plain model (no second fit, its scores untouched) is the better default.
MIN_LOG_LOSS_GAIN = 0.001
CALIBRATORS = ("none", "sigmoid", "isotonic")


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def cross_fitted_calibration(
    model: Any, rows: pd.DataFrame, y: np.ndarray, methods: tuple[str, ...] = CALIBRATORS, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Log loss and Brier of each method on the calibration rows, each row scored by a calibrator fitted without it.

    `none` is the model's own probability. Stratified folds (at most `CALIBRATION_FOLDS`, fewer
    when the rarer class has fewer rows); an empty dict when the rarer class has under two rows.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, dtype=int)
    folds = min(CALIBRATION_FOLDS, int(np.bincount(y, minlength=2).min()))
    if folds < 2:
        return {}
    raw = np.asarray(model.predict_proba(rows))[:, 1]
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        if method == "none":
            p = raw
        else:
            p = np.empty(len(y))
            for fit_idx, score_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(raw, y):
                calibrator = CalibratedClassifierCV(FrozenEstimator(model), method=method)
                calibrator.fit(rows.iloc[fit_idx], y[fit_idx])
                p[score_idx] = calibrator.predict_proba(rows.iloc[score_idx])[:, 1]
        out[method] = {"log_loss": _log_loss(y, p), "brier": float(np.mean((p - y) ** 2))}
    return out


def choose_calibration(figures: dict[str, dict[str, float]]) -> str:
    """The method with the lowest cross-fitted log loss; `none` unless a calibrator beats it by `MIN_LOG_LOSS_GAIN`."""
    if "none" not in figures:
        return min(figures, key=lambda m: figures[m]["log_loss"])
    best = min(figures, key=lambda m: (figures[m]["log_loss"], m != "none"))
    gain = 1 - figures[best]["log_loss"] / max(figures["none"]["log_loss"], 1e-12)
    return best if best != "none" and gain > MIN_LOG_LOSS_GAIN else "none"


def calibrate(
    pipeline: Pipeline, rows: pd.DataFrame, y: np.ndarray, setting: str, clock: FitClock
) -> tuple[Any, str, dict[str, dict[str, float]]]:
    """(the model to serve, the method used, every method's cross-fitted figures) for the `calibration` setting.

    `auto` compares none, sigmoid and isotonic on the calibration rows and keeps a calibrator only
    when it improves log loss; a named method is fitted as asked (its figures still logged).
    """
    with clock.fitting():
        figures = cross_fitted_calibration(pipeline, rows, y)
    if setting == "auto":
        method = choose_calibration(figures) if figures else "none"
        if not figures:
            log.warning("churn: too few positive or negative calibration rows to compare calibrators; not calibrated")
    else:
        method = setting
    if method == "none":
        return pipeline, method, figures
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method=method)
    with clock.fitting():
        calibrated.fit(rows, y)
    return calibrated, method, figures


def train_churn(
    data: LabelledTable,
    config: ChurnConfig,
    weekly_capacity: int | None,
    study: optuna.Study,
    clock: FitClock,
) -> TrainedModel:
    """Tune, calibrate, set the contact threshold, score on test, and fit the survival model."""
    schema = data.schema or infer_schema(data.frame, exclude=data.excluded)
    pipeline, params, study_summary = fit_tuned_pipeline(
        data, schema, config.lightgbm, config.tuning, study, clock, "churn"
    )

    fit_rows, y_fit, where = calibration_rows(data, config)
    held_out = bool((data.stage == CALIBRATION).any())
    calibrated, method, calibration_figures = calibrate(pipeline, fit_rows, y_fit, config.calibration, clock)
    calibration_summary = _calibration_summary(config.calibration, method, calibration_figures, where)
    log.info("churn: %s", calibration_summary)

    # The threshold comes from the newest validation cutoff (one weekly scoring run) scored by the final,
    # recalibrated model, never from test. Calibration is monotone: the capacity's customers there are the
    # same wherever it was fitted; the value is on the scale the served scores have.
    valid = labelled_rows(data, "valid")[0]
    scored = latest_snapshot(valid, data.snapshot)
    capacity, capacity_rule = contact_capacity(weekly_capacity, config.contact_share, len(scored))
    threshold = ev.capacity_threshold(calibrated.predict_proba(scored)[:, 1], capacity)
    test, y_test = labelled_rows(data, "test")
    p_test = calibrated.predict_proba(test)[:, 1]
    p_raw = pipeline.predict_proba(test)[:, 1]
    metrics = {f"test_{k}": v for k, v in ev.classification_metrics(y_test, p_test).items()}
    metrics["test_auc_uncalibrated"] = ev.classification_metrics(y_test, p_raw)["auc"]
    in_the_large = ev.calibration_in_the_large(y_test, p_test)
    metrics.update(test_mean_score=in_the_large.predicted, test_observed_to_predicted=in_the_large.ratio)
    metrics.update({f"test_{k}": v for k, v in ev.threshold_metrics(y_test, p_test, threshold).items()})
    metrics.update({"threshold": threshold, "weekly_capacity": float(capacity),
                    "contact_share": capacity / max(len(scored), 1)})  # fmt: skip
    metrics.update(study_summary.as_metrics())
    for name, numbers in calibration_figures.items():
        metrics.update({f"calibration_{name}_{k}": v for k, v in numbers.items()})
    for stage in ("train", "valid", "test", CALIBRATION):
        metrics[f"rows_{stage}"] = float(len(labelled_rows(data, stage)[0]))
    alive = bgnbd_baseline(labelled_rows(data, "train")[0], test, y_test, config.horizon_days)
    if alive is not None:  # non-contractual churn: the probability-alive baseline, beside the model
        metrics.update(alive[0])

    calibration = ev.calibration_table(y_test, p_test)
    gains = ev.gain_table(y_test, p_test)
    imp = importance(pipeline)
    figures = {
        "roc": plots.roc_figure(y_test, {"model": p_test}),
        "precision_recall": plots.pr_figure(y_test, {"model": p_test}),
        "calibration": plots.calibration_figure(calibration),
        "gains": plots.gain_figure(gains),
        "importance": plots.importance_figure(list(imp["feature"]), list(imp["gain"])),
    }
    models = [
        LoggedModel(
            "model", calibrated, "sklearn", test[schema.features].head(5), registered_model=config.registered_model
        )
    ]
    survival_info: dict[str, Any] = {}
    if config.survival and data.duration and data.event:
        survival, c_index = _fit_survival(data, schema, config.survival_penalizer, clock)
        metrics["test_concordance"] = c_index
        survival_info = {"penalizer": config.survival_penalizer, "convergence_warnings": survival.convergence_warnings_}
        models.append(LoggedModel("survival", survival, "sklearn", test[schema.features].head(5), "predict"))

    return TrainedModel(
        family="churn",
        models=models,
        params={
            **params,
            "calibration": method,
            "calibration_setting": config.calibration,
            "label": data.label,
            "calibrate_on": config.calibrate_on if held_out else "validation",  # where it really was fitted
            **({"label_definition": data.label_definition} if data.label_definition else {}),
        },
        metrics=metrics,
        figures=figures,
        tables={
            "calibration": calibration,
            "gains": gains,
            "importance": imp,
            **({"schema": pd.DataFrame(list(data.schema_report))} if data.schema_report else {}),
        },  # fmt: skip
        info={
            "schema": list(data.schema_report) or schema.describe(),
            "threshold": {
                "value": threshold,
                "weekly_capacity": capacity,
                "capacity": capacity_rule,
                "rule": "contact customers scoring at or above the value: the capacity-th highest calibrated score "
                "of the newest validation cutoff",
            },
            "calibration": {
                "method": method,
                "setting": config.calibration,
                "summary": calibration_summary,
                "cross_fitted": calibration_figures,
                "fitted_on": where,
                "rows": int(len(fit_rows)),
                "cutoffs": sorted({str(d) for d in pd.to_datetime(fit_rows[data.snapshot]).dt.date})
                if data.snapshot
                else [],
                "share": config.calibration_share if held_out else None,
                "salt": config.calibration_salt if held_out else None,
            },
            "study": study_summary.history,
            "label": {"column": data.label, "horizon_days": config.horizon_days, "definition": data.label_definition},
            **({"bgnbd": alive[1]} if alive is not None else {}),
            **({"survival": survival_info} if survival_info else {}),
        },
        training_frame=data.rows("train"),
        evaluation_set=EvaluationSet(
            test[[c for c in (data.id_column, data.snapshot, data.label) if c] + schema.features],
            "classifier",
            schema.features,
            data.label,
            data.id_column,
            data.snapshot,
        ),
        data_quality=ev.data_profile(
            labelled_rows(data, "train")[0],
            schema.features,
            data.label,
            [c for c in (data.id_column, data.snapshot) if c],
        ),
        predictions=pd.DataFrame(
            {
                "customer_key": test[data.id_column].to_numpy(),
                "as_of": test[data.snapshot].to_numpy() if data.snapshot else None,
                "y": y_test,
                "score": p_test,
            }
        ),  # fmt: skip
        fit_seconds=clock.seconds,
    )


def _calibration_summary(setting: str, method: str, figures: dict[str, dict[str, float]], where: str) -> str:
    """One sentence for the run and the card: the method used, why, and every method's cross-fitted figures."""
    numbers = "; ".join(f"{m} log loss {f['log_loss']:.4f}, Brier {f['brier']:.4f}" for m, f in figures.items())
    why = "the lowest cross-fitted log loss" if method != "none" else "no calibrator lowered the cross-fitted log loss"
    chosen = f"{method} ({why})" if setting == "auto" else f"{method} (as configured)"
    folds = f"{CALIBRATION_FOLDS}-fold cross-fitted on {where}"
    return f"calibration {chosen}; {folds}: {numbers}" if figures else f"calibration {chosen}; nothing compared"


def _fit_survival(
    data: LabelledTable, schema: TabularSchema, penalizer: float, clock: FitClock
) -> tuple[CoxTimeToChurn, float]:
    assert data.duration and data.event
    train = data.rows("train").dropna(subset=[data.duration, data.event])
    test = data.rows("test").dropna(subset=[data.duration, data.event])
    model = CoxTimeToChurn(tuple(schema.numeric), tuple(schema.categorical), penalizer)
    log.info("churn: fitting the survival model (Cox, %s rows)", f"{len(train):,}")
    with clock.fitting():
        model.fit(train, train[[data.duration, data.event]].astype("float64"))
    if model.convergence_warnings_:
        log.warning(
            "churn: the survival model converged poorly (%s); a larger churn.survival_penalizer (now %g) usually helps",
            "; ".join(model.convergence_warnings_)[:300], penalizer,
        )  # fmt: skip
    return model, model.score(test, test[[data.duration, data.event]].astype("float64"))


def churn_table(
    frame: pd.DataFrame, config: ChurnConfig, label_columns: list[str], lineage: str = "", definition: str = ""
) -> LabelledTable:
    """Feature-store rows (features joined to labels@) as a table staged by cutoff."""
    from models.splits import stage_by_cutoff

    if config.label not in frame.columns:
        raise ValueError(
            f"the labels have no column {config.label!r} (horizon_days {config.horizon_days}); "
            f"they have {sorted(c for c in label_columns if c.startswith('churn_'))}"
        )
    others = tuple(c for c in label_columns if c not in (config.label, "time_to_churn_days", "churn_observed"))
    table = LabelledTable(
        frame=frame,
        id_column="customer_key",
        label=config.label,
        stage=stage_by_cutoff(frame["as_of"], config.split),
        snapshot="as_of",
        duration="time_to_churn_days" if "time_to_churn_days" in frame.columns else None,
        event="churn_observed" if "churn_observed" in frame.columns else None,
        not_features=others,
        lineage=lineage,
        label_definition=definition,
    )
    return with_calibration_rows(table, config)  # test rows everywhere (gate, oracle) are the test half
