"""Off-policy estimators: on simulated bandits whose true target value is known, and on the Open Bandit sample.

The simulated world: contexts x ~ N(0, I), four actions whose click probabilities are logistic in x; a
logging policy that explores (softmax of a different score, mixed with uniform) and a target policy that
prefers the truly better actions. The target's true value is E_x sum_a pi(a|x) mu(a, x), computed from a
million fresh contexts with the exact probabilities.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from decisions.ope import (
    Estimate,
    direct_method,
    doubly_robust,
    estimates_frame,
    evaluate,
    fit_reward_model,
    ips,
    join_rewards,
    on_policy,
    snips,
)

K, D = 4, 3
_WORLD = np.random.default_rng(2026)
THETA = _WORLD.normal(0, 1.0, size=(K, D))
BIAS = np.array([-1.0, -0.5, -1.5, -0.8])
PHI = _WORLD.normal(0, 1.0, size=(K, D))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _mu(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(x @ THETA.T + BIAS)))


def _logging(x: np.ndarray) -> np.ndarray:
    return 0.7 * _softmax(x @ PHI.T) + 0.3 / K


def _target(x: np.ndarray) -> np.ndarray:
    return _softmax(4.0 * _mu(x))


@dataclass
class Log:
    x: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    logged: np.ndarray  # (n, K) logging distribution
    target: np.ndarray  # (n, K) target distribution
    mu: np.ndarray  # (n, K) true click probabilities

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.action.size)

    @property
    def pscore(self) -> np.ndarray:
        return self.logged[self.rows, self.action]

    @property
    def target_p(self) -> np.ndarray:
        return self.target[self.rows, self.action]


def simulate(n: int, seed: int) -> Log:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D))
    logged = _logging(x)
    action = (rng.random(n)[:, None] > np.cumsum(logged, axis=1)).sum(axis=1).clip(0, K - 1)
    mu = _mu(x)
    reward = (rng.random(n) < mu[np.arange(n), action]).astype(float)
    return Log(x, action, reward, logged, _target(x), mu)


def _true_value() -> float:
    x = np.random.default_rng(999).normal(size=(1_000_000, D))
    return float((_target(x) * _mu(x)).sum(axis=1).mean())


TRUTH = _true_value()


@pytest.fixture(scope="module")
def repeats() -> dict[str, list[Estimate]]:
    """IPS, SNIPS and DR (cross-fitted logistic reward model) on 150 independent logs of 1,000 decisions."""
    out: dict[str, list[Estimate]] = {"ips": [], "snips": [], "dr": [], "ips_clipped": []}
    for seed in range(150):
        log = simulate(1000, seed)
        out["ips"].append(ips(log.reward, log.pscore, log.target_p))
        out["snips"].append(snips(log.reward, log.pscore, log.target_p))
        out["ips_clipped"].append(ips(log.reward, log.pscore, log.target_p, clip=2.0))
        q = fit_reward_model(log.x, log.action, log.reward, K, n_folds=2, seed=seed)
        out["dr"].append(doubly_robust(log.reward, log.pscore, log.target, log.action, q))
    return out


def test_the_target_is_worth_more_than_the_logging_policy() -> None:
    # The world is not degenerate: the log's own value differs from the target's, so reweighting matters.
    log = simulate(200_000, 1)
    assert on_policy(log.reward).high < TRUTH - 0.02


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ips", "dr"])
def test_unbiased_estimators_average_to_the_truth(repeats: dict[str, list[Estimate]], name: str) -> None:
    values = np.array([e.value for e in repeats[name]])
    se_of_mean = values.std(ddof=1) / np.sqrt(values.size)
    assert abs(values.mean() - TRUTH) < 4 * se_of_mean


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_intervals_cover_the_truth_at_about_the_nominal_rate(repeats: dict[str, list[Estimate]], name: str) -> None:
    coverage = np.mean([e.covers(TRUTH) for e in repeats[name]])
    # 95% nominal; 150 repeats give a binomial standard error of 1.8 points.
    assert 0.89 <= coverage <= 0.99, coverage


@pytest.mark.slow
def test_snips_bias_is_small_and_dr_has_less_variance_than_ips(repeats: dict[str, list[Estimate]]) -> None:
    sd = {name: np.std([e.value for e in estimates], ddof=1) for name, estimates in repeats.items()}
    snips_mean = np.mean([e.value for e in repeats["snips"]])
    assert abs(snips_mean - TRUTH) < 0.01
    assert sd["dr"] < 0.8 * sd["ips"]
    assert sd["snips"] < sd["ips"]
    # Its standard error says so too, on the average log.
    assert np.mean([e.std_error for e in repeats["dr"]]) < np.mean([e.std_error for e in repeats["ips"]])


@pytest.mark.slow
def test_clipping_trades_bias_for_variance(repeats: dict[str, list[Estimate]]) -> None:
    clipped, plain = repeats["ips_clipped"], repeats["ips"]
    assert np.std([e.value for e in clipped]) < np.std([e.value for e in plain])
    assert all(c.effective_n >= p.effective_n for c, p in zip(clipped, plain, strict=True))
    # Non-negative rewards: capping weights can only lower the estimate.
    assert all(c.value <= p.value + 1e-12 for c, p in zip(clipped, plain, strict=True))
    assert clipped[0].clip == 2.0


def test_effective_sample_size_is_kish() -> None:
    log = simulate(2000, 3)
    w = log.target_p / log.pscore
    estimate = ips(log.reward, log.pscore, log.target_p)
    assert estimate.effective_n == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert 0 < estimate.effective_n < estimate.n == 2000


def test_on_the_logging_policy_itself_every_estimator_is_the_mean_reward() -> None:
    log = simulate(3000, 4)
    mean = log.reward.mean()
    same = ips(log.reward, log.pscore, log.pscore)
    assert same.value == pytest.approx(mean)
    assert same.effective_n == pytest.approx(3000)
    assert snips(log.reward, log.pscore, log.pscore).value == pytest.approx(mean)
    plain = on_policy(log.reward)
    assert plain.value == pytest.approx(mean) and plain.low < mean < plain.high and plain.estimator == "on_policy"


def test_dr_with_a_zero_model_is_ips_and_with_the_true_model_has_less_variance() -> None:
    log = simulate(5000, 5)
    zero = doubly_robust(log.reward, log.pscore, log.target, log.action, np.zeros((5000, K)))
    assert zero.value == pytest.approx(ips(log.reward, log.pscore, log.target_p).value)
    oracle = doubly_robust(log.reward, log.pscore, log.target, log.action, log.mu)
    assert oracle.std_error < 0.7 * zero.std_error
    assert oracle.covers(TRUTH)
    # The direct method with the true model is the sample's true value (its interval is the context noise).
    dm = direct_method(log.target, log.mu)
    assert dm.value == pytest.approx((log.target * log.mu).sum(axis=1).mean())


def test_snips_follows_a_reward_shift_exactly_and_ips_does_not() -> None:
    log = simulate(2000, 6)
    shifted = log.reward + 10
    assert snips(shifted, log.pscore, log.target_p).value == pytest.approx(
        snips(log.reward, log.pscore, log.target_p).value + 10
    )
    assert ips(shifted, log.pscore, log.target_p).value != pytest.approx(
        ips(log.reward, log.pscore, log.target_p).value + 10, abs=1e-3
    )


def test_a_target_that_never_takes_a_logged_action_gives_ips_zero_and_snips_nothing() -> None:
    r, p = np.ones(10), np.full(10, 0.5)
    assert ips(r, p, np.zeros(10)).value == 0
    estimate = snips(r, p, np.zeros(10))
    assert np.isnan(estimate.value) and estimate.effective_n == 0


def test_bootstrap_interval_agrees_with_the_normal_one_on_a_large_log() -> None:
    log = simulate(20_000, 7)
    normal = ips(log.reward, log.pscore, log.target_p)
    boot = ips(log.reward, log.pscore, log.target_p, interval="bootstrap", n_bootstrap=400, seed=1)
    assert boot.interval == "bootstrap" and boot.value == normal.value
    assert boot.high - boot.low == pytest.approx(normal.high - normal.low, rel=0.15)
    again = ips(log.reward, log.pscore, log.target_p, interval="bootstrap", n_bootstrap=400, seed=1)
    assert (again.low, again.high) == (boot.low, boot.high)  # seeded
    s = snips(log.reward, log.pscore, log.target_p, interval="bootstrap", n_bootstrap=200)
    assert s.low < s.value < s.high
    d = doubly_robust(log.reward, log.pscore, log.target, log.action, log.mu, interval="bootstrap", n_bootstrap=200)
    assert d.low < d.value < d.high


def test_the_reward_model_is_cross_fitted_and_learns_the_click_probabilities() -> None:
    log = simulate(6000, 8)
    q = fit_reward_model(log.x, log.action, log.reward, K, n_folds=3, seed=0)
    assert q.shape == (6000, K) and ((q >= 0) & (q <= 1)).all()
    assert np.corrcoef(q.ravel(), log.mu.ravel())[0, 1] > 0.9
    # Per group (as obp's per-position models), and with action features instead of one-hots.
    grouped = fit_reward_model(log.x, log.action, log.reward, K, groups=log.x[:, 0] > 0, action_features=np.eye(K))
    assert np.corrcoef(grouped.ravel(), log.mu.ravel())[0, 1] > 0.85
    # Without features it is a per-action model: constant down each column.
    plain = fit_reward_model(None, log.action, log.reward, K, n_folds=2, seed=0)
    assert plain.shape == (6000, K) and len(np.unique(plain.round(12))) <= 2 * K
    # Constant rewards: the constant; real-valued rewards: a regression.
    assert (fit_reward_model(log.x, log.action, np.zeros(6000), K) == 0).all()
    values = fit_reward_model(log.x, log.action, log.reward * 30.0 + 5, K)
    assert np.corrcoef(values.ravel(), log.mu.ravel())[0, 1] > 0.8
    assert values[np.arange(6000), log.action].mean() == pytest.approx((log.reward * 30.0 + 5).mean(), rel=0.05)


# ------------------------------------------------------------------------------------------ error paths

N = 5
R = np.zeros(N)
P = np.full(N, 0.5)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: ips(R, [0.5, 0.5, 0.0, 0.5, 0.5], P), "logged_probability"),
        (lambda: ips(R, [0.5, 0.5, 1.5, 0.5, 0.5], P), "logged_probability"),
        (lambda: ips(R, [0.5, -0.1, 0.5, 0.5, 0.5], P), "logged_probability"),
        (lambda: ips(R, P, [0.5, 0.5, 1.2, 0.5, 0.5]), "target_probability"),
        (lambda: ips(R, P, [0.5, -0.5, 0.2, 0.5, 0.5]), "target_probability"),
        (lambda: ips(R, P[:4], P), "logged_probability"),
        (lambda: snips(R, P, P[:3]), "target_probability"),
        (lambda: ips([], [], []), "rewards"),
        (lambda: ips([0, np.nan, 0, 0, 0], P, P), "rewards"),
        (lambda: ips(R, P, P, alpha=1.5), "alpha"),
        (lambda: ips(R, P, P, clip=0), "clip"),
        (lambda: ips(R, P, P, interval="jackknife"), "interval"),  # type: ignore[arg-type]
        (lambda: ips(R, P, P, interval="bootstrap", n_bootstrap=2), "n_bootstrap"),
        (lambda: ips(np.zeros((N, 2)), P, P), "rewards"),
        (lambda: doubly_robust(R, P, np.full((N, 2), 0.5), [0, 1, 0, 1, 2], np.zeros((N, 2))), "chosen_index"),
        (
            lambda: doubly_robust(R, P, np.full((N, 2), 0.5), [0, 1, 0, 1, 1], np.zeros((N, 3))),
            "reward_model_predictions",
        ),
        (lambda: doubly_robust(R, P, np.full((N, 2), 0.6), [0, 1, 0, 1, 1], np.zeros((N, 2))), "target_action_dist"),
        (lambda: doubly_robust(R, P, np.full((4, 2), 0.5), [0, 1, 0, 1], np.zeros((4, 2))), "target_action_dist"),
        (lambda: doubly_robust(R, P, np.full((N, 2), 0.5), [0.0, 1, 0, 1, 1], np.zeros((N, 2))), "chosen_index"),
        (lambda: fit_reward_model(np.zeros((N, 1)), [0, 1, 0, 1, 1], R, 2, n_folds=1), "n_folds"),
        (lambda: fit_reward_model(np.zeros((4, 1)), [0, 1, 0, 1, 1], R, 2), "features"),
        (lambda: fit_reward_model(None, [0, 1, 0, 1, 1], R, 2, action_features=np.eye(3)), "action_features"),
        (lambda: fit_reward_model(None, [0, 1, 0, 1, 1], R, 2, groups=[0, 1]), "groups"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(call, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        call()


# ------------------------------------------------------------------------------------- the decision log

NAMES = ["retention_offer", "cross_sell_savings", "callback", "none"]


def _decision_log(log: Log) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(log.action.size)],
            "action": [NAMES[a] for a in log.action],
            "probability": log.pscore,
            "reward": log.reward,
            "action_probabilities": [json.dumps(dict(zip(NAMES, row.tolist(), strict=True))) for row in log.logged],
        }
    )


def _target_frame(log: Log) -> pd.DataFrame:
    return pd.DataFrame(log.target, columns=NAMES)


def test_evaluate_reads_the_decision_log_and_agrees_with_the_estimators() -> None:
    log = simulate(4000, 9)
    decisions = _decision_log(log)
    estimates = evaluate(decisions, _target_frame(log), features=pd.DataFrame(log.x), seed=3)
    by_name = {e.estimator: e for e in estimates}
    assert list(by_name) == ["on_policy", "ips", "snips", "dr"]
    assert by_name["on_policy"].value == pytest.approx(log.reward.mean())
    assert by_name["ips"].value == pytest.approx(ips(log.reward, log.pscore, log.target_p).value)
    assert by_name["snips"].value == pytest.approx(snips(log.reward, log.pscore, log.target_p).value)
    q = fit_reward_model(log.x, log.action, log.reward, K, n_folds=3, seed=3)
    assert by_name["dr"].value == pytest.approx(doubly_robust(log.reward, log.pscore, log.target, log.action, q).value)
    assert all(e.covers(TRUTH) for e in estimates[1:])
    assert all(e.support == pytest.approx(1.0) for e in estimates)
    table = estimates_frame(estimates)
    assert list(table["estimator"]) == ["on_policy", "ips", "snips", "dr"] and "effective_n" in table


def test_evaluate_takes_a_callable_a_fixed_distribution_and_given_reward_predictions() -> None:
    log = simulate(3000, 10)
    decisions = _decision_log(log)
    from_callable = evaluate(decisions, lambda frame: [dict(zip(NAMES, row, strict=True)) for row in log.target])
    from_frame = evaluate(decisions, _target_frame(log))
    assert [e.value for e in from_callable] == pytest.approx([e.value for e in from_frame])
    # A context-free target: always the callback.
    always = evaluate(decisions, {"callback": 1.0})
    callback = log.action == 2
    expected = (log.reward * callback / log.pscore).mean()
    assert always[1].value == pytest.approx(expected)
    w = 1 / log.pscore[callback]
    assert always[2].value == pytest.approx((w * log.reward[callback]).sum() / w.sum())
    # DR with the caller's reward predictions (the true ones here).
    oracle = evaluate(decisions, _target_frame(log), reward_predictions=pd.DataFrame(log.mu, columns=NAMES))
    assert oracle[3].value == pytest.approx(doubly_robust(log.reward, log.pscore, log.target, log.action, log.mu).value)


def test_join_rewards_counts_each_event_once_and_no_outcome_as_zero() -> None:
    decisions = pd.DataFrame({"decision_id": ["a", "b", "c", "d"], "action": ["x"] * 4})
    outcomes = pd.DataFrame(
        {
            "decision_id": ["a", "a", "a", "b", "b", "c"],
            "event": ["impression", "conversion", "conversion", "click", "complaint", "feedback"],
        }
    )
    joined = join_rewards(decisions, outcomes)
    assert joined["reward"].tolist() == [1.0, 0.0, 0.0, 0.0]
    weighted = join_rewards(decisions, outcomes, {"conversion": 1.0, "click": 0.1, "complaint": -0.5})
    assert weighted["reward"].tolist() == pytest.approx([1.0, -0.4, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"^outcomes: missing column\(s\) \['event'\]"):
        join_rewards(decisions, outcomes.drop(columns=["event"]))


def test_evaluate_takes_a_list_of_decision_distributions_rounded_as_json_stores_them() -> None:
    log = simulate(1000, 14)
    decisions = _decision_log(log)
    rounded = [{k: round(v, 4) for k, v in zip(NAMES, row.tolist(), strict=True)} for row in log.target]
    from_list = evaluate(decisions, rounded)
    exact = evaluate(decisions, _target_frame(log))
    assert [e.value for e in from_list] == pytest.approx([e.value for e in exact], rel=1e-3)


def test_evaluate_reports_the_target_mass_the_log_cannot_support() -> None:
    log = simulate(1000, 11)
    decisions = _decision_log(log)
    # The logging policy never offered "upgrade" (it is not in action_probabilities): half the target's
    # mass is on it, so IPS-type estimates see only the other half.
    estimates = evaluate(decisions, {"upgrade": 0.5, "callback": 0.5})
    assert [e.support for e in estimates[1:]] == pytest.approx([0.5, 0.5, 0.5])
    # Rows logged without their distribution are left out of the diagnostic; none at all: unknown.
    decisions.loc[:499, "action_probabilities"] = None
    assert evaluate(decisions, {"upgrade": 0.5, "callback": 0.5})[1].support == pytest.approx(0.5)
    decisions["action_probabilities"] = None
    assert np.isnan(evaluate(decisions, {"upgrade": 0.5, "callback": 0.5})[1].support)


def test_evaluate_missing_rewards_are_an_error_unless_told() -> None:
    log = simulate(500, 12)
    decisions = _decision_log(log)
    decisions.loc[[3, 7], "reward"] = np.nan
    with pytest.raises(ValueError, match=r"^reward: 2 decision\(s\) have no reward \(first 'd3'\)"):
        evaluate(decisions, _target_frame(log))
    zero = evaluate(decisions, _target_frame(log), missing_reward="zero")
    assert zero[0].n == 500 and zero[0].value == pytest.approx(np.nan_to_num(decisions["reward"]).mean())
    dropped = evaluate(decisions, _target_frame(log), missing_reward="drop", features=pd.DataFrame(log.x))
    assert dropped[0].n == 498 and dropped[0].value == pytest.approx(decisions["reward"].mean())


@pytest.mark.parametrize(
    ("mutate", "target", "message"),
    [
        (lambda d: d.drop(columns=["probability"]), None, r"^log: missing column\(s\) \['probability'\]"),
        (lambda d: d.iloc[:0], None, r"^log: no decisions"),
        (lambda d: d.assign(probability=0.0), None, r"^logged_probability:"),
        (lambda d: d.assign(action_probabilities="{not json"), None, r"^action_probabilities: row 0 is not JSON"),
        (lambda d: d, pd.DataFrame({"callback": [1.0, 1.0]}), r"^target: 2 distributions for 50 logged decisions"),
        (lambda d: d, {"callback": 0.7}, r"^target_action_dist: each row must sum to 1"),
    ],
)
def test_evaluate_bad_logs_name_the_field(mutate, target, message: str) -> None:
    log = simulate(50, 13)
    decisions = mutate(_decision_log(log))
    with pytest.raises(ValueError, match=message):
        evaluate(decisions, target if target is not None else _target_frame(log).iloc[: len(decisions)])


# ------------------------------------------------------------------------ the Open Bandit Dataset sample

from decisions import open_bandit  # noqa: E402


@pytest.fixture(scope="module")
def obd_validation() -> open_bandit.OpenBanditValidation:
    """obp's protocol on the shipped sample: the random log (10,000 impressions) reweighted to BTS."""
    return open_bandit.validate_on_open_bandit("all", n_sim=100_000, seed=12345)


