"""Decision policies governed like models: states, the registry round trip, the gate's checks and verdict, the
flow on a small trained world with its truth, and the command line (CliRunner and a real subprocess)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from custintel.settings import Settings
from decisions.policy import load_policy
from decisions.simulation import Simulation
from decisions.states import StatesError, customer_states
from flows.cli import app
from governance import decision_gate, store
from governance.decision_gate import OffPolicy, PolicyCandidate, check_equity, judge_policy, record_policy
from governance.gate import Waiver
from models.registry import Registry

NAME = "custintel-nba"
PACKAGED = Path(__file__).parents[1] / "decisions" / "policy.yaml"


def _policy_text(**changes: object) -> str:
    data = yaml.safe_load(PACKAGED.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


# --- states -----------------------------------------------------------------------------------------------------


def test_states_line_up_scores_consent_signals_and_groups_with_the_rows() -> None:
    policy = load_policy(PACKAGED)
    column = policy.signals["failed_self_service"]
    features = pd.DataFrame({"customer_key": ["a", "b", "c"], column: [3.0, np.nan, 0.0]})
    propensity = pd.DataFrame({"P1": [0.2, np.nan], "P2": [0.1, 0.4]}, index=["c", "a"])  # by key, out of order
    states = customer_states(
        policy, features, churn_risk=np.array([0.1, np.nan, 0.3]), uplift=None, propensity=propensity,
        margins={"P1": 5.0}, consent={"b": {"marketing": False}}, minors=np.array([0.0, 1.0, np.nan]),
        groups=np.array(["f", None, "m"], dtype=object), history={"c": [("retention_offer", dt.date(2025, 1, 1))]},
        products_held={"a": ["P3"]},
    )  # fmt: skip
    a, b, c = states
    assert [s.customer_key for s in states] == ["a", "b", "c"]
    assert a.propensity == {"P2": 0.4} and c.propensity == {"P1": 0.2, "P2": 0.1} and b.propensity == {}
    assert a.churn_risk == pytest.approx(0.1) and b.churn_risk is None and a.uplift is None  # no uplift champion
    assert a.consent["marketing"] is True and b.consent["marketing"] is False and b.consent["profiling"] is True
    assert (a.is_minor, b.is_minor, c.is_minor) == (False, True, False)  # an unknown age is not a minor
    assert (a.group, b.group, c.group) == ("f", None, "m")
    assert a.signals == {"failed_self_service": 3.0} and b.signals == {}  # NaN: the signal is not known
    assert a.products_held == frozenset({"P3"}) and c.history == (("retention_offer", dt.date(2025, 1, 1)),)
    assert a.margin == {"P1": 5.0}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"churn_risk": np.zeros(2)}, "churn_risk"),
        ({"minors": np.zeros(4)}, "minors"),
        ({"groups": np.array(["f"])}, "groups"),
        ({"propensity": pd.DataFrame({"P1": [0.1]})}, "propensity"),
    ],
)
def test_states_refuse_arrays_that_do_not_line_up(change: dict, field: str) -> None:
    args: dict = {"churn_risk": None, "uplift": None, "propensity": None, "margins": {}, "consent": {},
                  "minors": None, "groups": None, "history": {}, **change}  # fmt: skip
    features = pd.DataFrame({"customer_key": ["a", "b", "c"]})
    with pytest.raises(StatesError, match=field):
        customer_states(load_policy(PACKAGED), features, **args)


def test_states_refuse_a_customer_twice() -> None:
    with pytest.raises(StatesError, match="more than once"):
        customer_states(load_policy(PACKAGED), pd.DataFrame({"customer_key": ["a", "a"]}), churn_risk=None,
                        uplift=None, propensity=None, margins={}, consent={}, minors=None, groups=None,
                        history={})  # fmt: skip


# --- the registry -----------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_policies_round_trip_through_the_registry(tmp_path: Path) -> None:
    registry = Registry(Settings(home=tmp_path / "home"))
    assert registry.policy_version(NAME) is None  # an empty home: no store read into existence
    text = _policy_text()
    policy = load_policy(text)
    first = registry.register_policy(NAME, text, policy.digest(), {"custintel.policy_name": policy.name})
    assert first == "1"
    assert registry.policy_version(NAME, "challenger") == ("1", text)
    assert registry.policy_version(NAME) is None  # no champion until the gate says so
    assert registry.register_policy(NAME, text, policy.digest(), {}) == "1"  # the same policy: its version
    other = _policy_text(exploration=0.1)
    second = registry.register_policy(NAME, other, load_policy(other).digest(), {})
    assert second == "2" and registry.policy_version(NAME, "challenger") == ("2", other)
    info = registry.version(NAME, "2")
    assert info.tags["custintel.policy_digest"] == load_policy(other).digest()
    assert registry.run(info.run_id or "").tags["custintel.family"] == "decision_policy"
    assert [m.alias for m in registry.alias_moves(NAME)] == ["challenger", "challenger"]


# --- the gate's checks ------------------------------------------------------------------------------------------


def _exposure(rows: list[tuple[str, str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["kind", "group", "eligible", "allocated"])


def test_equity_blocks_a_ratio_below_the_floor_beyond_noise_and_names_the_groups() -> None:
    check = check_equity(_exposure([("retention_offer", "f", 1000, 50), ("retention_offer", "m", 1000, 200)]),
                         "gender", 0.8, 0.05)  # fmt: skip
    assert not check.passed and check.waivable
    assert "gender=f is allocated at 0.25x the rate of gender=m" in check.details[0]
    assert check.numbers["retention_offer.f.ratio"] == pytest.approx(0.25)
    assert check.numbers["retention_offer.f.ratio_upper"] < 0.8


def test_equity_lets_a_shortfall_within_sampling_noise_pass() -> None:
    # 0.7x the rate on small groups: the upper bound of the ratio reaches the floor
    check = check_equity(_exposure([("cross_sell", "f", 60, 7), ("cross_sell", "m", 60, 10)]), "gender", 0.8, 0.05)
    assert check.passed, check.details
    assert check.numbers["cross_sell.f.ratio"] == pytest.approx(0.7)
    assert check.numbers["cross_sell.f.ratio_upper"] >= 0.8


def test_equity_says_too_few_to_judge_for_small_and_unknown_groups() -> None:
    check = check_equity(
        _exposure([("retention_offer", "f", 10, 0), ("retention_offer", "m", 500, 100),
                   ("retention_offer", "unknown", 900, 10), ("service_recovery", "m", 40, 4)]),
        "gender", 0.8, 0.05,
    )  # fmt: skip
    assert check.passed
    text = " ".join(check.details)
    assert "retention_offer: too few to judge" in text and "service_recovery: too few to judge" in text


def _simulation(exposure: pd.DataFrame, allocated: int = 250, capacity: int = 400) -> Simulation:
    chosen = pd.DataFrame({"customer_key": [f"c{i}" for i in range(allocated)], "channel": "call_centre",
                           "action": "retention_offer", "kind": "retention_offer", "group": "m",
                           "expected_value": 1.0})  # fmt: skip
    return Simulation(
        today=dt.date(2025, 12, 1),
        customers=2000,
        chosen=chosen,
        allocation=pd.DataFrame(
            [
                {
                    "action": "retention_offer",
                    "kind": "retention_offer",
                    "channel": "call_centre",
                    "count": allocated,
                    "capacity": capacity,
                }
            ]
        ),  # fmt: skip
        channels=pd.DataFrame(
            [
                {
                    "channel": "call_centre",
                    "capacity": capacity,
                    "allocated": allocated,
                    "value": 250.0,
                    "unconstrained_value": 400.0,
                    "value_given_up": 150.0,
                }
            ]
        ),  # fmt: skip
        exposure=exposure,
        value=250.0,
        unconstrained_value=400.0,
    )


def _registered(settings: Settings, text: str) -> PolicyCandidate:
    registry = Registry(settings)
    policy = load_policy(text)
    version = registry.register_policy(NAME, text, policy.digest(), {})
    run_id = registry.version(NAME, version).run_id or ""
    return PolicyCandidate(NAME, version, run_id, policy, policy.digest(), registry.alias_version(NAME, "champion"))


@pytest.mark.integration
def test_a_policy_that_breaks_its_equity_floor_is_blocked_and_one_that_meets_it_is_promoted(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    me = "tester@ci"
    unfair = _exposure([("retention_offer", "f", 1000, 50), ("retention_offer", "m", 1000, 200)])
    candidate = _registered(settings, _policy_text())
    judgement = judge_policy(candidate, _simulation(unfair), OffPolicy(skipped="the decision log is empty"), None,
                             governance_digest="g" * 64, actor=me)  # fmt: skip
    decision = record_policy(settings, candidate, judgement)
    assert decision["result"] == "blocked"
    assert any(r.startswith("equity: retention_offer: gender=f") and "below the floor 0.8" in r
               for r in decision["reasons"])  # fmt: skip
    registry = Registry(settings)
    assert registry.alias_version(NAME, "champion") is None and registry.alias_version(NAME, "challenger") == "1"
    assert registry.version(NAME, "1").tags["custintel.gate.result"] == "blocked"
    logged = store.read_decisions(settings, NAME)
    assert [d["result"] for d in logged] == ["blocked"] and logged[0]["decision_policy_digest"] == candidate.digest
    card = (settings.governance_dir / "cards" / NAME / "1" / "card.md").read_text()
    assert "Decision policy card" in card and "below the floor" in card and "decision log is empty" in card

    # a waiver covers an equity failure (a named approver, in writing)
    waived = judge_policy(candidate, _simulation(unfair), OffPolicy(skipped="empty"), None, governance_digest="g" * 64,
                          actor=me, waiver=Waiver("Ada Reviewer", "regional pilot approved by the board"))  # fmt: skip
    assert waived.verdict.result == "waived"

    fair = _exposure([("retention_offer", "f", 1000, 190), ("retention_offer", "m", 1000, 200)])
    second = _registered(settings, _policy_text(exploration=0.1))
    decision = record_policy(settings, second, judge_policy(second, _simulation(fair), OffPolicy(skipped="empty"),
                                                            None, governance_digest="g" * 64, actor=me))  # fmt: skip
    assert decision["result"] == "promoted" and decision["champion_after"] == "2"
    assert registry.policy_version(NAME) == ("2", _policy_text(exploration=0.1))
    metrics = registry.run(second.run_id).metrics
    assert metrics["simulation.expected_value"] == pytest.approx(250.0) and metrics["gate.passed"] == 1.0
    assert [m.alias for m in registry.alias_moves(NAME)][-1] == "challenger"  # promoted: challenger removed
    trail_actions = [json.loads(line)["action"] for line in
                     (settings.governance_dir / "audit_trail.jsonl").read_text().splitlines()]  # fmt: skip
    assert trail_actions == ["promotion", "promotion"]


def test_capacity_breaches_cannot_be_waived() -> None:
    policy = load_policy(PACKAGED)
    check = decision_gate.check_capacity(_simulation(_exposure([]), allocated=500, capacity=400), policy)
    assert not check.passed and not check.waivable and "call_centre: 500 actions > capacity 400" in check.details[0]


# --- end to end on a small trained world ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champions(featured: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The small world with churn, propensity and uplift trained and made champions (their own gate is elsewhere)."""
    from flows.train import PLAIN_STEPS as TRAIN_STEPS
    from flows.train import run_training

    home = tmp_path_factory.mktemp("nba") / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
    settings = Settings(home=home, training_config=featured.training_config)
    for family in ("churn", "propensity"):
        run_training(settings, family, TRAIN_STEPS, lambda _: None, trials=1)
    registry = Registry(settings)
    for family in ("churn", "propensity", "uplift"):
        name = registry.registered_names()[family]
        store.move_champion(registry, name, "1", "test: made champion directly")
    return settings


