"""The estimators checked on real logged bandit feedback: the Open Bandit Dataset sample inside obp's wheel.

ZOZOTOWN ran two policies side by side on the same fashion-item widget (three positions, 80 items in the
"all" campaign): a uniform random policy and Bernoulli Thompson sampling (BTS). Both logs ship with obp
(10,000 impressions each). The random log, reweighted to BTS, must estimate BTS's click rate, and
the BTS log's own mean click rate is the truth (obp's "evaluation of OPE" protocol).

obp is installed for its data only (`uv pip install --no-deps obp`, the Makefile's install step): it
needs torch, so it is never imported. Its files are found by `importlib.util.find_spec`, which locates
a top-level package without executing its `__init__`. BTS's action distribution is re-derived here in
numpy from the production prior obp ships (obp/policy/conf/prior_bts.yaml): with no updates during the
day, each impression draws Beta(alpha, beta) per item and shows the top three, so the probability of an
item at a position is estimated by Monte Carlo (obp's `BernoulliTS.compute_batch_action_dist`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from numpy.typing import NDArray

from decisions.ope import Estimate, Interval, direct_method, doubly_robust, fit_reward_model, ips, on_policy, snips

#: The obp release whose wheel holds the sample (the Makefile installs it).
OBP_VERSION = "0.5.7"
Behavior = Literal["random", "bts"]
Campaign = Literal["all", "men", "women"]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
#: obp's published figures for this protocol (examples/quickstart/obd.ipynb: random log -> BTS, "all"
#: campaign, n_sim=100,000, logistic reward model with 3-fold cross-fitting): relative estimation errors.
OBP_PUBLISHED_RELATIVE_ERRORS = {"ipw": 0.084019, "dm": 0.190755, "dr": 0.106344}


class OpenBanditDataMissing(FileNotFoundError):
    """The obp wheel (its data) is not installed."""


def obp_root() -> Path:
    """The installed obp package's folder, found without importing it."""
    spec = importlib.util.find_spec("obp")
    if spec is None or not spec.submodule_search_locations:
        raise OpenBanditDataMissing(
            f"the obp package is not installed: `uv pip install --no-deps obp=={OBP_VERSION}` (make install does)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class BanditLog:
    """One policy's log of one campaign, preprocessed as obp's `OpenBanditDataset` does.

    Rows are impressions sorted by time; `position` is 0-based; `context` is the one-hot user features
    (first level dropped); `action_context` has one row per item (label-coded categories, then the
    numeric feature).
    """

    behavior: Behavior
    campaign: Campaign
    action: IntArray
    position: IntArray
    reward: FloatArray
    pscore: FloatArray
    context: FloatArray
    action_context: FloatArray
    n_actions: int
    len_list: int

    @property
    def n_rounds(self) -> int:
        """Number of logged impressions."""
        return int(self.action.size)


def _campaign_folder(behavior: str, campaign: str, root: Path | None) -> Path:
    if behavior not in ("random", "bts"):
        raise ValueError(f"behavior: 'random' or 'bts', got {behavior!r}")
    if campaign not in ("all", "men", "women"):
        raise ValueError(f"campaign: 'all', 'men' or 'women', got {campaign!r}")
    folder = (root or obp_root()) / "dataset" / "obd" / behavior / campaign
    if not (folder / f"{campaign}.csv").is_file():
        raise OpenBanditDataMissing(f"no Open Bandit sample at {folder} (obp=={OBP_VERSION} ships it)")
    return folder


def load_open_bandit(behavior: Behavior, campaign: Campaign = "all", *, root: Path | None = None) -> BanditLog:
    """Read one shipped log (`root`: obp's package folder, default the installed one)."""
    folder = _campaign_folder(behavior, campaign, root)
    data = pd.read_csv(folder / f"{campaign}.csv", index_col=0).sort_values("timestamp", kind="stable")
    items = pd.read_csv(folder / "item_context.csv", index_col=0).sort_values("item_id")
    user = data.loc[:, data.columns.str.contains("user_feature")]
    context = pd.get_dummies(user, drop_first=True).to_numpy(dtype=np.float64)
    categories = items.drop(columns=["item_id", "item_feature_0"])
    coded = categories.apply(lambda column: pd.factorize(column, sort=True)[0])
    action_context = np.column_stack([coded.to_numpy(dtype=np.float64), items["item_feature_0"].to_numpy()])
    action = data["item_id"].to_numpy(dtype=np.int64)
    position = pd.factorize(data["position"], sort=True)[0].astype(np.int64)
    return BanditLog(
        behavior=behavior,
        campaign=campaign,
        action=action,
        position=position,
        reward=data["click"].to_numpy(dtype=np.float64),
        pscore=data["propensity_score"].to_numpy(dtype=np.float64),
        context=context,
        action_context=action_context.astype(np.float64),
        n_actions=int(action.max()) + 1,
        len_list=int(position.max()) + 1,
    )


def bts_prior(campaign: Campaign = "all", *, root: Path | None = None) -> tuple[FloatArray, FloatArray]:
    """The Beta prior (alpha, beta per item) ZOZOTOWN's BTS ran with, as obp ships it."""
    if campaign not in ("all", "men", "women"):
        raise ValueError(f"campaign: 'all', 'men' or 'women', got {campaign!r}")
    path = (root or obp_root()) / "policy" / "conf" / "prior_bts.yaml"
    if not path.is_file():
        raise OpenBanditDataMissing(f"no BTS prior at {path} (obp=={OBP_VERSION} ships it)")
    prior = yaml.safe_load(path.read_text(encoding="utf-8"))[campaign]
    return np.asarray(prior["alpha"], dtype=np.float64), np.asarray(prior["beta"], dtype=np.float64)


def bts_action_distribution(
    alpha: FloatArray, beta: FloatArray, len_list: int, *, n_sim: int = 100_000, seed: int = 12345, chunk: int = 10_000
) -> FloatArray:
    """P(item shown at position) under Bernoulli Thompson sampling: an (items, len_list) matrix.

    Each simulated impression draws one Beta(alpha, beta) sample per item and ranks the items by it; the
    top `len_list` fill the positions. Columns sum to 1.
    """
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"beta: one value per item like alpha ({a.shape}), got {b.shape}")
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("alpha, beta: Beta parameters must be positive")
    if not 1 <= len_list <= a.size:
        raise ValueError(f"len_list: must be in [1, {a.size}], got {len_list}")
    if n_sim < 1:
        raise ValueError(f"n_sim: at least 1, got {n_sim}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((a.size, len_list))
    for start in range(0, n_sim, chunk):
        size = min(chunk, n_sim - start)
        draws = rng.beta(a, b, size=(size, a.size))
        top = np.argsort(-draws, axis=1)[:, :len_list]
        for pos in range(len_list):
            counts[:, pos] += np.bincount(top[:, pos], minlength=a.size)
    return counts / n_sim


@dataclass(frozen=True)
class OpenBanditValidation:
    """The estimates of BTS's click rate from the random log, against BTS's own logged click rate."""

    campaign: Campaign
    truth: Estimate
    estimates: list[Estimate] = field(default_factory=list)

    def relative_errors(self) -> dict[str, float]:
        """|estimate - truth| / truth per estimator."""
        return {e.estimator: e.relative_error(self.truth.value) for e in self.estimates}

    def frame(self) -> pd.DataFrame:
        """One row per estimator: value, interval, truth, relative error, whether the interval covers it."""
        return pd.DataFrame(
            [
                {
                    "estimator": e.estimator,
                    "value": e.value,
                    "low": e.low,
                    "high": e.high,
                    "truth": self.truth.value,
                    "relative_error": e.relative_error(self.truth.value),
                    "covers": e.covers(self.truth.value),
                    "effective_n": e.effective_n,
                    "n": e.n,
                }
                for e in self.estimates
            ]
        )


def _reward_model(log: BanditLog, n_folds: int, seed: int) -> FloatArray:
    """Cross-fitted click model, one per position within each fold (as obp's RegressionModel.fit_predict).

    A logistic regression (as obp's quickstart) on the user one-hots joined to the item's features.
    """
    return fit_reward_model(
        log.context,
        log.action,
        log.reward,
        log.n_actions,
        action_features=log.action_context,
        groups=log.position,
        interactions=False,
        n_folds=n_folds,
        seed=seed,
    )


def estimate_bts_from(
    log: BanditLog,
    distribution: FloatArray,
    *,
    alpha: float = 0.05,
    clip: float | None = None,
    interval: Interval = "normal",
    n_folds: int = 3,
    seed: int = 12345,
) -> list[Estimate]:
    """IPS, SNIPS, DR and DM estimates of the policy with per-position `distribution` from `log`."""
    target = distribution[:, log.position].T  # (rounds, items): the target's distribution at each row's position
    rows = np.arange(log.n_rounds)
    q = _reward_model(log, n_folds, seed)
    common: dict[str, Any] = {"alpha": alpha, "interval": interval, "seed": seed}
    return [
        ips(log.reward, log.pscore, target[rows, log.action], clip=clip, **common),
        snips(log.reward, log.pscore, target[rows, log.action], clip=clip, **common),
        doubly_robust(log.reward, log.pscore, target, log.action, q, clip=clip, **common),
        direct_method(target, q, **common),
    ]


def validate_on_open_bandit(
    campaign: Campaign = "all",
    *,
    n_sim: int = 100_000,
    seed: int = 12345,
    alpha: float = 0.05,
    clip: float | None = None,
    interval: Interval = "normal",
    n_folds: int = 3,
    root: Path | None = None,
) -> OpenBanditValidation:
    """Estimate BTS's click rate from the random log and compare with the BTS log's own (obp's protocol)."""
    random_log = load_open_bandit("random", campaign, root=root)
    bts_log = load_open_bandit("bts", campaign, root=root)
    prior_alpha, prior_beta = bts_prior(campaign, root=root)
    distribution = bts_action_distribution(prior_alpha, prior_beta, random_log.len_list, n_sim=n_sim, seed=seed)
    estimates = estimate_bts_from(
        random_log, distribution, alpha=alpha, clip=clip, interval=interval, n_folds=n_folds, seed=seed
    )
    truth = on_policy(bts_log.reward, alpha=alpha)
    return OpenBanditValidation(campaign=campaign, truth=truth, estimates=estimates)


def bootstrap_relative_errors(
    campaign: Campaign = "all",
    *,
    n_boot: int = 10,
    n_sim: int = 100_000,
    seed: int = 12345,
    n_folds: int = 3,
    root: Path | None = None,
) -> pd.DataFrame:
    """Relative errors over bootstrap resamples of the random log (obp's examples_with_obd protocol).

    Returns one row per (resample, estimator); the truth is the BTS log's mean click rate.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot: at least 1, got {n_boot}")
    full = load_open_bandit("random", campaign, root=root)
    truth = float(load_open_bandit("bts", campaign, root=root).reward.mean())
    prior_alpha, prior_beta = bts_prior(campaign, root=root)
    distribution = bts_action_distribution(prior_alpha, prior_beta, full.len_list, n_sim=n_sim, seed=seed)
    rows: list[dict[str, float | int | str]] = []
    for b in range(n_boot):
        idx = np.random.default_rng(b).integers(0, full.n_rounds, size=full.n_rounds)
        sample = BanditLog(
            behavior=full.behavior,
            campaign=full.campaign,
            action=full.action[idx],
            position=full.position[idx],
            reward=full.reward[idx],
            pscore=full.pscore[idx],
            context=full.context[idx],
            action_context=full.action_context,
            n_actions=full.n_actions,
            len_list=full.len_list,
        )
        for estimate in estimate_bts_from(sample, distribution, n_folds=n_folds, seed=seed):
            rows.append(
                {
                    "resample": b,
                    "estimator": estimate.estimator,
                    "value": estimate.value,
                    "relative_error": estimate.relative_error(truth),
                }
            )
    return pd.DataFrame(rows)