def test_the_sample_is_read_without_importing_obp() -> None:
    # In a fresh interpreter: finding and reading the data must not execute obp (it would need torch).
    code = (
        "import sys; from decisions.open_bandit import load_open_bandit, bts_prior; "
        "log = load_open_bandit('random', 'all'); bts_prior('all'); "
        "print(log.n_rounds, log.n_actions, log.len_list, log.context.shape[1], 'obp' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    out = done.stdout.split()
    # As obp's OpenBanditDataset reads it: 10,000 impressions, 80 items, 3 positions, 20 user one-hots.
    assert out == ["10000", "80", "3", "20", "False"]


def test_the_random_log_is_uniform_and_the_bts_log_is_not() -> None:
    random_log = open_bandit.load_open_bandit("random", "all")
    assert np.allclose(random_log.pscore, 1 / 80)
    assert set(np.unique(random_log.position)) == {0, 1, 2}
    assert random_log.action_context.shape == (80, 4)
    bts_log = open_bandit.load_open_bandit("bts", "all")
    assert bts_log.pscore.std() > 0 and bts_log.reward.mean() > random_log.reward.mean()


def test_bts_action_distribution_reproduces_obps_published_one() -> None:
    alpha, beta = open_bandit.bts_prior("all")
    dist = open_bandit.bts_action_distribution(alpha, beta, 3, n_sim=100_000, seed=12345)
    assert dist.shape == (80, 3) and np.allclose(dist.sum(axis=0), 1)
    # obp's quickstart (examples/quickstart/obd.ipynb) prints these rows of BernoulliTS.compute_batch_action_dist
    # (is_zozotown_prior, campaign "all", n_sim=100,000); Monte Carlo error is about 3e-4 at p=0.01, 8e-4 at 0.07.
    published = {0: [0.01078, 0.00931, 0.00917], 1: [0.00167, 0.00077, 0.00076], 79: [0.0582, 0.07603, 0.07998]}
    for item, row in published.items():
        assert dist[item] == pytest.approx(row, abs=0.0025), item


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_estimates_from_the_random_log_cover_bts_click_rate(
    obd_validation: open_bandit.OpenBanditValidation, name: str
) -> None:
    truth = obd_validation.truth.value
    assert truth == pytest.approx(0.0042)  # 42 clicks in the BTS log's 10,000 impressions
    estimate = {e.estimator: e for e in obd_validation.estimates}[name]
    assert estimate.covers(truth), (estimate, truth)
    # Documented bounds (figures in the note): IPS 0.084 (obp publishes 0.084), SNIPS 0.137, DR 0.126.
    assert estimate.relative_error(truth) < 0.2
    assert estimate.effective_n < 0.25 * estimate.n  # BTS concentrates on a few items: the log is worth ~1,600 rows


@pytest.mark.slow
def test_ips_reproduces_obps_published_estimate(obd_validation: open_bandit.OpenBanditValidation) -> None:
    ips_estimate = {e.estimator: e for e in obd_validation.estimates}["ips"]
    # obp's quickstart: IPW 0.004553, relative-ee 0.084019 against the BTS log's 0.0042.
    assert ips_estimate.value == pytest.approx(0.004553, rel=0.01)
    assert ips_estimate.relative_error(obd_validation.truth.value) == pytest.approx(
        open_bandit.OBP_PUBLISHED_RELATIVE_ERRORS["ipw"], abs=0.01
    )
    table = obd_validation.frame()
    assert list(table["estimator"]) == ["ips", "snips", "dr", "dm"] and table["covers"].iloc[:3].all()


@pytest.mark.slow
def test_bootstrap_protocol_relative_errors() -> None:
    errors = open_bandit.bootstrap_relative_errors("all", n_boot=3, n_sim=20_000)
    assert len(errors) == 3 * 4 and set(errors["estimator"]) == {"ips", "snips", "dr", "dm"}
    mean = errors.groupby("estimator")["relative_error"].mean()
    assert (mean < 1.0).all()


def test_missing_obp_data_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(open_bandit.OpenBanditDataMissing, match="ships it"):
        open_bandit.load_open_bandit("random", "all", root=tmp_path)
    with pytest.raises(open_bandit.OpenBanditDataMissing, match="ships it"):
        open_bandit.bts_prior("all", root=tmp_path)
    with pytest.raises(ValueError, match="^behavior:"):
        open_bandit.load_open_bandit("greedy", "all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^campaign:"):
        open_bandit.load_open_bandit("random", "kids")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^len_list:"):
        open_bandit.bts_action_distribution(np.ones(3), np.ones(3), 4)
