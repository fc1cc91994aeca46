"""What happened after the decisions served: realised against expected response, feedback rates, their triggers.

Realised response per action against what the policy expected, frontline feedback rates per
model and per action, and the triggers that fire when they fall.

Pure (`outcome_report`: the window's decisions and outcomes in, a report out) with one reader at
the edge (`read_window`, through `serving.decision_log`'s readers). Expected response of an
action: the mean of its logged P (the arbitration's predicted effect: uplift, propensity, 1
for a service-recovery rule) over the decisions that reached the customer (an impression);
realised: the share of those that got an accept or a conversion. The response trigger fires
when realised < expected x (1 - margin) over at least `min_impressions`; too few abstain. The
feedback trigger fires when the share of decisions with frontline feedback ("this output is
wrong") exceeds `max_feedback_rate` for a model version or an action, over at least
`min_decisions`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from custintel.settings import Settings
from insights.report import ActionRow
from monitoring.triggers import TriggerCheck, TriggerDecision
from serving.decision_log import RESPONSES, read_decisions, read_outcomes


class OutcomeRules(BaseModel):
    """When the outcomes of the decisions served fire a trigger."""

    model_config = ConfigDict(extra="forbid")

    margin: float = Field(default=0.5, ge=0, le=1, description="Realised response may fall this share below expected.")
    min_impressions: int = Field(default=30, ge=1, description="Fewer impressions of an action: the check abstains.")
    max_feedback_rate: float = Field(default=0.05, gt=0, le=1, description="Feedback per decision above this fires.")
    min_decisions: int = Field(default=30, ge=1, description="Fewer decisions of a model or action: abstains.")


@dataclass(frozen=True)
class ActionResponse:
    """One action's decisions in the window and how customers responded."""

    action: str
    decisions: int
    impressions: int
    responses: int
    expected: float | None  # mean logged P over the decisions shown
    realised: float | None  # responses / impressions


@dataclass(frozen=True)
class FeedbackRate:
    """Frontline feedback on one model version's or one action's decisions."""

    subject: str  # "model custintel-uplift v3" or "action retention_offer"
    decisions: int
    feedback: int
    rate: float


@dataclass
class OutcomeReport:
    """The window's outcome figures and the checks they fed."""

    decisions: int
    outcomes: int
    actions: list[ActionResponse] = field(default_factory=list)
    feedback: list[FeedbackRate] = field(default_factory=list)
    checks: list[TriggerCheck] = field(default_factory=list)

    @property
    def fired(self) -> list[TriggerCheck]:
        """The checks that fired."""
        return [c for c in self.checks if c.fired]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for the monitoring report and the decision log)."""
        return {
            "decisions": self.decisions,
            "outcomes": self.outcomes,
            "actions": [asdict(a) for a in self.actions],
            "feedback": [asdict(f) for f in self.feedback],
            "checks": [c.as_dict() for c in self.checks],
            "fired": [c.trigger for c in self.fired],
        }


def _first_p(actions: Any) -> float | None:
    if isinstance(actions, list) and actions and isinstance(actions[0], dict) and actions[0].get("p") is not None:
        return float(actions[0]["p"])
    return None


def _with_events(decisions: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The decisions with their logged P, their outcome events, and whether each was shown, answered, reported."""
    events = outcomes.groupby("decision_id")["event"].agg(set) if not outcomes.empty else pd.Series(dtype=object)
    first_p: list[Any] = [_first_p(a) for a in decisions["actions"]]
    frame = decisions.assign(p=first_p, events=[events.get(d, set()) for d in decisions["decision_id"]])
    return frame.assign(
        shown=[("impression" in e) for e in frame["events"]],
        responded=[bool(e & set(RESPONSES)) for e in frame["events"]],
        feedback=[("feedback" in e) for e in frame["events"]],
    )


def action_rows(decisions: pd.DataFrame, outcomes: pd.DataFrame) -> list[ActionRow]:
    """The operations page's view of the decisions: one row per (action, channel).

    Decisions, outcome counts by event, realised response (a positive response among the decisions
    shown) and expected response (their mean logged P).
    """
    if decisions.empty:
        return []
    frame = _with_events(decisions, outcomes)
    counts: dict[tuple[str, str], dict[str, int]] = {}
    if not outcomes.empty:
        keyed = outcomes.groupby(["action", "channel", "event"]).size().reset_index(name="n")
        for chosen, where, event, n in keyed.itertuples(index=False):
            counts.setdefault((str(chosen), str(where)), {})[str(event)] = int(n)
    rows = []
    for (action, channel), group in frame.groupby(["action", "channel"], sort=True):
        shown = group[group["shown"]]
        ps = shown["p"].dropna()
        rows.append(
            ActionRow(
                action=str(action),
                channel=str(channel),
                decisions=len(group),
                outcomes=counts.get((str(action), str(channel)), {}),
                response_rate=float(shown["responded"].mean()) if len(shown) else None,
                expected_rate=float(ps.mean()) if len(ps) else None,
            )  # fmt: skip
        )
    return rows


