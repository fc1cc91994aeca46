"""The operations managers' page of the static site: `operations.html`, rendered from `custintel insights`' report.

It shows, for the people who run service rather than models: the KPIs over time with their definitions
and plots, the KPIs by channel, region, journey stage and segment, the ticket topics and the ones rising
beyond noise (with masked examples), the knowledge-base articles worth writing, the behavioural segments,
the actions the decision service took and what came back, the source anomalies of the latest drop, and
every open alert. It reads only the report (`insights.report.OperationsReport`), whose examples are masked
before they are written, so nothing here can show a ticket's raw text, id or customer.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from pathlib import Path

from governance.html import OPERATIONS_PAGE, escape, page, table
from insights.report import Example, KpiSeries, OperationsReport

# Where the page's plots go, relative to the site root.
PLOTS_DIR = "operations"
_SHARE_UNITS = {"share", "rate"}
MIN_N = 100  # a value on fewer observations is greyed (the KPI definitions' min_n)
# KPI blocks side by side where the screen allows.
_STYLE = "<style>.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:0 1.5rem}</style>"


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in _SHARE_UNITS:
        return f"{100 * value:.1f}%"
    if unit == "points":
        return f"{value:+.1f}"
    if unit == "currency":
        return f"{value:,.2f}"
    return f"{value:.2f}"


def _interval(low: float | None, high: float | None, unit: str) -> str:
    if low is None or high is None:
        return ""
    return f' <span class="muted">({_value(low, unit)} to {_value(high, unit)})</span>'


def _examples(examples: Sequence[Example]) -> str:
    if not examples:
        return '<span class="muted">—</span>'
    items = []
    for x in examples:
        meta = ", ".join(v for v in (x.opened, x.channel) if v)
        items.append(
            f"<li>{escape(x.text)}" + (f' <span class="muted">({escape(meta)})</span>' if meta else "") + "</li>"
        )
    return f"<ul>{''.join(items)}</ul>"


def _severity(severity: str) -> str:
    kind = {"critical": "blocked", "warning": "waived"}.get(severity, "alias")
    return f'<span class="badge {kind}">{escape(severity)}</span>'


def _kpi_block(kpi: KpiSeries) -> str:
    latest = next((p for p in reversed(kpi.points) if p.value is not None), None)
    head = f'<h3 id="kpi-{escape(kpi.name)}">{escape(kpi.label)}</h3>'
    now = (
        f"<p><strong>{_value(latest.value, kpi.unit)}</strong> in {escape(latest.period)}"
        f"{_interval(latest.low, latest.high, kpi.unit)}, n = {latest.n:,}</p>"
        if latest
        else '<p class="muted">No data in the period.</p>'
    )
    plot = (
        f'<figure><img src="{PLOTS_DIR}/{escape(Path(kpi.plot).name)}" alt="{escape(kpi.label)} by month">'
        f"<figcaption>{escape(kpi.label)} by month, with its 95% interval</figcaption></figure>"
        if kpi.plot
        else ""
    )
    note = f'<p class="muted">{escape(kpi.note)}</p>' if kpi.note else ""
    return f"{head}{now}<p><em>Definition.</em> {escape(kpi.definition)}</p>{note}{plot}"


def _cut_rows(report: OperationsReport) -> list[str]:
    """One row per (dimension, group), one column per KPI: its value and n (greyed below 100)."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    units = {k.name: k.unit for k in report.kpis}
    for c in report.cuts:
        unit = units.get(c.kpi, "score")
        shown = f"{_value(c.value, unit)} <small>(n {c.n:,})</small>"
        cells.setdefault((c.dimension, c.group), {})[c.kpi] = (
            f'<span class="muted">{shown}</span>' if c.n < MIN_N else shown
        )
    return [
        f"<tr><td>{escape(dim)}</td><td>{escape(group)}</td>"
        + "".join(f"<td>{row.get(k.name, '—')}</td>" for k in report.kpis)
        + "</tr>"
        for (dim, group), row in cells.items()
    ]