@pytest.mark.slow
@pytest.mark.integration
def test_the_gate_simulates_the_latest_customers_and_measures_the_offer_against_the_truth(
    champions: Settings, world: object
) -> None:
    from flows.decisions import PLAIN_STEPS, run_policy_gate

    truth = world.truth  # type: ignore[attr-defined]
    decision = run_policy_gate(champions, PACKAGED, truth, None, "tester@ci", PLAIN_STEPS)
    summary = decision["summary"]
    assert summary["as_of"] == "2025-06-01"  # the latest cutoff the small world's store holds
    assert summary["customers"] > 1000
    policy = load_policy(PACKAGED)
    for row in summary["channels"]:
        assert row["allocated"] <= policy.capacity[row["channel"]]
    assert {r["kind"] for r in summary["allocation"]} >= {"retention_offer"}
    assert summary["off_policy"] == "this build has no decision log or estimators" or summary["off_policy"]
    rows = {r["strategy"]: r for r in summary["truth"]}
    assert {"best", "uplift", "churn_risk", "random"} <= set(rows)
    assert rows["best"]["retained"] >= max(r["retained"] for r in rows.values()) - 1e-9  # nothing beats the best
    assert decision["result"] in ("promoted", "blocked")
    registry = Registry(champions)
    run = registry.run(registry.version(NAME, decision["version"]).run_id or "")
    assert run.metrics["truth.best.retained"] == pytest.approx(rows["best"]["retained"], rel=1e-6)
    assert "truth.uplift.retained" in run.metrics and "simulation.expected_value" in run.metrics
    card = (champions.governance_dir / "cards" / NAME / decision["version"] / "card.html").read_text()
    assert "Against the generator&#x27;s truth" in card and "Allocation per action and channel" in card
    # the same file again: the same version, judged again
    again = run_policy_gate(champions, PACKAGED, None, None, "tester@ci", PLAIN_STEPS)
    assert again["version"] == decision["version"] and again["summary"]["truth"] is None


