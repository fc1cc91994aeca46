"""Off-policy evaluation: a candidate policy's value estimated from decisions another policy logged.

Every decision the service makes is logged with the probability its (exploring) policy gave the chosen
action. Reweighting the logged rewards by target / logged probability estimates what a different policy
would have earned, before it is promoted:

- `ips`: inverse propensity scoring, unbiased when the logged policy gives every action the target
  takes a positive probability; its variance grows with the weights.
- `snips`: self-normalised IPS (divides by the mean weight): slightly biased, much less variance when
  weights are large or rewards have an offset.
- `doubly_robust`: a reward model's prediction under the target policy, corrected by the weighted
  residual of the logged action; unbiased if either the propensities or the model are right, and
  lower variance than IPS when the model is any good. `fit_reward_model` cross-fits one (each row is
  predicted by a model that did not see it).
- `direct_method`: the reward model alone (biased by the model's error; for comparison).
- `on_policy`: the plain mean reward of a log, the logging policy's own value.

Intervals: `interval="normal"` (default) is the CLT interval from the per-row contributions' standard
error (for SNIPS, its delta-method influence terms); `interval="bootstrap"` resamples rows (percentile
interval). The DR and DM intervals keep the reward model fixed. `clip` caps the importance weights
(less variance, biased towards zero for non-negative rewards). `effective_n` is Kish's effective sample
size of the weights, (sum w)^2 / sum w^2: how many on-policy rows the reweighted log is worth.

`evaluate` runs them all on the decision log's columns (decision_id, action, probability, reward,
action_probabilities).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

Interval = Literal["normal", "bootstrap"]
FloatArray = NDArray[np.float64]
#: Row-sum tolerance for probability distributions (the service rounds nothing, but JSON may).
_SUM_TOLERANCE = 1e-6
#: `evaluate` renormalises target rows this close to 1 (rounded JSON).
_ROUNDING_TOLERANCE = 1e-3
_BOOTSTRAP_CHUNK = 64
#: Rows per reward-model prediction call (held-out rows x actions).
_PREDICT_ROWS = 200_000


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate with its (1 - alpha) interval.

    `effective_n` is Kish's effective sample size of the importance weights (n for on-policy and the
    direct method); `support` is the target policy's mean probability mass on actions the logging policy
    could take (below 1, IPS-type estimates miss the value of the unsupported actions); `std_error` is
    the CLT standard error (also reported when the interval is a bootstrap one).
    """

    estimator: str
    value: float
    low: float
    high: float
    n: int
    effective_n: float
    std_error: float = math.nan
    interval: Interval = "normal"
    alpha: float = 0.05
    clip: float | None = None
    support: float = 1.0

    def covers(self, truth: float) -> bool:
        """Whether the interval contains `truth`."""
        return self.low <= truth <= self.high

    def relative_error(self, truth: float) -> float:
        """|estimate - truth| / |truth| (obp's "relative-ee"; infinite for a zero truth it misses)."""
        if truth == 0:
            return 0.0 if self.value == 0 else math.inf
        return abs(self.value - truth) / abs(truth)


# --------------------------------------------------------------------------------------------- checks


