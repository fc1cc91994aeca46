"""Baselines for a churn model trained on a user's own table: what it has to beat to earn its place.

A tuned, calibrated LightGBM is only worth its machinery if it beats what anyone would fit
in five minutes on the same rows. Every bring-your-own churn run also fits, on the same
training rows, (a) a regularised logistic regression (C=1) on standardised numbers (median
imputed, with missing indicators) and one-hot categories, and (b) an untuned LightGBM
(library defaults), and scores all three on the same test rows: AUC, log loss and Brier.
The run logs them (`baseline_logistic_test_auc`, ...) with a comparison table, and says so
when the platform's model is not better than both on test AUC.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from models import evaluation as ev
from models.result import TrainedModel
from models.splits import LabelledTable
from models.tabular import FramePreparer

log = logging.getLogger("custintel.models")

METRICS = ("auc", "log_loss", "brier")
BASELINES = ("logistic", "lightgbm_untuned")
WORDS = {"logistic": "logistic regression", "lightgbm_untuned": "untuned LightGBM"}


@dataclass(frozen=True)
class BaselineComparison:
    """The model's and each baseline's test figures on the same rows, and whether the model beats both."""

    scores: dict[str, dict[str, float]]  # "model" | "logistic" | "lightgbm_untuned" -> metric -> value
    rows: int  # test rows scored

    @property
    def beats_baselines(self) -> bool:
        """True when the model's test AUC is above every baseline's."""
        model = self.scores["model"]["auc"]
        return all(model > self.scores[b]["auc"] for b in BASELINES)

    def metrics(self) -> dict[str, float]:
        """The baselines' figures as run metrics: baseline_<name>_test_<metric>, and whether the model beats them."""
        out = {f"baseline_{b}_test_{m}": self.scores[b][m] for b in BASELINES for m in METRICS}
        out["beats_baselines"] = float(self.beats_baselines)
        return out

    def table(self) -> pd.DataFrame:
        """One row per model: its test AUC, log loss and Brier score."""
        rows = [{"model": name, **{f"test_{m}": v[m] for m in METRICS}} for name, v in self.scores.items()]
        return pd.DataFrame(rows)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run's lineage and info."""
        return {"beats_baselines": self.beats_baselines, "summary": self.summary(), "scores": self.scores,
                "test_rows": self.rows, "fitted_on": "the training rows"}  # fmt: skip

    def summary(self) -> str:
        """One line for the console and the run: the model's AUC against each baseline's, and the verdict."""
        figures = ", ".join(f"{WORDS[b]} {self.scores[b]['auc']:.4f}" for b in BASELINES)
        verdict = "better than both" if self.beats_baselines else "NOT better than both baselines"
        return (
            f"the model's test AUC {self.scores['model']['auc']:.4f} against {figures} on the same {self.rows:,} "
            f"test rows: {verdict}"
        )


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype("object").where(frame.notna(), "missing").astype(str)


def logistic_baseline(numeric: Sequence[str], categorical: Sequence[str], seed: int = 0) -> Pipeline:
    """Standardised numbers (median-imputed, with missing indicators) and one-hot categories into L2 logistic, C=1."""
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        numbers = Pipeline(
            [("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
             ("scale", StandardScaler())]
        )  # fmt: skip
        parts.append(("numeric", numbers, list(numeric)))
    if categorical:
        categories = Pipeline(
            [("text", FunctionTransformer(_as_text)),
             ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, sparse_output=True))]
        )  # fmt: skip
        parts.append(("categorical", categories, list(categorical)))
    return Pipeline(
        [
            ("prepare", FramePreparer(list(numeric), list(categorical))),
            ("encode", ColumnTransformer(parts)),
            ("model", LogisticRegression(C=1.0, max_iter=2000, random_state=seed)),
        ]
    )


def lightgbm_baseline(numeric: Sequence[str], categorical: Sequence[str], seed: int = 0, threads: int = 2) -> Pipeline:
    """LightGBM with its library defaults (100 trees, 31 leaves, learning rate 0.1): no tuning, no early stopping."""
    return Pipeline(
        [
            ("prepare", FramePreparer(list(numeric), list(categorical))),
            ("model", LGBMClassifier(random_state=seed, n_jobs=threads, verbose=-1)),
        ]
    )


