"""Scores and their reasons from a served model: one LightGBM pass gives both, where that is exact.

A churn model is a preprocessing + LightGBM pipeline, possibly calibrated. The reasons are
per-feature contributions to LightGBM's raw score: by default path attribution
(`serving.attribution`: what each feature's splits added along the paths a row takes, from
LightGBM's leaf indices, as cheap as a prediction), or TreeSHAP (`pred_contrib`, exact Shapley
values, costing many predictions' time for a model of a few dozen trees). Both sum to the raw
score, from which the (calibrated) probability follows, so one LightGBM call gives the score and
the reasons; with no reasons asked for, the call is a plain raw-score prediction. Each model's
first call checks that shortcut against the model's own `predict_proba` and keeps it only if it
is exact (`score_with_reasons`), and likewise the pandas-free route from JSON-like records to a
float matrix (`score_records`, `score_matrix`). `ScoringThreads` gives a batch LightGBM's threads.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.pipeline import Pipeline

from serving.attribution import PathTable, SingleRowLeaves, path_contributions, path_table

Attribution = Literal["path", "treeshap"]  # how reasons are computed (the serving policy's `reasons_method`)
# booster -> its path table and single-row leaf reader, made on first use (once per loaded model)
_TABLES: weakref.WeakKeyDictionary[Any, tuple[PathTable, SingleRowLeaves]] = weakref.WeakKeyDictionary()
_TABLES_LOCK = threading.Lock()


def _path_table(booster: Any) -> tuple[PathTable, SingleRowLeaves]:
    """The booster's path table and single-row leaf reader, made on first use."""
    found = _TABLES.get(booster)
    if found is None:
        with _TABLES_LOCK:
            found = _TABLES.get(booster)
            if found is None:
                found = _TABLES[booster] = (path_table(booster), SingleRowLeaves(booster))
    return found


def explain(lgbm: Any, rows: Any, method: Attribution = "path", threads: int | None = None) -> np.ndarray:
    """Per row, each feature's contribution to the raw score and the bias last (`pred_contrib`'s layout).

    `lgbm`: a fitted LGBMClassifier (rows as its pipeline prepares them) or its Booster (rows as
    `records_matrix` makes them). `threads`: LightGBM's threads (None: the model's own).
    """
    options: dict[str, Any] = {} if threads is None else {"num_threads": threads}
    if method == "treeshap":
        return np.asarray(lgbm.predict(rows, pred_contrib=True, **options))
    booster = getattr(lgbm, "booster_", lgbm)
    table, single = _path_table(booster)
    if booster is lgbm and isinstance(rows, np.ndarray) and len(rows) == 1:  # a matrix row: the fast path
        return path_contributions(table, single(rows[0]))
    return path_contributions(table, np.asarray(lgbm.predict(rows, pred_leaf=True, **options)))


def inner_pipeline(model: Any) -> Pipeline | None:
    """The preprocessing + LightGBM pipeline inside a (possibly calibrated) classifier."""
    if isinstance(model, Pipeline):
        return model
    calibrated = getattr(model, "calibrated_classifiers_", None)
    if calibrated:
        inner = calibrated[0].estimator
        inner = getattr(inner, "estimator", inner)  # FrozenEstimator
        return inner if isinstance(inner, Pipeline) else None
    return None


_ONE_PASS: dict[int, str] = {}  # id(model) -> how its probability follows from the summed contributions


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _from_raw(model: Any, pipeline: Pipeline, raw: np.ndarray, how: str) -> np.ndarray:
    if model is pipeline:
        return _sigmoid(raw)
    calibrator = model.calibrated_classifiers_[0].calibrators[0]
    values = raw if how == "raw" else _sigmoid(raw)
    if type(calibrator).__name__ == "_SigmoidCalibration":  # its predict, without the input checks
        return np.asarray(expit(-(calibrator.a_ * values + calibrator.b_)), dtype=float)
    return np.asarray(calibrator.predict(values), dtype=float)