def outcome_report(decisions: pd.DataFrame, outcomes: pd.DataFrame, rules: OutcomeRules) -> OutcomeReport:
    """Realised against expected response per action, feedback rates per model and action, and their checks."""
    report = OutcomeReport(decisions=len(decisions), outcomes=len(outcomes))
    if decisions.empty:
        return report
    frame = _with_events(decisions, outcomes)
    for action, rows in frame.groupby("action", sort=True):
        shown = rows[rows["shown"]]
        ps = shown["p"].dropna()
        expected = float(ps.mean()) if len(ps) else None
        realised = float(shown["responded"].mean()) if len(shown) else None
        item = ActionResponse(str(action), len(rows), len(shown), int(shown["responded"].sum()), expected, realised)
        report.actions.append(item)
        name = f"response:{action}"
        if expected is None or realised is None or len(shown) < rules.min_impressions:
            detail = f"{len(shown)} impressions of {action} (at least {rules.min_impressions} to judge): abstains"
            report.checks.append(TriggerCheck(name, False, realised, None, detail))
            continue
        limit = expected * (1 - rules.margin)
        fired = realised < limit
        detail = (f"{action}: realised response {realised:.3f} over {len(shown)} impressions against expected "
                  f"{expected:.3f} (fires below {limit:.3f})")  # fmt: skip
        report.checks.append(TriggerCheck(name, fired, realised, limit, detail))
    subjects: dict[str, list[bool]] = {}
    for models, action, said in zip(frame["models"], frame["action"], frame["feedback"], strict=True):
        for name, version in (models or {}).items():
            subjects.setdefault(f"model {name} v{version}", []).append(bool(said))
        subjects.setdefault(f"action {action}", []).append(bool(said))
    for subject, flags in sorted(subjects.items()):
        count = sum(flags)
        rate = count / len(flags)
        report.feedback.append(FeedbackRate(subject, len(flags), count, rate))
        name = f"feedback:{subject}"
        if len(flags) < rules.min_decisions:
            detail = f"{len(flags)} decisions by {subject} (at least {rules.min_decisions} to judge): abstains"
            report.checks.append(TriggerCheck(name, False, rate, rules.max_feedback_rate, detail))
            continue
        fired = rate > rules.max_feedback_rate
        detail = (
            f"{subject}: {count} feedback on {len(flags)} decisions ({rate:.3f}; fires above {rules.max_feedback_rate})"
        )
        report.checks.append(TriggerCheck(name, fired, rate, rules.max_feedback_rate, detail))
    return report


def read_window(
    settings: Settings, since: dt.datetime, until: dt.datetime, model: tuple[str, str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The decisions made in [since, until) and every outcome recorded on them so far.

    `model`: (registered name, version): only the decisions that read that model version.
    """
    decisions = read_decisions(settings, since, until)
    if model is not None and not decisions.empty:
        name, version = model
        decisions = decisions[[(m or {}).get(name) == version for m in decisions["models"]]].reset_index(drop=True)
    outcomes = read_outcomes(settings, since, None)
    if not outcomes.empty:
        outcomes = outcomes[outcomes["decision_id"].isin(set(decisions["decision_id"]))]
    return decisions, outcomes


def monitor_outcomes(
    settings: Settings,
    since: dt.datetime,
    until: dt.datetime,
    rules: OutcomeRules | None = None,
    model: tuple[str, str] | None = None,
) -> OutcomeReport:
    """`outcome_report` of the window's decisions (of one model version when given; empty when none was logged)."""
    decisions, outcomes = read_window(settings, since, until, model)
    return outcome_report(decisions, outcomes, rules or OutcomeRules())


def with_outcomes(decision: TriggerDecision, report: OutcomeReport) -> TriggerDecision:
    """The family's decision with the outcome checks added; a fired one turns `none` into `alert`.

    Outcomes never retrain on their own (a falling response may be the offer's, not the model's):
    they alert, and the checks say which action or model fell.
    """
    if not report.checks:
        return decision
    fired = report.fired
    action, why = decision.action, decision.why
    if fired and action == "none":
        action = "alert"
        why = "outcomes: " + "; ".join(c.detail for c in fired)
    elif fired:
        why += "; outcomes: " + "; ".join(c.detail for c in fired)
    return replace(decision, action=action, why=why, checks=[*decision.checks, *report.checks])
