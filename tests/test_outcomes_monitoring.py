"""Outcome monitoring: realised response per action against the policy's expected, feedback rates per model and
action, and their triggers, read from a real decision log."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from custintel.settings import Settings
from monitoring.outcomes import OutcomeRules, monitor_outcomes, with_outcomes
from serving.decision_log import DecisionLog, LoggedDecision, decision_log_path, new_decision_id, now_iso


def _decision(log: DecisionLog, customer: str, action: str, p: float, model_version: str = "2") -> LoggedDecision:
    return LoggedDecision(
        decision_id=new_decision_id(), customer_key=log.key(customer), channel="email", policy_name="nba",
        policy_version="1", action=action, actions=[{"action": action, "p": p, "v": 10.0, "l": 1.0}],
        probability=1.0, action_probabilities={action: 1.0}, explored=False, fallback=False, fallback_reason=None,
        reasons=[], context={}, decided_at=now_iso(), expected_value=p * 10,
        models={"custintel-propensity": model_version},
    )  # fmt: skip


def test_a_falling_response_and_a_high_feedback_rate_fire_and_a_healthy_action_does_not(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    log = DecisionLog(decision_log_path(settings), "hash", "s")
    healthy = [_decision(log, f"A{i}", "cross_sell_music", 0.2) for i in range(50)]
    falling = [_decision(log, f"B{i}", "retention_offer", 0.4) for i in range(40)]
    rare = [_decision(log, f"C{i}", "service_recovery_callback", 1.0) for i in range(5)]
    log.write(healthy + falling + rare)
    for i, d in enumerate(healthy):  # 12 of 50 respond: 0.24 against 0.2 expected
        log.record_outcome(d.decision_id, "impression", f"A{i}", None)
        if i < 12:
            log.record_outcome(d.decision_id, "accept", f"A{i}", None)
    for i, d in enumerate(falling):  # 2 of 40: 0.05 against 0.4 expected; and 4 of 40 say the output was wrong
        log.record_outcome(d.decision_id, "impression", f"B{i}", None)
        if i < 2:
            log.record_outcome(d.decision_id, "conversion", f"B{i}", None)
        if i >= 36:
            log.record_outcome(d.decision_id, "feedback", f"B{i}", "offered to a customer who just left")
    now = dt.datetime.now(dt.UTC)
    report = monitor_outcomes(settings, now - dt.timedelta(days=1), now + dt.timedelta(minutes=1), OutcomeRules())
    by_action = {a.action: a for a in report.actions}
    assert by_action["cross_sell_music"].realised == 12 / 50 and by_action[
        "cross_sell_music"
    ].expected == pytest.approx(0.2)
    assert by_action["retention_offer"].realised == 2 / 40
    fired = {c.trigger for c in report.fired}
    assert fired == {"response:retention_offer", "feedback:action retention_offer"}
    abstained = {c.trigger: c.detail for c in report.checks}["response:service_recovery_callback"]
    assert "abstains" in abstained  # five decisions, none shown: too few to judge
    rates = {f.subject: f for f in report.feedback}
    assert (
        rates["model custintel-propensity v2"].feedback == 4 and rates["model custintel-propensity v2"].decisions == 95
    )
    assert report.as_dict()["fired"]  # JSON-ready for the monitoring report
    # a window with no decision: nothing to judge, nothing fires
    empty = monitor_outcomes(settings, now - dt.timedelta(days=10), now - dt.timedelta(days=9))
    assert empty.decisions == 0 and not empty.fired


def test_a_fired_outcome_check_turns_a_quiet_family_decision_into_an_alert_for_that_model_only(
    tmp_path: Path,
) -> None:
    from monitoring.triggers import TriggerDecision

    settings = Settings(home=tmp_path / "home")
    log = DecisionLog(decision_log_path(settings), "hash", "s")
    ours = [_decision(log, f"A{i}", "cross_sell_music", 0.5, model_version="3") for i in range(30)]
    log.write(ours + [_decision(log, f"B{i}", "cross_sell_music", 0.5, model_version="2") for i in range(30)])
    for i, d in enumerate(ours):  # shown, never taken: 0 against 0.5 expected
        log.record_outcome(d.decision_id, "impression", f"A{i}", None)
    now = dt.datetime.now(dt.UTC)
    window = (now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1))
    quiet = TriggerDecision("propensity", "custintel-propensity", "3", "none", "no trigger fired", [], [])
    report = monitor_outcomes(settings, *window, model=("custintel-propensity", "3"))
    assert report.decisions == 30  # version 2's decisions are not this version's
    judged = with_outcomes(quiet, report)
    assert judged.action == "alert" and "cross_sell_music" in judged.why
    assert "response:cross_sell_music" in {c.trigger for c in judged.fired}
    other = with_outcomes(quiet, monitor_outcomes(settings, *window, model=("custintel-propensity", "2")))
    assert other.action == "none"  # no impression recorded: abstains