def score_with_reasons(
    model: Any, frame: pd.DataFrame, n_reasons: int, method: Attribution = "path"
) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
    """P(positive) per row and, per row, the features pushing it up most (`explain` by `method`).

    One pass where it can: the contributions sum to LightGBM's raw score, from which the
    (calibrated) probability follows; the first call checks that against `predict_proba`
    and the model falls back to two passes if it ever differs.
    """
    pipeline = inner_pipeline(model)
    if pipeline is None or not n_reasons:
        return np.asarray(model.predict_proba(frame))[:, 1], [[] for _ in range(len(frame))]
    prepared = pipeline[:-1].transform(frame)
    contributions = explain(pipeline[-1], prepared, method)
    how = _ONE_PASS.get(id(model))
    single = model is pipeline or len(getattr(model, "calibrated_classifiers_", [])) == 1
    if how is None:
        expected = np.asarray(model.predict_proba(frame))[:, 1]
        how = "slow"
        for candidate in ("raw", "proba") if single else ():
            if np.allclose(_from_raw(model, pipeline, contributions.sum(axis=1), candidate), expected, atol=1e-9):
                how = candidate
                break
        _ONE_PASS[id(model)] = how
        scores = expected
    elif how == "slow":
        scores = np.asarray(model.predict_proba(frame))[:, 1]
    else:
        scores = _from_raw(model, pipeline, contributions.sum(axis=1), how)
    return scores, _top_reasons(contributions[:, :-1], [str(c) for c in prepared.columns], n_reasons)


# Batches from this many rows may compute contributions on every core (when no other batch is being scored,
# `ScoringThreads`); smaller ones, and batches scored side by side, use one thread each.
PARALLEL_ROWS = 256
_FAST: dict[int, str] = {}  # id(model) -> "raw" | "proba" (the pandas-free route is exact) or "pandas"


def _contributions(
    pipeline: Pipeline, matrix: np.ndarray, threads: int = 1, method: Attribution = "path"
) -> tuple[np.ndarray, list[str]]:
    """The contributions (the bias last) for `records_matrix` rows, and the features' names."""
    prepare, booster = pipeline[0], pipeline[-1].booster_
    return explain(booster, matrix, method, threads), [*prepare.numeric, *prepare.categorical]


def _top_reasons(features: np.ndarray, names: list[str], n: int) -> list[list[tuple[str, float]]]:
    """Per row, the (feature, contribution) pairs of its `n` largest positive contributions, largest first.

    Equal contributions keep column order (a stable sort's first `n`): `n` passes of argmax, which
    takes the first of equal maxima, cost a tenth of sorting every row.
    """
    n = min(n, features.shape[1])
    left = features.copy()
    rows = np.arange(len(left))
    top = np.empty((len(left), n), dtype=np.intp)
    values = np.empty((len(left), n))
    for k in range(n):
        top[:, k] = best = left.argmax(axis=1)
        values[:, k] = left[rows, best]
        left[rows, best] = -np.inf
    return [
        [(names[j], c) for j, c in zip(columns, contributions, strict=True) if c > 0]
        for columns, contributions in zip(top.tolist(), values.tolist(), strict=True)
    ]


