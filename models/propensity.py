"""Propensity: who buys which product within the horizon, and who the retention offer actually keeps.

Purchase propensity is one LightGBM over (customer, product) rows, with the product as a
categorical input, so a new product adds rows rather than a new model. Products a
customer already holds are not candidates (they are left out of training and
scoring alike). The uplift model learns the offer's effect from its A/B test with a
two-model or X-learner on LightGBM; it is judged by the Qini curve.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from features.featurestore.offline import SAMPLE_WEIGHT
from models import evaluation as ev
from models import plots
from models.churn import fit_tuned_pipeline, importance, labelled_rows
from models.config import PropensityConfig, UpliftConfig
from models.result import EvaluationSet, LoggedModel, TrainedModel
from models.splits import LabelledTable, stage_at_random, stage_by_cutoff
from models.tabular import FramePreparer, infer_schema
from models.tuning import FitClock, lightgbm_params, positive_proba

log = logging.getLogger("custintel.models")

HELD = "holds"  # the interactions column: the customer holds the product at the cutoff


def propensity_table(
    frame: pd.DataFrame, config: PropensityConfig, label_columns: list[str], lineage: str = ""
) -> LabelledTable:
    """(customer, product) rows staged by cutoff (read with products already held left out, negatives sampled).

    A `_sample_weight` column, when present, weights training and test metrics back to the
    population (see `features.featurestore.offline.read_item_training_table`).
    """
    if "product_id" not in frame.columns or "bought" not in frame.columns:
        raise ValueError("propensity rows need product_id and bought columns (purchase_labels@)")
    others = tuple(c for c in label_columns if c in frame.columns and c not in ("bought", "product_id"))
    return LabelledTable(
        frame=frame,
        id_column="customer_key",
        label="bought",
        stage=stage_by_cutoff(frame["as_of"], config.split),
        snapshot="as_of",
        not_features=others,
        weight=SAMPLE_WEIGHT if SAMPLE_WEIGHT in frame.columns else None,
        lineage=lineage,
    )


def negative_shares(config: PropensityConfig) -> dict[dt.date, float]:
    """The share of non-buying rows read at each cutoff of the split."""
    shares = {d: config.negative_sample for d in [*config.split.train_as_of, *config.split.valid_as_of]}
    shares.update({d: config.test_negative_sample for d in config.split.test_as_of})
    return shares


def train_propensity(
    data: LabelledTable, config: PropensityConfig, study: optuna.Study, clock: FitClock
) -> TrainedModel:
    """Tune one LightGBM over every candidate (customer, product) pair; score overall and per product."""
    schema = data.schema or infer_schema(data.frame, exclude=data.excluded)
    if "product_id" not in schema.categorical:
        raise ValueError("product_id must be a categorical input of the propensity model")
    pipeline, params, study_summary = fit_tuned_pipeline(
        data, schema, config.lightgbm, config.tuning, study, clock, "propensity"
    )
    test, y_test = labelled_rows(data, "test")
    snapshot = [data.snapshot] if data.snapshot else []  # a user's pairs may have no cutoff column
    p_test = pipeline.predict_proba(test)[:, 1]
    w_test = test[data.weight].to_numpy(dtype="float64") if data.weight else None
    metrics = {f"test_{k}": v for k, v in ev.classification_metrics(y_test, p_test, w_test).items()}
    per_product = per_product_auc(test["product_id"].astype(str).to_numpy(), y_test, p_test)
    metrics["test_auc_mean_per_product"] = float(np.nanmean(list(per_product.values())))
    metrics.update(study_summary.as_metrics())
    for stage in ("train", "valid", "test"):
        metrics[f"rows_{stage}"] = float(len(labelled_rows(data, stage)[0]))
    imp = importance(pipeline)
    calibration = ev.calibration_table(y_test, p_test, weights=w_test)
    return TrainedModel(
        family="propensity",
        models=[
            LoggedModel(
                "model", pipeline, "sklearn", test[schema.features].head(5), registered_model=config.registered_model
            )
        ],  # fmt: skip
        params={
            **params,
            "label": "bought",
            # a user's table defines its own window: say that, not the feature store's horizon
            **(
                {"label_definition": data.label_definition}
                if data.label_definition
                else {"horizon_days": config.horizon_days}
            ),
        },
        metrics=metrics,
        figures={
            "roc": plots.roc_figure(y_test, {"model": p_test}),
            "precision_recall": plots.pr_figure(y_test, {"model": p_test}),
            "calibration": plots.calibration_figure(calibration),
            "gains": plots.gain_figure(ev.gain_table(y_test, p_test, weights=w_test)),
            "importance": plots.importance_figure(list(imp["feature"]), list(imp["gain"])),
        },
        tables={
            "per_product_auc": pd.DataFrame({"product_id": list(per_product), "auc": list(per_product.values())}),
            "calibration": calibration,
            "importance": imp,
        },
        info={"schema": schema.describe(), "study": study_summary.history, "per_product_auc": per_product},
        training_frame=data.rows("train"),
        evaluation_set=EvaluationSet(
            capped_sample(
                test[
                    [data.id_column, *snapshot, data.label, *([data.weight] if data.weight else []), *schema.features]
                ],
                data.weight,
                EVALUATION_ROWS,
                config.tuning.seed,
            ),
            "classifier",
            schema.features,
            data.label,
            data.id_column,
            data.snapshot,
            data.weight,
        ),
        data_quality=ev.data_profile(
            labelled_rows(data, "train")[0], schema.features, data.label, [data.id_column, *snapshot, "product_id"]
        ),
        predictions=pd.DataFrame(
            {
                "customer_key": test[data.id_column].to_numpy(),
                "as_of": test[data.snapshot].to_numpy() if data.snapshot else None,
                "product_id": test["product_id"].astype(str).to_numpy(),
                "y": y_test,
                "score": p_test,
                "weight": w_test if w_test is not None else 1.0,
            }
        ),  # fmt: skip
        fit_seconds=clock.seconds,
    )


EVALUATION_ROWS = 300_000  # the propensity test set kept for the gate (a weighted sample beyond this)


def capped_sample(frame: pd.DataFrame, weight: str | None, limit: int, seed: int) -> pd.DataFrame:
    """At most `limit` rows drawn uniformly; the weights are scaled so weighted metrics stay unbiased."""
    if len(frame) <= limit:
        return frame.reset_index(drop=True)
    sample = frame.sample(n=limit, random_state=seed).reset_index(drop=True)
    if weight is None:
        return sample
    return sample.assign(**{weight: sample[weight] * (len(frame) / limit)})


def per_product_auc(products: np.ndarray, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC within each product (NaN where a product's test rows hold one class only)."""
    out = {}
    for product in sorted(set(products)):
        mask = products == product
        out[str(product)] = (
            ev.classification_metrics(y[mask], p[mask])["auc"] if np.unique(y[mask]).size == 2 else float("nan")
        )
    return out