def compare_with_baselines(
    data: LabelledTable,
    numeric: Sequence[str],
    categorical: Sequence[str],
    model_test_scores: np.ndarray,
    seed: int = 0,
    threads: int = 2,
) -> BaselineComparison:
    """Fit both baselines on the table's training rows and score them, and the model, on its test rows.

    `model_test_scores` are the platform model's probabilities for the test rows with a known
    label, in the table's order (what `train_churn` scored).
    """
    train = data.rows("train")
    train = train[train[data.label].notna()]
    test = data.rows("test")
    test = test[test[data.label].notna()]
    y_train = train[data.label].astype(bool).to_numpy(dtype="int64")
    y_test = test[data.label].astype(bool).to_numpy(dtype="int64")
    if len(model_test_scores) != len(y_test):
        raise ValueError(f"{len(model_test_scores)} model scores for {len(y_test)} test rows")
    scores = {"model": _figures(y_test, np.asarray(model_test_scores, dtype="float64"))}
    for name, pipeline in (
        ("logistic", logistic_baseline(numeric, categorical, seed)),
        ("lightgbm_untuned", lightgbm_baseline(numeric, categorical, seed, threads)),
    ):
        with warnings.catch_warnings():  # a baseline that converges slowly is still the baseline a user would fit
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", message=".*(Found unknown categories|X does not have valid).*")
            pipeline.fit(train, y_train)
            p = pipeline.predict_proba(test)[:, 1]
        scores[name] = _figures(y_test, p)
    return BaselineComparison(scores, int(y_test.size))


def _figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = ev.classification_metrics(y, p)
    return {k: float(m[k]) for k in METRICS}


def add_baselines(data: LabelledTable, trained: TrainedModel, seed: int = 0) -> BaselineComparison:
    """Compare a trained churn model with both baselines and add the figures to its run (metrics, table, info).

    The baselines take the columns the model's schema used (numeric and categorical) and the
    model's scores of the test rows; a model not better than both is warned about.
    """
    if data.schema is not None:  # the features decided before training (the leak guard's exclusions applied)
        numeric, categorical = list(data.schema.numeric), list(data.schema.categorical)
    else:
        schema = trained.info.get("schema", [])
        numeric = [r["column"] for r in schema if r["role"] == "numeric"]
        categorical = [r["column"] for r in schema if r["role"] == "categorical"]
    if trained.predictions is None:
        raise ValueError("the trained model kept no test predictions to compare with the baselines")
    comparison = compare_with_baselines(data, numeric, categorical, trained.predictions["score"].to_numpy(), seed)
    trained.metrics.update(comparison.metrics())
    trained.tables["baselines"] = comparison.table()
    trained.info["baselines"] = comparison.as_dict()
    if not comparison.beats_baselines:
        log.warning("%s: the model is not better than both baselines on test AUC (%s)", trained.family,
                    comparison.summary())  # fmt: skip
    return comparison


def add_uplift_baseline(data: LabelledTable, trained: TrainedModel, seed: int = 0, folds: int = 3) -> str:
    """The response model an uplift model must beat: targeting by the outcome's likelihood, ignoring the arm.

    Targeting whoever is likeliest to convert is what a team does without uplift modelling; it
    finds the sure things, not the persuadable. An untuned LightGBM of the outcome on the
    features, cross-fitted over the whole experiment like the uplift model, ranks the rows; its
    Qini coefficient is logged beside the model's (`baseline_response_crossfit_qini`), and the
    run says so when the uplift model does not beat it. Returns the comparison in words.
    """
    from sklearn.model_selection import StratifiedKFold

    schema = data.schema
    if schema is None:
        raise ValueError("the uplift table carries no schema to fit the response baseline on")
    frame = data.frame.reset_index(drop=True)
    y = frame[data.label].astype(bool).to_numpy(dtype="int64")
    treated = frame["treated"].astype(bool).to_numpy()
    strata = treated.astype(int) * 2 + y
    response = np.empty(len(frame))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(frame, strata)
    for fit_idx, score_idx in splits:
        model = lightgbm_baseline(schema.numeric, schema.categorical, seed)
        model.fit(frame.iloc[fit_idx], y[fit_idx])
        response[score_idx] = model.predict_proba(frame.iloc[score_idx])[:, 1]
    baseline = ev.qini_coefficient(y, treated, response)
    mine = float(trained.metrics.get("crossfit_qini", float("nan")))
    trained.metrics.update(baseline_response_crossfit_qini=baseline, beats_baselines=float(mine > baseline))
    summary = (
        f"cross-fitted Qini {mine:.4f} against {baseline:.4f} for a response model (untuned LightGBM of the outcome)"
    )
    trained.info["baselines"] = {
        "response_model_crossfit_qini": baseline,
        "model_crossfit_qini": mine,
        "beats_baselines": bool(mine > baseline),
    }
    if not mine > baseline:
        log.warning("uplift: the model does not beat targeting by the outcome's likelihood (%s)", summary)
        return f"NOT better than the response model: {summary}"
    return f"better than the response model: {summary}"