def _vector(values: ArrayLike, name: str, n: int | None = None) -> FloatArray:
    """A finite 1-d float array, its length checked against `n`."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not numbers ({exc})") from exc
    if array.ndim != 1:
        raise ValueError(f"{name}: expected one value per logged decision (1-d), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: empty, nothing to evaluate")
    if n is not None and array.size != n:
        raise ValueError(f"{name}: has {array.size} values but rewards has {n}")
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} missing or infinite value(s), first at row {int(np.argmax(bad))}")
    return array


def _logged(values: ArrayLike, n: int) -> FloatArray:
    """Logged propensities: in (0, 1], one per reward."""
    p = _vector(values, "logged_probability", n)
    bad = (p <= 0) | (p > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"logged_probability: must be in (0, 1] (a logged action had a chance of being chosen), "
            f"row {i} is {p[i]!r} ({int(bad.sum())} such row(s))"
        )
    return p


def _probabilities(values: ArrayLike, name: str, n: int) -> FloatArray:
    """Target probabilities of the logged actions: in [0, 1], one per reward."""
    p = _vector(values, name, n)
    bad = (p < 0) | (p > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: must be in [0, 1], row {i} is {p[i]!r} ({int(bad.sum())} such row(s))")
    return p


def _matrix(values: ArrayLike, name: str, n: int, k: int | None = None) -> FloatArray:
    """A finite (n, k) float matrix."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not numbers ({exc})") from exc
    if array.ndim != 2 or array.shape[0] != n or (k is not None and array.shape[1] != k):
        want = f"({n}, {k if k is not None else 'actions'})"
        raise ValueError(f"{name}: expected shape {want} (one row per logged decision), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: has missing or infinite values")
    return array


def _distribution(values: ArrayLike, name: str, n: int) -> FloatArray:
    """Per-row action distributions: (n, actions), entries in [0, 1], rows summing to 1."""
    dist = _matrix(values, name, n)
    if ((dist < 0) | (dist > 1)).any():
        raise ValueError(f"{name}: probabilities must be in [0, 1]")
    sums = dist.sum(axis=1)
    off = np.abs(sums - 1) > _SUM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(f"{name}: each row must sum to 1, row {i} sums to {sums[i]!r}")
    return dist


def _chosen(values: ArrayLike, n: int, k: int) -> NDArray[np.int64]:
    """Column index of each logged action in the (n, k) matrices."""
    raw = np.asarray(values)
    if raw.ndim != 1 or raw.size != n:
        raise ValueError(f"chosen_index: expected {n} indices (one per logged decision), got shape {raw.shape}")
    if not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"chosen_index: must be integers (column of the logged action), got {raw.dtype}")
    index = raw.astype(np.int64)
    bad = (index < 0) | (index >= k)
    if bad.any():
        raise ValueError(f"chosen_index: must be in [0, {k}), row {int(np.argmax(bad))} is {index[bad][0]}")
    return index


def _settings(alpha: float, clip: float | None, interval: str, n_bootstrap: int) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha!r}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip: must be positive (the largest importance weight kept), got {clip!r}")
    if interval not in ("normal", "bootstrap"):
        raise ValueError(f"interval: must be 'normal' or 'bootstrap', got {interval!r}")
    if interval == "bootstrap" and n_bootstrap < 10:
        raise ValueError(f"n_bootstrap: at least 10 resamples, got {n_bootstrap!r}")


# ---------------------------------------------------------------------------------------- the maths


def _weights(target: FloatArray, logged: FloatArray, clip: float | None) -> FloatArray:
    w = target / logged
    return np.minimum(w, clip) if clip is not None else w