def render_operations_page(report: OperationsReport | None, built: dt.datetime) -> str:
    """The whole page; without a report it says how to make one."""
    source = "the operations report of custintel insights"
    if report is None:
        body = (
            '<h1>Operations</h1><p class="muted">No operations report yet: run <code>custintel insights</code> '
            "(it computes the KPIs, topics, segments and alerts and rebuilds this site).</p>"
        )
        return page("custintel: operations", body, 0, built, source)
    alerts = [
        f"<tr><td>{_severity(a.severity)}</td><td>{escape(a.source)}</td><td>{escape(a.title)}</td>"
        f"<td>{escape(a.detail)}</td><td>{escape(a.since or '—')}</td></tr>"
        for a in sorted(report.alerts, key=lambda a: ({"critical": 0, "warning": 1}.get(a.severity, 2), a.source))
    ]
    cut_rows = _cut_rows(report)
    topics = [
        f"<tr><td>{escape(t.label)}</td><td>{escape(', '.join(t.terms))}</td><td>{t.tickets:,}</td>"
        f"<td>{_value(t.share, 'share')}</td><td>{_value(t.recent_share, 'share')}</td>"
        f"<td>{_examples(t.examples)}</td></tr>"
        for t in report.topics
    ]
    emerging = [
        f"<tr><td>{escape(e.label)}</td><td>{escape(e.period)}</td><td>{_value(e.share, 'share')}</td>"
        f"<td>{_value(e.baseline, 'share')}</td><td>{e.tickets:,}</td>"
        f"<td>{'—' if e.p_value is None else f'{e.p_value:.1e}'}</td><td>{_examples(e.examples)}</td></tr>"
        for e in report.emerging
    ]
    suggestions = [
        f"<tr><td>{escape(s.label)}</td><td>{s.tickets:,}</td><td>{escape(', '.join(s.key_terms))}</td>"
        f"<td>{escape(s.best_article or '—')}"
        + ("" if s.best_score is None else f' <span class="muted">(score {s.best_score:.2f})</span>')
        + f"</td><td>{_examples(s.examples)}</td></tr>"
        for s in report.suggestions
    ]
    segments = [
        f"<tr><td>{escape(s.segment)}</td><td>{s.customers:,}</td><td>{_value(s.share, 'share')}</td>"
        f"<td>{escape(', '.join(f'{k} {v:.2f}' for k, v in s.profile.items()))}</td></tr>"
        for s in report.segments
    ]
    anomalies = [
        f"<tr><td>{_severity(a.severity)}</td><td>{escape(a.table)}</td><td>{escape(a.column or '—')}</td>"
        f"<td>{escape(a.day or '—')}</td><td>{escape(a.kind)}</td><td>{escape(a.message)}</td></tr>"
        for a in report.anomalies
    ]
    actions = [
        f"<tr><td>{escape(a.action)}</td><td>{escape(a.channel)}</td><td>{a.decisions:,}</td>"
        f"<td>{escape(', '.join(f'{k} {v:,}' for k, v in sorted(a.outcomes.items())) or '—')}</td>"
        f"<td>{_value(a.response_rate, 'share')}</td><td>{_value(a.expected_rate, 'share')}</td></tr>"
        for a in report.actions
    ]
    notes = "".join(f"<li>{escape(w)}</li>" for w in report.warnings)
    toc = (
        '<p><a href="#alerts">Open alerts</a> · <a href="#kpis">KPIs</a> · <a href="#cuts">KPIs by group</a> · '
        '<a href="#topics">Ticket topics</a> · <a href="#kb">Knowledge base</a> · <a href="#segments">Segments</a> · '
        '<a href="#actions">Actions and outcomes</a> · <a href="#sources">Source anomalies</a></p>'
    )
    body = (
        _STYLE + f"<h1>Operations</h1><p>As of {escape(report.as_of.isoformat())}; KPIs over {escape(report.period)}. "
        f"Computed {escape(report.generated_at.strftime('%Y-%m-%d %H:%M UTC'))} by <code>custintel insights</code>. "
        "Ticket examples are masked (names, emails, phone numbers).</p>"
        + toc
        + (f'<ul class="muted">{notes}</ul>' if notes else "")
        + '<h2 id="alerts">Open alerts</h2>'
        + table(["severity", "from", "alert", "detail", "since"], alerts, "No open alert.")
        + '<h2 id="kpis">KPIs</h2>'
        + (
            f'<div class="kpis">{"".join(_kpi_block(k) for k in report.kpis)}</div>'
            if report.kpis
            else '<p class="muted">No KPI computed.</p>'
        )
        + '<h2 id="cuts">KPIs by group</h2>'
        + '<p class="muted">Over the last 90 days; n is the tickets (or answered surveys) behind each value, and '
        "values on fewer than 100 are greyed.</p>"
        + table(["dimension", "group", *[k.label for k in report.kpis]], cut_rows, "No breakdown computed.")
        + '<h2 id="topics">Ticket topics</h2>'
        + (f'<p class="muted">{escape(report.topics_note)}</p>' if report.topics_note else "")
        + "<h3>Rising beyond noise</h3>"
        + table(
            ["topic", "period", "share", "baseline", "tickets", "p-value", "examples"],
            emerging,
            "No topic is rising beyond noise.",
        )
        + "<h3>All topics</h3>"
        + table(["topic", "top terms", "tickets", "share", "last 4 weeks", "examples"], topics, "No topics yet.")
        + '<h2 id="kb">Knowledge base: articles to write</h2>'
        + table(
            ["topic", "tickets", "key terms", "closest article", "examples"],
            suggestions,
            "Every recurring topic has an article that answers it.",
        )
        + '<h2 id="segments">Behavioural segments</h2>'
        + (f'<p class="muted">{escape(report.segments_note)}</p>' if report.segments_note else "")
        + table(["segment", "customers", "share", "centre"], segments, "No segments built.")
        + '<h2 id="actions">Actions the decision service took, and their outcomes</h2>'
        + (f'<p class="muted">{escape(report.actions_note)}</p>' if report.actions_note else "")
        + table(
            ["action", "channel", "decisions", "outcomes", "response", "expected"],
            actions,
            "No decision logged yet.",
        )
        + '<h2 id="sources">Source anomalies</h2>'
        + table(
            ["severity", "table", "column", "day", "kind", "what to check"], anomalies, "No anomaly in the sources."
        )
    )
    return page("custintel: operations", body, 0, built, source)


def copy_operations(latest: Path, report: OperationsReport | None, site: Path) -> None:
    """Copy the report's plots into the site's `operations/` folder (only the files the report names)."""
    if report is None:
        return
    target = site / PLOTS_DIR
    for kpi in report.kpis:
        name = Path(kpi.plot or "").name  # a file beside report.json, never a path elsewhere
        if name and (latest / name).is_file():
            target.mkdir(exist_ok=True)
            shutil.copyfile(latest / name, target / name)


__all__ = ["OPERATIONS_PAGE", "copy_operations", "render_operations_page"]
