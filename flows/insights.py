"""Prefect flow `operations_insights`: the operations report and page (`custintel insights`).

From the lake as of a date: the service KPIs by month and by group, the ticket topics and the ones rising
beyond noise, the knowledge-base articles worth writing, the behavioural segments, the source anomalies
of the latest drop, the actions the decision service took and their outcomes, and every open alert
(monitoring's included). The report (`insights.report`, masked examples only) and its plots are written
to `<home>/insights/latest/`, then the reviewers' site is rebuilt so its operations page shows them.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from custintel.atomic_files import replace_atomically
from custintel.json_lines import json_lines
from custintel.settings import Settings
from features.featurestore.offline import available_as_of
from features.lake import IngestError, read_lake_table
from flows.retries import io_task
from flows.score import ConsentFilter, purpose_filters
from insights.anomalies import latest_anomaly_report, page_rows
from insights.errors import InsightsError
from insights.kpis import (
    KPI_LABELS,
    KPIS,
    REPORT_UNITS,
    Cut,
    KpiDefinitions,
    KpiInputs,
    compute_kpis,
    crm_customer_keys,
    kpi_definitions_text,
    load_kpi_definitions,
    read_kpi_inputs,
)
from insights.plots import kpi_plot
from insights.report import (
    Alert,
    ArticleSuggestion,
    EmergingIssue,
    Example,
    KpiCut,
    KpiPoint,
    KpiSeries,
    OperationsReport,
    SegmentRow,
    TopicRow,
    insights_dir,
    latest_dir,
)
from insights.segments import SOURCES as SEGMENT_SOURCES
from insights.segments import build_segments, segment_profiles
from insights.text.emerging import detect_emerging
from insights.text.kb import COVERAGE_THRESHOLD, KnowledgeBaseError, build_index, read_articles, suggest_articles
from insights.text.mask import mask_texts, prepare_texts
from insights.text.topics import UNASSIGNED, assign_topics, fit_topics

# Tickets the topics, emerging issues and article suggestions read (the emerging test's 12 weeks of history and
# more); the topic model learns from at most FIT_SAMPLE of them (seeded), then places every one.
TICKET_DAYS = 182
FIT_SAMPLE = 20_000
MIN_TICKETS = 100


@dataclass
class TicketInsights:
    """What the tickets gave the report, and the per-ticket table kept."""

    topics: list[TopicRow] = field(default_factory=list)
    emerging: list[EmergingIssue] = field(default_factory=list)
    suggestions: list[ArticleSuggestion] = field(default_factory=list)
    note: str | None = None
    kb_note: str | None = None
    table: pd.DataFrame | None = None


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
    """This month's behavioural segments (rebuilt from the features at the newest cutoff on or before `as_of`).

    Written to the offline store (`segments@1`) and to the online store, where the decision service reads feature
    columns: a policy signal can name `discount_dependency`, `digital_share` or `segment_id`.
    """
    root = settings.features_dir / "offline"
    stored = [set(available_as_of(root, key)) for key in SEGMENT_SOURCES]
    common = sorted(d for d in set.intersection(*stored) if d <= as_of) if stored else []
    if not common:
        return [], "No segments: no feature cutoff holds every set they read (run `custintel features`).", None
    cutoff = common[-1]
    month = build_segments(settings, [cutoff], exclude=exclude, online=True)[-1]
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
    path = settings.monitoring_dir / "decisions.jsonl"
    latest: dict[str, dict[str, Any]] = {}
    for line in json_lines(path) if path.is_file() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed pass: not an alert
        if isinstance(entry, dict) and entry.get("kind") == "monitoring" and entry.get("family"):
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
    from monitoring.outcomes import action_rows, read_window
    from serving.decision_log import RESPONSES

    since = until - dt.timedelta(days=ACTIONS_DAYS)
    decisions, outcomes = read_window(settings, since, until)
    rows = action_rows(decisions, outcomes)
    note = (
        f"Decisions logged from {since:%Y-%m-%d} to {until:%Y-%m-%d} ({len(decisions):,}) and the outcomes fed back on "
        f"them ({len(outcomes):,}); response = {' or '.join(RESPONSES)} among the decisions shown (an impression)."
    )
    return rows, note


def read_tickets(settings: Settings, as_of: dt.date, consent: ConsentFilter) -> pd.DataFrame:
    """The last TICKET_DAYS of tickets before `as_of`: id, customer key, time, channel, text, the writer's names.

    Tickets of customers who withdrew the analytics purpose are left out; a ticket whose record the
    identity run did not link keeps its CRM id as its key (so an erasure by record id still finds it).
    """
    try:
        tickets = read_lake_table(
            settings, "support_tickets", columns=["ticket_id", "crm_id", "opened_at", "channel", "description"]
        )
        crm = read_lake_table(settings, "crm_accounts", columns=["crm_id", "first_name", "last_name"])
    except IngestError as exc:
        raise InsightsError(str(exc)) from exc
    opened = pd.to_datetime(tickets["opened_at"], errors="coerce", utc=True).dt.tz_localize(None)
    end = pd.Timestamp(as_of)
    recent = (opened < end) & (opened >= end - pd.Timedelta(days=TICKET_DAYS))
    tickets = tickets[recent.to_numpy()].assign(opened_at=opened[recent])
    key_of = crm_customer_keys(settings)
    crm_id = tickets["crm_id"].astype("string")
    linked = crm_id.map(key_of)
    tickets = tickets.assign(customer_key=linked.fillna(crm_id), linked=linked.notna())
    allowed = consent.allowed(tickets["customer_key"].astype(str)) | ~tickets["linked"]
    tickets = tickets[allowed.to_numpy()]
    names = crm.dropna(subset=["crm_id"]).drop_duplicates("crm_id", keep="last").set_index("crm_id")
    known = [
        [str(v) for v in (names["first_name"].get(c), names["last_name"].get(c)) if isinstance(v, str) and v]
        for c in tickets["crm_id"].astype(str)
    ]
    return (
        tickets.assign(known_names=pd.Series(known, index=tickets.index, dtype=object))
        .sort_values("opened_at", kind="stable")
        .reset_index(drop=True)
    )


def _example(text: str, opened: Any, channel: Any) -> Example:
    when = pd.Timestamp(opened).strftime("%Y-%m-%d") if opened is not None and not pd.isna(opened) else None
    return Example(text=text, opened=when, channel=None if channel is None or pd.isna(channel) else str(channel))


def ticket_section(settings: Settings, tickets: pd.DataFrame, as_of: dt.date) -> TicketInsights:
    """Topics of the recent tickets, the ones rising beyond noise, and the articles to write; per-ticket topics kept."""
    out = TicketInsights()
    if len(tickets) < MIN_TICKETS:
        out.note = f"{len(tickets):,} tickets in the last {TICKET_DAYS} days: too few to learn topics from."
        return out
    texts = tickets["description"].tolist()
    names = tickets["known_names"].tolist()
    fit_rows = np.random.default_rng(0).choice(len(texts), min(len(texts), FIT_SAMPLE), replace=False)
    fit_rows.sort()
    model = fit_topics([texts[i] for i in fit_rows], known_names=[names[i] for i in fit_rows])
    assigned = assign_topics(model, texts, names)
    masked = mask_texts(prepare_texts(texts).texts, names)
    labels = [t.label for t in model.topics]
    opened = tickets["opened_at"]
    recent = (opened >= pd.Timestamp(as_of) - pd.Timedelta(days=28)).to_numpy()
    for t in model.topics:
        mine = assigned == t.topic
        rows = np.flatnonzero(mine)[-2:]
        examples = [Example(text=t.example)] + [
            _example(masked[i], opened.iloc[i], tickets["channel"].iloc[i]) for i in rows if masked[i] != t.example
        ]
        out.topics.append(
            TopicRow(
                topic=str(t.topic),
                label=t.label,
                terms=list(t.top_terms[:6]),
                tickets=int(mine.sum()),
                share=float(mine.mean()),
                recent_share=float(mine[recent].mean()) if recent.any() else None,
                examples=examples[:3],
            )  # fmt: skip
        )
    out.topics.sort(key=lambda r: -r.tickets)
    unplaced = int((assigned == UNASSIGNED).sum())
    out.note = (
        f"{model.n_topics} topics learnt from {len(fit_rows):,} of the {len(texts):,} tickets of the last "
        f"{TICKET_DAYS} days (TF-IDF, LSA, k-means; the number of topics chosen by stability), every ticket then placed"
        + (f"; {unplaced:,} had no known word and stay unplaced" if unplaced else "")
        + ". Texts are masked before anything is learnt or shown."
    )
    emerging = detect_emerging(opened, assigned, texts, labels, as_of=as_of)
    for a in emerging.alerts:
        shown = [_example(x, None, None) for x in a.examples]
        out.emerging.append(
            EmergingIssue(
                topic=str(a.topic),
                label=a.label,
                period=f"{a.period_start} to {a.period_end}",
                share=a.share,
                baseline=a.baseline,
                p_value=a.p_value,
                tickets=a.count,
                rising_terms=list(a.rising_terms),
                examples=shown,
            )  # fmt: skip
        )
    try:
        index = build_index(read_articles(settings))
    except (KnowledgeBaseError, InsightsError) as exc:
        out.kb_note = f"No article suggestions: {exc}"
    else:
        frame = pd.DataFrame({"text": texts, "topic": assigned, "label": [model.label_of(int(k)) for k in assigned]})
        for g in suggest_articles(index, frame):
            out.suggestions.append(
                ArticleSuggestion(
                    topic=g.topic,
                    label=g.label or g.topic,
                    tickets=g.tickets,
                    key_terms=g.key_terms,
                    best_article=g.closest_article,
                    best_score=g.coverage,
                    examples=[Example(text=x) for x in g.examples],
                )  # fmt: skip
            )
        out.kb_note = (
            f"{len(index.article_ids):,} articles in the knowledge base; a topic is uncovered when its best article "
            f"holds less than {COVERAGE_THRESHOLD:.0%} of the weight of the topic's distinctive words (its coverage "
            "in brackets)."
        )
    out.table = pd.DataFrame(
        {
            "ticket_id": tickets["ticket_id"].astype(str).to_numpy(),
            "customer_key": tickets["customer_key"].astype(str).to_numpy(),
            "opened_at": opened.to_numpy(),
            "topic": assigned.astype("int32"),
            "label": [model.label_of(int(k)) for k in assigned],
        }
    )
    return out


def write_ticket_topics(settings: Settings, table: pd.DataFrame) -> Path:
    """Each recent ticket's topic (personal: keyed by customer), replacing the last run's table."""
    path = insights_dir(settings) / "tickets" / "topics.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: table.to_parquet(tmp, index=False))
    return path


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
    """Compute the operations report as of `as_of` (default: the newest drop's export), write it, rebuild the site."""
    from governance.site import build_site

    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    consent = purpose_filters(settings, "analytics", "profiling")  # the consent history read once
    analytics, profiling = consent["analytics"], consent["profiling"]
    log("reading tickets and surveys for the KPIs")
    inputs = _consented(read_kpi_inputs(settings, as_of), analytics)
    # The data end: the date asked for, or the newest drop's export time when it is earlier (or none was asked).
    day = inputs.data_end.date()
    report = OperationsReport(as_of=day, generated_at=now, period="—")
    report.period = f"{inputs.data_start:%Y-%m} to {(inputs.data_end - pd.Timedelta(days=1)):%Y-%m}"
    log("behavioural segments")
    report.segments, report.segments_note, segments = segment_section(settings, day, _excluded(profiling))
    report.kpis, report.cuts, kpi_warnings = kpi_section(
        inputs, load_kpi_definitions(settings.kpi_definitions), segments
    )
    report.warnings.extend(kpi_warnings)
    log("ticket topics, emerging issues and knowledge-base gaps")
    tickets = ticket_section(settings, read_tickets(settings, day, analytics), day)
    report.topics, report.emerging, report.suggestions = tickets.topics, tickets.emerging, tickets.suggestions
    report.topics_note, report.suggestions_note = tickets.note, tickets.kb_note
    if tickets.table is not None:
        write_ticket_topics(settings, tickets.table)
    for issue in tickets.emerging:
        report.alerts.append(
            Alert(
                source="ticket topics",
                severity="warning",
                title=f"rising: {issue.label}",
                detail=f"{issue.tickets:,} tickets, {issue.share:.1%} of the week against {issue.baseline:.1%} before"
                + (f"; new words: {', '.join(issue.rising_terms)}" if issue.rising_terms else ""),
                since=issue.period.split(" to ")[0],
            )  # fmt: skip
        )
    log("reading the decisions and their outcomes")
    report.actions, report.actions_note = decision_actions(settings, now)
    report.alerts.extend(monitoring_alerts(settings))
    sources = latest_anomaly_report(settings)
    report.anomalies = page_rows(sources) if sources else []
    for a in report.anomalies:
        if a.severity != "info":
            report.alerts.append(
                Alert(
                    source="sources",
                    severity=a.severity,
                    title=f"{a.table}{'.' + a.column if a.column else ''}: {a.kind}",
                    detail=a.message,
                    since=a.day,
                )  # fmt: skip
            )
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
    """The operations report as of a date (default: the newest drop's export) and the site page that shows it."""
    config = Settings.from_flow(settings)
    logger = get_run_logger()
    day = dt.date.fromisoformat(as_of) if as_of else None
    result: dict[str, Any] = _insights_task(config, day, logger.info)
    return result