@pytest.mark.slow
@pytest.mark.integration
def test_the_command_line_promotes_and_shows_the_policy_in_process_and_as_a_subprocess(
    champions: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(champions.home_dir, home)
    env_config = ["--home", str(home)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTINTEL_TRAINING_CONFIG", str(champions.training_config))
        result = CliRunner().invoke(app, [*env_config, "decisions", "promote", "--engine", "local"])
        assert result.exit_code in (0, 2), result.output
        assert "allocation on" in result.output and "equity" in result.output
        shown = CliRunner().invoke(app, [*env_config, "decisions", "show"])
        assert shown.exit_code == 0, shown.output
        bad = CliRunner().invoke(app, [*env_config, "decisions", "promote", "--engine", "local", "--policy",
                                       str(tmp_path / "missing.yaml")])  # fmt: skip
        assert bad.exit_code == 1 and "policy: no file at" in bad.output
    broken = tmp_path / "broken.yaml"
    broken.write_text(_policy_text(capacity={"fax": 3}))
    cli = str(Path(sys.executable).with_name("custintel"))
    env = {**os.environ, "CUSTINTEL_HOME": str(home), "CUSTINTEL_TRAINING_CONFIG": str(champions.training_config),
           "PYTHONPATH": str(Path(__file__).parents[1])}  # fmt: skip
    out = subprocess.run([cli, "decisions", "register", "--policy", str(broken)], env=env, capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 1 and "capacity" in out.stdout and "fax" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([cli, "decisions", "show"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and "@challenger" in out.stdout, out.stdout + out.stderr


@pytest.mark.integration
def test_the_off_policy_estimate_reads_the_logged_decisions_and_their_outcomes(tmp_path: Path) -> None:
    decision_log = pytest.importorskip("serving.decision_log")  # the service's log and the estimators: other lanes
    pytest.importorskip("decisions.ope")
    import sqlite3

    from decisions.arbitration import decide
    from flows.decisions import history, off_policy
    from serving.policy import load_serving_policy

    settings = Settings(home=tmp_path / "home")
    policy = load_policy(PACKAGED)
    today = dt.date(2025, 12, 1)
    rng = np.random.default_rng(0)
    features = pd.DataFrame({"customer_key": [f"c{i}" for i in range(400)]})
    states = customer_states(policy, features, churn_risk=rng.random(400), uplift=rng.normal(0.03, 0.05, 400),
                             propensity=None, margins={}, consent={}, minors=None, groups=None, history={})  # fmt: skip
    assert off_policy(settings, policy, states, today).skipped == "the decision log is empty: nothing to estimate from"
    path = decision_log.decision_log_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    rule = load_serving_policy(settings.serving_policy).audit.customer_key
    log = decision_log.DecisionLog(path, rule, settings.serving_log_salt or "custintel")
    rows = []
    for state in states:
        decision_id = decision_log.new_decision_id()
        d = decide(policy, state, "app", today, seed=decision_log.seed_of(decision_id))
        rows.append(decision_log.LoggedDecision(
            decision_id, log.key(state.customer_key), "app", policy.name, "1", d.actions[0].action,
            [{"action": d.actions[0].action}], d.probability, d.action_probabilities, d.explored, d.fallback,
            d.fallback_reason, d.reasons, {}, decision_log.now_iso(), 0.0, {},
        ))  # fmt: skip
    log.write(rows)
    log.close()
    accepted = [r.decision_id for r in rows[::4]]
    with sqlite3.connect(path) as con:
        con.executemany("INSERT INTO outcomes VALUES (?, ?, NULL, 'accept', NULL, ?)",
                        [(f"o{i}", d, decision_log.now_iso()) for i, d in enumerate(accepted)])  # fmt: skip
    off = off_policy(settings, policy, states, today)
    assert off.skipped is None and off.logged == 400
    by_name = {e.estimator: e for e in off.estimates}
    assert {"ips", "snips", "dr"} <= set(by_name)
    # the candidate is the logging policy itself: every importance weight is 1, so IPS is the mean reward
    assert by_name["ips"].value == pytest.approx(len(accepted) / 400)
    assert history(settings, ["c0", "nobody"]) == {
        "c0": [(rows[0].action, dt.date.fromisoformat(rows[0].decided_at[:10]))]
    }