class UpliftLearner(BaseEstimator):
    """Conditional average treatment effect of a binary treatment on a binary outcome, with LightGBM.

    `two_model`: one classifier per group; the uplift is the difference of their
    probabilities. `x_learner`: the two classifiers' imputed effects are regressed on
    the features within each group and blended by the treated share (Künzel et al.,
    2019). `fit(X, y, treatment=...)`; `predict(X)` is the uplift P(y | treated) -
    P(y | control). X must already be model-ready (see FramePreparer).
    """

    def __init__(
        self, learner: Literal["two_model", "x_learner"] = "x_learner", params: dict[str, Any] | None = None
    ) -> None:
        self.learner = learner
        self.params = params

    def fit(self, X: pd.DataFrame, y: np.ndarray, treatment: np.ndarray | None = None) -> UpliftLearner:  # noqa: N803
        """Fit the outcome models (and, for the X-learner, the effect models)."""
        if treatment is None:
            raise ValueError("treatment is required: which rows were treated")
        t = np.asarray(treatment, dtype=bool)
        yv = np.asarray(y, dtype="float64")
        if t.all() or not t.any():
            raise ValueError("the experiment needs both treated and control rows")
        params = dict(self.params or {})
        self.control_ = lgb.LGBMClassifier(**params).fit(X[~t], yv[~t].astype(int))
        self.treated_ = lgb.LGBMClassifier(**params).fit(X[t], yv[t].astype(int))
        self.treated_share_ = float(t.mean())
        if self.learner == "x_learner":
            d_treated = yv[t] - positive_proba(self.control_, X[t])
            d_control = positive_proba(self.treated_, X[~t]) - yv[~t]
            self.effect_treated_ = lgb.LGBMRegressor(**params).fit(X[t], d_treated)
            self.effect_control_ = lgb.LGBMRegressor(**params).fit(X[~t], d_control)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        """Predicted uplift of each row."""
        check_is_fitted(self, "treated_")
        if self.learner == "two_model":
            return positive_proba(self.treated_, X) - positive_proba(self.control_, X)
        e = self.treated_share_
        return e * np.asarray(self.effect_control_.predict(X)) + (1 - e) * np.asarray(self.effect_treated_.predict(X))


def uplift_table(
    frame: pd.DataFrame, config: UpliftConfig, label_columns: list[str], lineage: str = ""
) -> LabelledTable:
    """The offer test's participants at its cutoff, with `retained` (not churned in the outcome window) as label.

    The test is one randomised experiment at one time, so its rows are split at random
    (stratified by group and outcome) into train and test; there is no later cutoff to
    test on.
    """
    rows = frame[frame["offer_group"].notna() & frame["offer_outcome"].notna()].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no offer-test participant with a known outcome at {config.as_of}")
    rows = rows.assign(retained=~rows["offer_outcome"].astype(bool), treated=rows["offer_group"] == "treatment")
    strata = rows["offer_group"].astype(str) + ":" + rows["retained"].astype(str)
    stage = stage_at_random(strata, config.seed, (1 - config.test_share, 0.0, config.test_share))
    return LabelledTable(
        frame=rows,
        id_column="customer_key",
        label="retained",
        stage=stage,
        snapshot="as_of",
        not_features=tuple(c for c in [*label_columns, "treated"] if c in rows.columns),
        lineage=lineage,
    )


