"""Prefect flow `operations_insights`: the operations report and page (`custintel insights`).

From the lake as of a date: the service KPIs by month and by group, the ticket topics and the ones rising
beyond noise, the knowledge-base articles worth writing, the behavioural segments, the source anomalies
of the latest drop, the actions the decision service took and their outcomes, and every open alert
(monitoring's included). The report (`insights.report`, masked examples only) and its plots are written
to `<home>/insights/latest/`, then the reviewers' site is rebuilt so its operations page shows them.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger

from custintel.settings import Settings
from flows.retries import io_task
from insights.actions import action_rows
from insights.plots import kpi_plot
from insights.report import Alert, OperationsReport, latest_dir

# How far back the decisions and outcomes on the page reach.
ACTIONS_DAYS = 90


def monitoring_alerts(settings: Settings) -> list[Alert]:
    """Each monitored family's latest monitoring decision, when it is not `none`: the open monitoring alerts."""
    from governance.store import read_decisions

    latest: dict[str, dict[str, Any]] = {}
    for entry in read_decisions(settings):
        if entry.get("kind") == "monitoring" and entry.get("family"):
            latest[str(entry["family"])] = entry
    alerts = []
    for family, entry in sorted(latest.items()):
        action = str(entry.get("action") or "none")
        if action == "none":
            continue
        severity = "critical" if action in ("retrain", "alert") else "warning"
        model = f"{entry.get('model') or family} v{entry.get('version') or '?'}"
        alerts.append(
            Alert(
                source="monitoring",
                severity=severity,
                title=f"{model}: {action}",
                detail=str(entry.get("why") or ""),
                since=str(entry.get("at") or "")[:10] or None,
            )
        )
    return alerts


def decision_actions(settings: Settings, until: dt.datetime) -> tuple[list[Any], str]:
    """The decision service's actions per action and channel over the last ACTIONS_DAYS, and a line saying so."""
    from serving.decision_log import RESPONSES, read_decisions, read_outcomes

    since = until - dt.timedelta(days=ACTIONS_DAYS)
    decisions = read_decisions(settings, since, until)
    outcomes = read_outcomes(settings, since, None)
    if not outcomes.empty and not decisions.empty:
        outcomes = outcomes[outcomes["decision_id"].isin(set(decisions["decision_id"]))]
    rows = action_rows(decisions, outcomes, RESPONSES)
    note = (
        f"Decisions logged from {since:%Y-%m-%d} to {until:%Y-%m-%d} ({len(decisions):,}) and the outcomes fed back on "
        f"them ({len(outcomes):,}); response = {' or '.join(RESPONSES)} among the decisions shown (an impression)."
    )
    return rows, note


def run_insights(settings: Settings, as_of: dt.date | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Compute the operations report as of `as_of` (default: today), write it with its plots, rebuild the site."""
    from governance.site import build_site

    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    day = as_of or now.date()
    report = OperationsReport(as_of=day, generated_at=now, period="—")
    log("reading the decisions and their outcomes")
    report.actions, report.actions_note = decision_actions(settings, now)
    report.alerts.extend(monitoring_alerts(settings))
    target = latest_dir(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".latest-new-", dir=target.parent)
    try:
        from pathlib import Path

        folder = Path(staging)
        for kpi in report.kpis:
            drawn = kpi_plot(kpi, folder / f"kpi-{kpi.name}.png")
            kpi.plot = drawn.name if drawn else None
        report.write(folder)
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log("rebuilding the site")
    index = build_site(settings)
    return {
        "as_of": str(day),
        "report": str(target / "report.json"),
        "page": str(index.parent / "operations.html"),
        "kpis": len(report.kpis),
        "topics": len(report.topics),
        "emerging": len(report.emerging),
        "suggestions": len(report.suggestions),
        "segments": len(report.segments),
        "anomalies": len(report.anomalies),
        "alerts": len(report.alerts),
        "warnings": report.warnings,
        "seconds": round(time.perf_counter() - started, 2),
    }


_insights_task = io_task("operations-insights", run_insights)


@flow(name="operations_insights", log_prints=False)
def operations_insights(settings: dict[str, Any] | None = None, as_of: str | None = None) -> dict[str, Any]:
    """The operations report as of a date (default: today) and the site page that shows it."""
    config = Settings.from_flow(settings)
    logger = get_run_logger()
    day = dt.date.fromisoformat(as_of) if as_of else None
    result: dict[str, Any] = _insights_task(config, day, logger.info)
    return result
