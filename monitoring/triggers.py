"""Whether a family retrains: every trigger of the policy checked against the evidence, with its numbers.

Pure: evidence and policy in, a decision out. The order of precedence:
1. a data-quality failure in the window -> `alert` (never retrain on broken inputs);
2. no trigger fired -> `none`;
3. a trigger fired but retraining is disabled, the last retrain is too recent, or there is
   not enough new labelled data -> `hold`, naming what held it;
4. otherwise -> `retrain`.
Too few served rows make the drift and prediction triggers abstain (reported as such), so a
quiet window never fires on noise; the age trigger needs no traffic.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from monitoring.checks import Performance, QualityFinding
from monitoring.drift import ColumnDrift, DatasetDrift
from monitoring.policy import FamilyMonitoring, RetrainPolicy

Action = Literal["retrain", "hold", "alert", "none"]


@dataclass(frozen=True)
class Evidence:
    """What monitoring found for one served model in one window."""

    family: str
    model: str
    version: str
    rows: int
    min_rows: int
    drift: DatasetDrift | None = None
    prediction: ColumnDrift | None = None
    quality: list[QualityFinding] = field(default_factory=list)
    performance: Performance | None = None
    model_age_days: float | None = None
    last_retrain: dt.datetime | None = None
    new_months: int = 0
    reference: str = ""  # what the drift was judged against (`Baseline.describe`), for the details


@dataclass(frozen=True)
class TriggerCheck:
    """One trigger: did it fire, on what value against what limit."""

    trigger: str
    fired: bool
    value: float | None
    limit: float | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class TriggerDecision:
    """The decision for one family, every check that led to it, and why."""

    family: str
    model: str
    version: str
    action: Action
    why: str
    checks: list[TriggerCheck]
    alerts: list[QualityFinding]

    @property
    def fired(self) -> list[TriggerCheck]:
        """The checks that fired."""
        return [c for c in self.checks if c.fired]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "family": self.family,
            "model": self.model,
            "version": self.version,
            "action": self.action,
            "why": self.why,
            "checks": [c.as_dict() for c in self.checks],
            "alerts": [a.as_dict() for a in self.alerts],
        }


def _limit(verdict: ColumnDrift) -> str:
    """A verdict's threshold, saying how much of it is natural movement."""
    if verdict.allowance > 0:
        base = verdict.threshold - verdict.allowance
        return f"{verdict.threshold:.3g} = {base:.3g} + natural movement {verdict.allowance:.3g}"
    return f"{verdict.threshold:g}"


def _drift_checks(rules: FamilyMonitoring, evidence: Evidence, enough: bool) -> list[TriggerCheck]:
    t = rules.triggers
    checks: list[TriggerCheck] = []
    few = f"{evidence.rows:,} served rows < {evidence.min_rows:,}: no verdict"
    drift = evidence.drift
    if t.drifted_share is not None:
        if not enough or drift is None:
            checks.append(
                TriggerCheck("drifted_share", False, None, t.drifted_share, few if not enough else "no drift result")
            )
        else:
            checks.append(
                TriggerCheck(
                    "drifted_share",
                    drift.share >= t.drifted_share,
                    drift.share,
                    t.drifted_share,
                    f"{drift.drifted} of {len(drift.columns)} inputs drifted ({drift.share:.0%})"
                    + (f" {evidence.reference}" if evidence.reference else ""),
                )
            )
    if t.key_feature_drift and rules.key_features:
        if not enough or drift is None:
            checks.append(
                TriggerCheck("key_feature_drift", False, None, None, few if not enough else "no drift result")
            )
        else:
            by_name = {c.column: c for c in drift.columns}
            moved = [by_name[k] for k in rules.key_features if k in by_name and by_name[k].drifted]
            unknown = [k for k in rules.key_features if k not in by_name]
            detail = (
                "drifted: " + ", ".join(f"{c.column} ({c.method} {c.score:.3g} vs {_limit(c)})" for c in moved)
                if moved
                else f"none of {len(rules.key_features)} key features drifted"
            )
            if unknown:
                detail += f"; not inputs of the model: {unknown}"
            checks.append(TriggerCheck("key_feature_drift", bool(moved), float(len(moved)), 0.0, detail))
    if t.prediction_drift:
        p = evidence.prediction
        if not enough or p is None:
            checks.append(TriggerCheck("prediction_drift", False, None, None, few if not enough else "no prediction"))
        else:
            checks.append(
                TriggerCheck(
                    "prediction_drift",
                    p.drifted,
                    p.score,
                    p.threshold,
                    f"{p.column}: {p.method} {p.score:.3g} against threshold {_limit(p)}",
                )
            )
    return checks


def _performance_check(rules: FamilyMonitoring, evidence: Evidence) -> TriggerCheck | None:
    rule = rules.triggers.performance
    if rule is None:
        return None
    perf = evidence.performance
    if perf is None or perf.labelled < rule.min_labelled:
        have = 0 if perf is None else perf.labelled
        return TriggerCheck(
            "performance",
            False,
            None,
            rule.max_drop,
            f"{have:,} labelled served rows < {rule.min_labelled:,}: no verdict",
        )
    drop = perf.drop(rule.metric)
    if drop is None:
        return TriggerCheck("performance", False, None, rule.max_drop, f"no training figure for {rule.metric}")
    return TriggerCheck(
        "performance",
        drop > rule.max_drop,
        drop,
        rule.max_drop,
        f"{rule.metric} {perf.current[rule.metric]:.3f} on {perf.labelled:,} labelled rows against "
        f"{perf.training[rule.metric]:.3f} in training (drop {drop:+.3f})",
    )


def decide(rules: FamilyMonitoring, retrain: RetrainPolicy, evidence: Evidence, now: dt.datetime) -> TriggerDecision:
    """Check every trigger of the family's rules against the evidence and decide."""
    enough = evidence.rows >= evidence.min_rows
    checks = _drift_checks(rules, evidence, enough)
    perf = _performance_check(rules, evidence)
    if perf is not None:
        checks.append(perf)
    age_limit = rules.triggers.max_age_days
    if age_limit is not None and evidence.model_age_days is not None:
        checks.append(
            TriggerCheck(
                "max_age",
                evidence.model_age_days > age_limit,
                evidence.model_age_days,
                age_limit,
                f"champion registered {evidence.model_age_days:.1f} days ago",
            )
        )

    def decision(action: Action, why: str) -> TriggerDecision:
        return TriggerDecision(evidence.family, evidence.model, evidence.version, action, why, checks, evidence.quality)

    if evidence.quality:
        return decision("alert", "data-quality failure in the window: " + "; ".join(q.detail for q in evidence.quality))
    fired = [c for c in checks if c.fired]
    if not fired:
        return decision("none", "no trigger fired")
    named = ", ".join(c.trigger for c in fired)
    held = []
    if not retrain.enabled:
        held.append("retraining is disabled by the policy")
    if evidence.last_retrain is not None:
        since = (now - evidence.last_retrain).total_seconds() / 3600
        if since < retrain.min_interval_hours:
            held.append(f"last retrain {since:.1f} h ago < min_interval_hours {retrain.min_interval_hours:g}")
    if evidence.new_months < retrain.min_new_months:
        held.append(
            f"{evidence.new_months} labelled month(s) newer than the champion's test cutoff "
            f"< min_new_months {retrain.min_new_months}"
        )
    if held:
        return decision("hold", f"fired: {named}; held: " + "; ".join(held))
    return decision("retrain", f"fired: {named}")