def _kish(weights: FloatArray) -> float:
    """Kish's effective sample size of importance weights."""
    square = float(np.sum(weights**2))
    return float(np.sum(weights)) ** 2 / square if square > 0 else 0.0


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def _standard_error(contributions: FloatArray) -> float:
    n = contributions.size
    return float(np.std(contributions, ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def _bootstrap(
    statistic: Callable[[NDArray[np.int64]], FloatArray], n: int, alpha: float, n_bootstrap: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of `statistic` over row resamples (it maps a (b, n) index matrix to b values)."""
    rng = np.random.default_rng(seed)
    values: list[FloatArray] = []
    for start in range(0, n_bootstrap, _BOOTSTRAP_CHUNK):
        b = min(_BOOTSTRAP_CHUNK, n_bootstrap - start)
        values.append(statistic(rng.integers(0, n, size=(b, n))))
    draws = np.concatenate(values)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _mean_estimate(
    name: str,
    contributions: FloatArray,
    weights: FloatArray | None,
    *,
    alpha: float,
    clip: float | None,
    interval: Interval,
    n_bootstrap: int,
    seed: int,
) -> Estimate:
    """An estimator that is the mean of per-row contributions (IPS, DR, DM, on-policy)."""
    n = contributions.size
    value = float(contributions.mean())
    se = _standard_error(contributions)
    if interval == "bootstrap":
        low, high = _bootstrap(lambda idx: contributions[idx].mean(axis=1), n, alpha, n_bootstrap, seed)
    else:
        half = _z(alpha) * se if n > 1 else math.nan
        low, high = value - half, value + half
    effective = _kish(weights) if weights is not None else float(n)
    return Estimate(name, value, low, high, n, effective, se, interval, alpha, clip)


# ------------------------------------------------------------------------------------------ estimators


def on_policy(
    rewards: ArrayLike, *, alpha: float = 0.05, interval: Interval = "normal", n_bootstrap: int = 1000, seed: int = 0
) -> Estimate:
    """The logging policy's own value: the mean logged reward, with its interval."""
    r = _vector(rewards, "rewards")
    _settings(alpha, None, interval, n_bootstrap)
    return _mean_estimate(
        "on_policy", r, None, alpha=alpha, clip=None, interval=interval, n_bootstrap=n_bootstrap, seed=seed
    )


def ips(
    rewards: ArrayLike,
    logged_probability: ArrayLike,
    target_probability: ArrayLike,
    alpha: float = 0.05,
    *,
    clip: float | None = None,
    interval: Interval = "normal",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Inverse propensity scoring: mean of reward x target / logged probability of the logged action.

    Args:
        rewards: the logged rewards, one per decision.
        logged_probability: the probability the logging policy gave the logged action, in (0, 1].
        target_probability: the probability the evaluated policy gives the logged action, in [0, 1].
        alpha: 1 - the interval's coverage.
        clip: cap on the importance weights (None: no cap).
        interval: "normal" (CLT) or "bootstrap" (percentile interval over row resamples).
        n_bootstrap: number of bootstrap resamples.
        seed: the bootstrap's random seed.
    """
    r = _vector(rewards, "rewards")
    logged = _logged(logged_probability, r.size)
    target = _probabilities(target_probability, "target_probability", r.size)
    _settings(alpha, clip, interval, n_bootstrap)
    w = _weights(target, logged, clip)
    return _mean_estimate(
        "ips", w * r, w, alpha=alpha, clip=clip, interval=interval, n_bootstrap=n_bootstrap, seed=seed
    )


def snips(
    rewards: ArrayLike,
    logged_probability: ArrayLike,
    target_probability: ArrayLike,
    alpha: float = 0.05,
    *,
    clip: float | None = None,
    interval: Interval = "normal",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w); the normal interval is the delta method's.

    Arguments as `ips`. If the target gives every logged action probability 0 the estimate is NaN
    (the log says nothing about that policy).
    """
    r = _vector(rewards, "rewards")
    logged = _logged(logged_probability, r.size)
    target = _probabilities(target_probability, "target_probability", r.size)
    _settings(alpha, clip, interval, n_bootstrap)
    w = _weights(target, logged, clip)
    n = r.size
    total = float(w.sum())
    if total == 0:
        return Estimate("snips", math.nan, math.nan, math.nan, n, 0.0, math.nan, interval, alpha, clip)
    value = float((w * r).sum() / total)
    # Influence terms of the ratio estimator: its CLT standard error.
    se = _standard_error(w * (r - value) / w.mean())
    if interval == "bootstrap":

        def statistic(idx: NDArray[np.int64]) -> FloatArray:
            wi = w[idx]
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.asarray((wi * r[idx]).sum(axis=1) / wi.sum(axis=1), dtype=np.float64)

        low, high = _bootstrap(statistic, n, alpha, n_bootstrap, seed)
    else:
        half = _z(alpha) * se if n > 1 else math.nan
        low, high = value - half, value + half
    return Estimate("snips", value, low, high, n, _kish(w), se, interval, alpha, clip)


def doubly_robust(
    rewards: ArrayLike,
    logged_probability: ArrayLike,
    target_action_dist: ArrayLike,
    chosen_index: ArrayLike,
    reward_model_predictions: ArrayLike,
    alpha: float = 0.05,
    *,
    clip: float | None = None,
    interval: Interval = "normal",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: the model's value under the target plus the weighted residual of the logged action.

    Args:
        rewards: the logged rewards, one per decision.
        logged_probability: the logging policy's probability of the logged action, in (0, 1].
        target_action_dist: (n, actions) the evaluated policy's distribution for each decision.
        chosen_index: the column of the logged action in the two matrices.
        reward_model_predictions: (n, actions) predicted reward of every action for each decision,
            ideally cross-fitted (`fit_reward_model`) so no row is predicted by a model that saw it.
        alpha: 1 - the interval's coverage.
        clip: cap on the importance weights (None: no cap).
        interval: "normal" (CLT) or "bootstrap" (percentile, reward model fixed).
        n_bootstrap: number of bootstrap resamples.
        seed: the bootstrap's random seed.
    """
    r = _vector(rewards, "rewards")
    n = r.size
    logged = _logged(logged_probability, n)
    dist = _distribution(target_action_dist, "target_action_dist", n)
    q = _matrix(reward_model_predictions, "reward_model_predictions", n, dist.shape[1])
    index = _chosen(chosen_index, n, dist.shape[1])
    _settings(alpha, clip, interval, n_bootstrap)
    rows = np.arange(n)
    w = _weights(dist[rows, index], logged, clip)
    contributions = (dist * q).sum(axis=1) + w * (r - q[rows, index])
    return _mean_estimate(
        "dr", contributions, w, alpha=alpha, clip=clip, interval=interval, n_bootstrap=n_bootstrap, seed=seed
    )


def direct_method(
    target_action_dist: ArrayLike,
    reward_model_predictions: ArrayLike,
    alpha: float = 0.05,
    *,
    interval: Interval = "normal",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Estimate:
    """The reward model's mean prediction under the target policy (its interval ignores model error)."""
    q = np.asarray(reward_model_predictions, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] == 0:
        raise ValueError(f"reward_model_predictions: expected shape (decisions, actions), got {q.shape}")
    dist = _distribution(target_action_dist, "target_action_dist", q.shape[0])
    q = _matrix(q, "reward_model_predictions", q.shape[0], dist.shape[1])
    _settings(alpha, None, interval, n_bootstrap)
    return _mean_estimate(
        "dm",
        (dist * q).sum(axis=1),
        None,
        alpha=alpha,
        clip=None,
        interval=interval,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


# -------------------------------------------------------------------------------------- reward models


def _default_estimator(binary: bool, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression, Ridge

    # Newton-Cholesky: exact and fast when rows far outnumber features (decision logs); lbfgs is 30x slower here.
    return LogisticRegression(solver="newton-cholesky", max_iter=200, random_state=seed) if binary else Ridge(alpha=1.0)


def fit_reward_model(
    features: ArrayLike | None,
    actions: ArrayLike,
    rewards: ArrayLike,
    n_actions: int,
    *,
    action_features: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    interactions: bool = True,
    n_folds: int = 3,
    seed: int = 0,
    estimator: Callable[[], Any] | None = None,
) -> FloatArray:
    """Cross-fitted predicted reward of every action for every logged decision: an (n, n_actions) matrix.

    The model sees the decision's `features` (None: none, a per-action model) joined to the action's
    `action_features` (default one-hot) and, with `interactions`, their products (so each action can
    respond to the features differently; obp's models have none). Binary rewards get a logistic
    regression (probabilities), others a ridge regression, unless `estimator` builds another
    scikit-learn model. Rows are split in `n_folds`; each fold is predicted by a model fitted on the
    others (a fold whose training rewards are all equal gets that constant). With `groups` (e.g. the
    slot or channel of each decision), each group gets its own model within each fold, as obp fits one
    per position.
    """
    from sklearn.model_selection import KFold

    r = _vector(rewards, "rewards")
    n = r.size
    raw_actions = np.asarray(actions)
    if raw_actions.ndim != 1 or raw_actions.size != n:
        raise ValueError(f"actions: expected {n} action indices, got shape {raw_actions.shape}")
    if n_actions < 1:
        raise ValueError(f"n_actions: at least 1, got {n_actions}")
    a = _chosen(raw_actions, n, n_actions)
    x = np.zeros((n, 0)) if features is None else _matrix(features, "features", n)
    if action_features is None:
        act = np.eye(n_actions)
    else:
        act = np.asarray(action_features, dtype=np.float64)
        if act.ndim != 2 or act.shape[0] != n_actions:
            raise ValueError(f"action_features: expected {n_actions} rows (one per action), got shape {act.shape}")
    if not 2 <= n_folds <= n:
        raise ValueError(f"n_folds: must be in [2, {n}], got {n_folds}")
    binary = bool(np.isin(r, (0.0, 1.0)).all())
    build = estimator or (lambda: _default_estimator(binary, seed))

    if groups is None:
        group = np.zeros(n, dtype=np.int64)
    else:
        raw_groups = np.asarray(groups)
        if raw_groups.ndim != 1 or raw_groups.size != n:
            raise ValueError(f"groups: expected {n} group labels, got shape {raw_groups.shape}")
        group = pd.factorize(raw_groups)[0].astype(np.int64)

    def design(context: FloatArray, action: FloatArray) -> FloatArray:
        if not interactions or context.shape[1] == 0:
            return np.hstack([context, action])
        products = (context[:, :, None] * action[:, None, :]).reshape(context.shape[0], -1)
        return np.hstack([context, action, products])

    predictions = np.empty((n, n_actions))
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold_train, fold_test in folds.split(x):
        for g in np.unique(group):
            train = fold_train[group[fold_train] == g]
            test = fold_test[group[fold_test] == g]
            if test.size == 0:
                continue
            if train.size == 0 or np.unique(r[train]).size < 2:
                predictions[test] = r[train][0] if train.size else r[fold_train].mean()
                continue
            model = build().fit(design(x[train], act[a[train]]), r[train])
            # Every action for every held-out row, in blocks of actions (one model call per block).
            block = max(1, _PREDICT_ROWS // test.size)
            for first in range(0, n_actions, block):
                chosen = np.arange(first, min(first + block, n_actions))
                x_test = design(np.tile(x[test], (chosen.size, 1)), np.repeat(act[chosen], test.size, axis=0))
                if binary and hasattr(model, "predict_proba"):
                    predicted = model.predict_proba(x_test)[:, 1]
                else:
                    predicted = model.predict(x_test)
                predictions[np.ix_(test, chosen)] = np.asarray(predicted, dtype=np.float64).reshape(chosen.size, -1).T
    return predictions


# ---------------------------------------------------------------------------------- the decision log

TargetPolicy = (
    Mapping[str, float]
    | Sequence[Mapping[str, float]]
    | pd.DataFrame
    | Callable[[pd.DataFrame], "pd.DataFrame | Sequence[Mapping[str, float]]"]
)
LOG_COLUMNS = ("decision_id", "action", "probability", "reward")


def _as_mapping(value: object, row: int) -> dict[str, float]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"action_probabilities: row {row} is not JSON ({exc})") from exc
    if not isinstance(value, Mapping):
        raise ValueError(f"action_probabilities: row {row} must map action names to probabilities")
    return {str(k): float(v) for k, v in value.items()}


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _target_frame(log: pd.DataFrame, target: TargetPolicy) -> pd.DataFrame:
    """The target policy's distribution for each logged decision: rows as the log's, a column per action."""
    if isinstance(target, pd.DataFrame):
        frame = target
    elif isinstance(target, list | tuple):
        frame = pd.DataFrame([dict(m) for m in target])
    elif isinstance(target, Mapping):
        frame = pd.DataFrame([dict(target)] * len(log))
    elif callable(target):
        produced = target(log)
        frame = produced if isinstance(produced, pd.DataFrame) else pd.DataFrame([dict(m) for m in produced])
    else:
        raise ValueError("target: a mapping action -> probability, a frame of them per decision, or a callable")
    if len(frame) != len(log):
        raise ValueError(f"target: {len(frame)} distributions for {len(log)} logged decisions")
    frame = frame.reset_index(drop=True).astype(np.float64).fillna(0.0)
    # Logged distributions may be rounded (JSON, 4-6 decimals): renormalise near-1 rows, leave others to fail.
    sums = frame.sum(axis=1)
    near = (sums - 1).abs() < _ROUNDING_TOLERANCE
    frame.loc[near] = frame.loc[near].div(sums[near], axis=0)
    return frame


def evaluate(
    log: pd.DataFrame,
    target: TargetPolicy,
    *,
    reward_predictions: pd.DataFrame | None = None,
    features: pd.DataFrame | None = None,
    alpha: float = 0.05,
    clip: float | None = None,
    interval: Interval = "normal",
    missing_reward: Literal["error", "zero", "drop"] = "error",
    n_folds: int = 3,
    seed: int = 0,
) -> list[Estimate]:
    """Estimate `target`'s value from a decision log: on-policy (the logging policy), IPS, SNIPS and DR.

    Args:
        log: the decision log joined to rewards: decision_id, action (the first chosen action), probability
            (its logged probability), reward, and optionally action_probabilities (JSON or mapping, the
            logging policy's full distribution; used for the support diagnostic).
        target: the evaluated policy's distribution over actions: one mapping for every decision, a list of
            mappings or a frame (a column per action) with one row per logged decision (e.g. a candidate
            policy's `Decision.action_probabilities` for the logged customers), or a callable that takes
            the log and returns either.
        reward_predictions: (rows as the log's, a column per action) predicted rewards for DR; default: a
            cross-fitted model on `features` or, without them, per-action means.
        features: numeric decision features for the default reward model (rows as the log's).
        alpha: 1 - the intervals' coverage.
        clip: cap on the importance weights (None: no cap).
        interval: "normal" (CLT) or "bootstrap".
        missing_reward: rows without a reward (no outcome yet): "error", count as "zero", or "drop".
        n_folds: the reward model's cross-fitting folds.
        seed: the cross-fitting's (and bootstrap's) random seed.
    """
    missing = [c for c in LOG_COLUMNS if c not in log.columns]
    if missing:
        raise ValueError(f"log: missing column(s) {missing}; expected {list(LOG_COLUMNS)}")
    if log.empty:
        raise ValueError("log: no decisions to evaluate")
    log = log.reset_index(drop=True)
    no_reward = log["reward"].isna().to_numpy()
    if no_reward.any():
        if missing_reward == "error":
            first = log["decision_id"].iloc[int(np.argmax(no_reward))]
            raise ValueError(
                f"reward: {int(no_reward.sum())} decision(s) have no reward (first {first!r}); "
                "pass missing_reward='zero' or 'drop'"
            )
        if missing_reward == "zero":
            log = log.assign(reward=log["reward"].fillna(0.0))
        elif missing_reward == "drop":
            keep = ~no_reward
            log = log[keep].reset_index(drop=True)
            features = None if features is None else features.reset_index(drop=True)[keep].reset_index(drop=True)
            if reward_predictions is not None:
                reward_predictions = reward_predictions.reset_index(drop=True)[keep].reset_index(drop=True)
            if isinstance(target, pd.DataFrame):
                target = target.reset_index(drop=True)[keep].reset_index(drop=True)
            if log.empty:
                raise ValueError("reward: no decision has a reward")
        else:
            raise ValueError(f"missing_reward: 'error', 'zero' or 'drop', got {missing_reward!r}")

    dist_frame = _target_frame(log, target)
    logged_actions = log["action"].astype(str)
    actions = list(dict.fromkeys([*dist_frame.columns.astype(str), *logged_actions]))
    dist_frame.columns = dist_frame.columns.astype(str)
    dist = dist_frame.reindex(columns=actions, fill_value=0.0).to_numpy(dtype=np.float64)
    column = {a: i for i, a in enumerate(actions)}
    chosen = logged_actions.map(column).to_numpy(dtype=np.int64)
    rewards = log["reward"].to_numpy(dtype=np.float64)
    logged = log["probability"].to_numpy(dtype=np.float64)
    n = len(log)
    rows = np.arange(n)

    support = 1.0
    if "action_probabilities" in log.columns:
        # Rows logged without a distribution (None) say nothing about support and are left out.
        known = [(i, _as_mapping(v, i)) for i, v in enumerate(log["action_probabilities"]) if _present(v)]
        if known:
            possible = np.array([[d.get(a, 0.0) > 0 for a in actions] for _, d in known])
            support = float((dist[[i for i, _ in known]] * possible).sum(axis=1).mean())
        else:
            support = math.nan

    if reward_predictions is not None:
        frame = reward_predictions.reset_index(drop=True)
        frame.columns = frame.columns.astype(str)
        absent = [a for a in actions if a not in frame.columns]
        if absent:
            raise ValueError(f"reward_predictions: no column for action(s) {absent}")
        q = _matrix(frame[actions].to_numpy(dtype=np.float64), "reward_predictions", n, len(actions))
    else:
        x = None if features is None else _matrix(features.to_numpy(dtype=np.float64), "features", n)
        q = fit_reward_model(x, chosen, rewards, len(actions), n_folds=min(n_folds, n), seed=seed)

    kwargs: dict[str, Any] = {"alpha": alpha, "interval": interval, "seed": seed}
    results = [
        on_policy(rewards, **kwargs),
        ips(rewards, logged, dist[rows, chosen], clip=clip, **kwargs),
        snips(rewards, logged, dist[rows, chosen], clip=clip, **kwargs),
        doubly_robust(rewards, logged, dist, chosen, q, clip=clip, **kwargs),
    ]
    return [results[0], *(_with_support(e, support) for e in results[1:])]


def join_rewards(
    decisions: pd.DataFrame,
    outcomes: pd.DataFrame,
    reward_of: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """The decision log with a `reward` column from its outcomes, ready for `evaluate`.

    A decision's reward is the sum of `reward_of[event]` over the distinct events logged for it (default
    {"conversion": 1.0}: converted or not); events not in the mapping (impressions, frontline feedback)
    count nothing, and a decision without any counts 0. Evaluate only decisions old enough for their
    outcomes to have arrived.
    """
    values = dict(reward_of) if reward_of is not None else {"conversion": 1.0}
    for name, frame, columns in (
        ("decisions", decisions, ["decision_id"]),
        ("outcomes", outcomes, ["decision_id", "event"]),
    ):
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ValueError(f"{name}: missing column(s) {absent}")
    counted = outcomes.loc[outcomes["event"].isin(list(values)), ["decision_id", "event"]].drop_duplicates()
    per_decision = counted.assign(value=counted["event"].map(values)).groupby("decision_id")["value"].sum()
    reward = decisions["decision_id"].map(per_decision).fillna(0.0).astype(np.float64)
    return decisions.assign(reward=reward.to_numpy())


def _with_support(estimate: Estimate, support: float) -> Estimate:
    return replace(estimate, support=support)


def estimates_frame(estimates: Sequence[Estimate]) -> pd.DataFrame:
    """The estimates as a table (one row per estimator), for reports and MLflow."""
    return pd.DataFrame([asdict(e) for e in estimates])