def train_uplift(data: LabelledTable, config: UpliftConfig, clock: FitClock, folds: int = 5) -> TrainedModel:
    """Fit the uplift learner on the experiment's training share; Qini on the held-out share and cross-fitted."""
    schema = data.schema or infer_schema(data.frame, exclude=data.excluded)
    params = lightgbm_params(config.lightgbm, {}, config.seed)
    train, test = data.rows("train"), data.rows("test")
    preparer = FramePreparer(schema.numeric, schema.categorical)
    log.info("uplift: fitting the %s on %s experiment rows", config.learner, f"{len(train):,}")
    with clock.fitting():
        preparer.fit(train)
        learner = UpliftLearner(config.learner, params).fit(
            preparer.transform(train), train["retained"].to_numpy(), treatment=train["treated"].to_numpy()
        )
    pipeline = Pipeline([("prepare", preparer), ("model", learner)])
    u_test = pipeline.predict(test)
    y_test, t_test = test["retained"].to_numpy(float), test["treated"].to_numpy(bool)
    crossfit = cross_fitted_uplift(data.frame, schema, config, params, folds, clock)
    y_all, t_all = data.frame["retained"].to_numpy(float), data.frame["treated"].to_numpy(bool)
    metrics = {
        "test_qini": ev.qini_coefficient(y_test, t_test, u_test),
        "crossfit_qini": ev.qini_coefficient(y_all, t_all, crossfit),
        "test_rows": float(len(test)),
        "experiment_rows": float(len(data.frame)),
        "treated_share": float(t_all.mean()),
        "retention_treated": float(y_all[t_all].mean()),
        "retention_control": float(y_all[~t_all].mean()),
        "average_treatment_effect": float(y_all[t_all].mean() - y_all[~t_all].mean()),
    }
    qini = ev.qini_table(y_all, t_all, crossfit)
    return TrainedModel(
        family="uplift",
        models=[
            LoggedModel(
                "model",
                pipeline,
                "sklearn",
                test[schema.features].head(5),
                "predict",
                registered_model=config.registered_model,
            )
        ],  # fmt: skip
        params={
            **params,
            "learner": config.learner,
            "test_share": config.test_share,
            # a user's experiment table has no cutoff of ours: its outcome's definition instead
            **({"label_definition": data.label_definition} if data.label_definition else {"as_of": str(config.as_of)}),
        },
        metrics=metrics,
        figures={"qini": plots.qini_figure({"model (cross-fitted)": qini})},
        tables={"qini": qini},
        info={"schema": schema.describe(), "crossfit_uplift": "rows' uplift predicted by models that did not see them"},
        training_frame=train,
        evaluation_set=EvaluationSet(
            test[[data.id_column, "retained", "treated", *schema.features]],
            "uplift",
            schema.features,
            "retained",
            data.id_column,
            treatment="treated",
        ),
        data_quality=ev.data_profile(train, schema.features, "retained", [data.id_column]),
        predictions=pd.DataFrame(
            {"customer_key": data.frame[data.id_column].to_numpy(), "y": y_all, "treated": t_all, "uplift": crossfit}
        ),
        fit_seconds=clock.seconds,
    )


def cross_fitted_uplift(
    frame: pd.DataFrame, schema: Any, config: UpliftConfig, params: dict[str, Any], folds: int, clock: FitClock
) -> np.ndarray:
    """Each row's uplift from a learner fitted on the other folds (stratified by group and outcome)."""
    strata = frame["treated"].astype(str) + ":" + frame["retained"].astype(str)
    rng = np.random.default_rng(config.seed + 1)
    fold = np.empty(len(frame), dtype=int)
    for _, idx in strata.groupby(strata).groups.items():
        pos = rng.permutation(np.asarray([frame.index.get_loc(i) for i in idx]))
        fold[pos] = np.arange(pos.size) % folds
    out = np.empty(len(frame))
    for k in range(folds):
        log.info("uplift: cross-fitting, fold %d/%d", k + 1, folds)
        fit_rows, score_rows = frame[fold != k], frame[fold == k]
        prep = FramePreparer(schema.numeric, schema.categorical)
        with clock.fitting():
            prep.fit(fit_rows)
            learner = UpliftLearner(config.learner, params).fit(
                prep.transform(fit_rows), fit_rows["retained"].to_numpy(), treatment=fit_rows["treated"].to_numpy()
            )
        out[fold == k] = learner.predict(prep.transform(score_rows))
    return out
