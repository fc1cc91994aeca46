"""A monitoring pass's window and what the decision log records of it (the flow `monitor_models` wires them)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from monitoring.monitor import MonitoringRun
from monitoring.policy import MonitoringPolicy


def window_bounds(
    policy: MonitoringPolicy, start: str | None, end: str | None, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """The window [start, end): the policy's last `window_days` up to now unless given (ISO dates or times, UTC)."""

    def parse(value: str) -> dt.datetime:
        t = dt.datetime.fromisoformat(value)
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)

    until = parse(end) if end else now
    since = parse(start) if start else until - dt.timedelta(days=policy.window_days)
    if since >= until:
        raise ValueError(f"the window's start {since.isoformat()} is not before its end {until.isoformat()}")
    return since, until


def decision_entry(run: MonitoringRun, flow_run_id: str | None, retrain: bool = True) -> dict[str, Any]:
    """The decision log's line for one family's pass; with `retrain` off a retrain decision is held."""
    d = run.decision
    entry = {
        "at": run.summary["at"],
        "kind": "monitoring",
        "family": d.family,
        "model": d.model,
        "version": d.version,
        "action": d.action,
        "why": d.why,
        "fired": [c.trigger for c in d.fired],
        "checks": [c.as_dict() for c in d.checks],
        "alerts": [a.as_dict() for a in d.alerts],
        "rows": run.summary["rows"],
        "window": run.summary["window"],
        "new_labelled_months": run.summary["new_labelled_months"],
        "report": str(run.files[0]) if run.files else None,
        "policy_digest": run.summary["policy_digest"],
        "flow_run_id": flow_run_id,
    }
    if entry["action"] == "retrain" and not retrain:
        entry["action"], entry["why"] = "hold", entry["why"] + "; held: retraining switched off for this run"
    return entry


def retrain_outcome(trained: list[str], gated: list[dict[str, Any]]) -> str:
    """One line on a retrain: the versions trained, then the gate's result for each."""
    return "; ".join([f"trained {', '.join(trained)}"] + [f"{g['model']} v{g['version']} {g['result']}" for g in gated])