def score_records(
    model: Any,
    records: Sequence[dict[str, Any]],
    columns: Sequence[str],
    n_reasons: int,
    numbers_checked: bool = False,
    threads: int = 1,
    method: Attribution = "path",
) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
    """`score_with_reasons` for JSON-like records, without pandas where that is exact.

    The records go straight into a float matrix (`FramePreparer.records_matrix`) and one
    LightGBM call gives the contributions, whose sum gives the (calibrated) probability. The
    first call for a model compares this route with the pandas pipeline on the same rows and
    keeps it only if scores and reasons agree; otherwise the model is always scored through pandas.
    `numbers_checked`: the caller knows every numeric input is a JSON number or null (the
    online store's typed documents), so the values are not inspected one by one. `threads`:
    LightGBM's threads for the contributions (0: every core). `method`: how reasons are computed.
    """
    pipeline = inner_pipeline(model)
    route = _FAST.get(id(model))
    single = pipeline is not None and (model is pipeline or len(getattr(model, "calibrated_classifiers_", [])) == 1)
    fast_ok = (
        single and pipeline is not None and hasattr(pipeline[0], "records_matrix") and hasattr(pipeline[-1], "booster_")
    )
    if route is None or route == "pandas" or not fast_ok:
        frame = pd.DataFrame(list(records), columns=list(columns))
        scores, reasons = score_with_reasons(model, frame, n_reasons, method)
        if route is None:
            _FAST[id(model)] = (
                _check_fast_route(model, pipeline, records, scores, reasons, n_reasons, method) if fast_ok else "pandas"
            )
        return scores, reasons
    assert pipeline is not None
    matrix = pipeline[0].records_matrix(records, numbers_checked=numbers_checked)
    return score_matrix(model, matrix, n_reasons, threads, method)


def score_matrix(
    model: Any, matrix: np.ndarray, n_reasons: int, threads: int = 1, method: Attribution = "path"
) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
    """`score_records` for rows already in `records_matrix`'s form (a model's snapshot), on its pandas-free route.

    Only for a model whose route was checked exact (`fast_route`). Without reasons, one raw-score
    prediction (the same sum of the trees' leaves the contributions add up to).
    """
    pipeline = inner_pipeline(model)
    route = _FAST.get(id(model))
    assert pipeline is not None and route in ("raw", "proba"), "score_matrix needs a model on the checked fast route"
    if not n_reasons:
        raw = np.asarray(pipeline[-1].booster_.predict(matrix, raw_score=True, num_threads=threads))
        return _from_raw(model, pipeline, raw, route), [[] for _ in range(len(matrix))]
    contributions, names = _contributions(pipeline, matrix, threads, method)
    scores = _from_raw(model, pipeline, contributions.sum(axis=1), route)
    return scores, _top_reasons(contributions[:, :-1], names, n_reasons)


def fast_route(model: Any) -> bool:
    """Whether the model's pandas-free route was checked exact on its first call."""
    return _FAST.get(id(model)) in ("raw", "proba")


def _check_fast_route(
    model: Any,
    pipeline: Pipeline | None,
    records: Sequence[dict[str, Any]],
    scores: np.ndarray,
    reasons: list[list[tuple[str, float]]],
    n_reasons: int,
    method: Attribution,
) -> str:
    assert pipeline is not None
    try:
        contributions, names = _contributions(pipeline, pipeline[0].records_matrix(records), 1, method)
    except (ValueError, TypeError, KeyError):
        return "pandas"
    for how in ("raw", "proba"):
        if np.allclose(_from_raw(model, pipeline, contributions.sum(axis=1), how), scores, atol=1e-9):
            fast = _top_reasons(contributions[:, :-1], names, n_reasons) if n_reasons else [[] for _ in records]
            same = all([f for f, _ in a] == [f for f, _ in b] for a, b in zip(fast, reasons, strict=True))
            return how if same else "pandas"
    return "pandas"


class ScoringThreads:
    """LightGBM's threads for a batch: the worker's share of the cores when the batch is scored alone.

    Thread-safe: it counts the batches being scored right now.
    """

    def __init__(self, share: int) -> None:
        self.share = share  # this worker's share of the cores
        self._scoring = 0  # batches being scored right now
        self._lock = threading.Lock()

    @contextmanager
    def lease(self, rows: int) -> Iterator[int]:
        """While scoring `rows` rows: LightGBM's threads for them.

        The worker's share of the cores for a batch from PARALLEL_ROWS rows scored while no
        other batch is; one thread otherwise.
        """
        with self._lock:
            self._scoring += 1
            alone = self._scoring == 1
        try:
            yield self.share if alone and rows >= PARALLEL_ROWS else 1
        finally:
            with self._lock:
                self._scoring -= 1
