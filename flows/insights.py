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
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from custintel.settings import Settings
from features.featurestore.offline import available_as_of
from flows.retries import io_task
from flows.score import ConsentFilter, purpose_filter
from insights.actions import action_rows
from insights.kpis import (
    KPI_LABELS,
    KPIS,
    REPORT_UNITS,
    Cut,
    KpiDefinitions,
    KpiInputs,
    compute_kpis,
    kpi_definitions_text,
    load_kpi_definitions,
    read_kpi_inputs,
)
from insights.plots import kpi_plot
from insights.report import Alert, KpiCut, KpiPoint, KpiSeries, OperationsReport, SegmentRow, latest_dir
from insights.segments import SOURCES as SEGMENT_SOURCES
from insights.segments import build_segments, segment_profiles

# How far back the decisions and outcomes on the page reach, and the KPIs' cuts by group.
ACTIONS_DAYS = 90
CUT_DAYS = 90
# The cuts the page shows each KPI by (over the last CUT_DAYS), besides the months.
PAGE_CUTS: tuple[Cut, ...] = ("channel", "region", "journey_stage", "segment")


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def kpi_section(
    inputs: KpiInputs, defs: KpiDefinitions, segments: dict[str, str] | None
) -> tuple[list[KpiSeries], list[KpiCut], list[str]]:
    """Each KPI by month (with its definition), each by channel, region, journey stage and segment lately."""
    words = kpi_definitions_text(defs)
    monthly = compute_kpis(inputs, defs, by=("month",))
    series = []
    for kpi in KPIS:
        rows = monthly.table[monthly.table["kpi"] == kpi].sort_values("month").to_dict("records")
        if not rows:
            continue
        low = sum(1 for r in rows if r["low_n"])
        note = f"{low} month(s) with fewer than {defs.min_n} observations: read them with care." if low else None
        points = [
            KpiPoint(period=str(r["month"]), value=_number(r["value"]), low=_number(r["lower"]),
                     high=_number(r["upper"]), n=int(r["n"]))
            for r in rows
        ]  # fmt: skip
        unit = REPORT_UNITS[kpi]
        series.append(KpiSeries(name=kpi, label=KPI_LABELS[kpi], unit=unit, definition=words[kpi], points=points,
                                note=note))  # fmt: skip
    lately = replace(inputs, count_from=inputs.data_end - pd.Timedelta(days=CUT_DAYS))
    cuts = []
    for cut in PAGE_CUTS:
        if cut == "segment" and not segments:
            continue
        for r in compute_kpis(lately, defs, by=(cut,), segments=segments).table.to_dict("records"):
            cuts.append(
                KpiCut(
                    dimension=cut.replace("_", " "),
                    group=str(r[cut]),
                    kpi=str(r["kpi"]),
                    value=_number(r["value"]),
                    low=_number(r["lower"]),
                    high=_number(r["upper"]),
                    n=int(r["n"]),
                )  # fmt: skip
            )
    warnings = sorted({w.message for w in monthly.warnings})
    return series, cuts, warnings


def segment_section(
    settings: Settings, as_of: dt.date, exclude: frozenset[str]
) -> tuple[list[SegmentRow], str, dict[str, str] | None]:
    """This month's behavioural segments (rebuilt from the features at the newest cutoff on or before `as_of`)."""
    root = settings.features_dir / "offline"
    stored = [set(available_as_of(root, key)) for key in SEGMENT_SOURCES]
    common = sorted(d for d in set.intersection(*stored) if d <= as_of) if stored else []
    if not common:
        return [], "No segments: no feature cutoff holds every set they read (run `custintel features`).", None
    cutoff = common[-1]
    month = build_segments(settings, [cutoff], exclude=exclude)[-1]
    rows = [SegmentRow(**p) for p in segment_profiles(month)]
    ari = month.ari_with_previous
    stable = "" if ari is None else f"; adjusted Rand index with the previous build {ari:.2f}"
    note = (
        f"Segments at the feature cutoff {cutoff} (k = {month.model.k}, silhouette {month.model.silhouette:.2f}"
        f"{stable}); "
        f"{len(exclude):,} customers who withdrew the profiling purpose get none. Centres: discount share, digital "
        "share, tickets and spend in 365 days, tenure in years."
    )
    segments = dict(zip(month.table["customer_key"].astype(str), month.table["segment"].astype(str), strict=True))
    return rows, note, segments


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


def _excluded(consent: ConsentFilter) -> frozenset[str]:
    """The keys a purpose may not use, when the filter lists them (with `only`, everyone not listed is out)."""
    return frozenset() if consent.only else consent.keys


def _consented(inputs: KpiInputs, consent: ConsentFilter) -> KpiInputs:
    """The KPI inputs without the rows of customers who may not be analysed (unknown customers stay: no one to ask)."""

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        keys = frame["customer_key"]
        allowed = consent.allowed(keys.fillna("").astype(str)) | keys.isna()
        return frame[allowed.to_numpy()].reset_index(drop=True)

    return replace(inputs, tickets=keep(inputs.tickets), surveys=keep(inputs.surveys))


def run_insights(settings: Settings, as_of: dt.date | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Compute the operations report as of `as_of` (default: today), write it with its plots, rebuild the site."""
    from governance.site import build_site

    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    day = as_of or now.date()
    report = OperationsReport(as_of=day, generated_at=now, period="—")
    analytics = purpose_filter(settings, "analytics")
    profiling = purpose_filter(settings, "profiling")
    log("behavioural segments")
    report.segments, report.segments_note, segments = segment_section(settings, day, _excluded(profiling))
    log("reading tickets and surveys for the KPIs")
    inputs = _consented(read_kpi_inputs(settings, day), analytics)
    report.period = f"{inputs.data_start:%Y-%m} to {(inputs.data_end - pd.Timedelta(days=1)):%Y-%m}"
    report.kpis, report.cuts, kpi_warnings = kpi_section(
        inputs, load_kpi_definitions(settings.kpi_definitions), segments
    )
    report.warnings.extend(kpi_warnings)
    log("reading the decisions and their outcomes")
    report.actions, report.actions_note = decision_actions(settings, now)
    report.alerts.extend(monitoring_alerts(settings))
    target = latest_dir(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".latest-new-", dir=target.parent)
    try:
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
