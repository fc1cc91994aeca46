"""The operations report: what `custintel insights` computed, as the operations page shows it.

Written as `<home>/insights/latest/report.json` beside its plots; `governance.operations` renders it
into the static site. Every text in it that came from a customer (ticket examples) is masked before
it gets here, and no row names a person: examples carry their date and channel, never a ticket id or
customer key. The report is the only thing the page reads, so what reaches a page is what this model
lets through.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from custintel.atomic_files import write_text_atomically
from custintel.settings import Settings

REPORT_FILE = "report.json"
Severity = Literal["info", "warning", "critical"]


class KpiPoint(BaseModel):
    """One period of a KPI: its value, the interval where the KPI is a share or a mean, and its denominator."""

    period: str
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0


class KpiSeries(BaseModel):
    """A KPI over time: its definition in words (window, exclusions) and its monthly points."""

    name: str
    label: str
    unit: Literal["share", "points", "score", "currency", "rate"]
    definition: str
    points: list[KpiPoint] = Field(default_factory=list)
    plot: str | None = None  # file name of its plot beside report.json
    note: str | None = None


class KpiCut(BaseModel):
    """A KPI for one group of one dimension (channel, region, journey stage, segment) over the report's period."""

    dimension: str
    group: str
    kpi: str
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0


class Example(BaseModel):
    """A masked ticket shown as an example: its text with names, emails and phones replaced, when, which channel."""

    text: str
    opened: str | None = None
    channel: str | None = None


class TopicRow(BaseModel):
    """A ticket topic: its label and top terms, how many tickets it holds, its share overall and lately."""

    topic: str
    label: str
    terms: list[str] = Field(default_factory=list)
    tickets: int
    share: float
    recent_share: float | None = None
    examples: list[Example] = Field(default_factory=list)


class EmergingIssue(BaseModel):
    """A topic whose share rose beyond noise in one period against its own history."""

    topic: str
    label: str
    period: str
    share: float
    baseline: float
    statistic: float | None = None
    p_value: float | None = None
    tickets: int = 0
    examples: list[Example] = Field(default_factory=list)


class ArticleSuggestion(BaseModel):
    """A recurring topic that no knowledge-base article covers: what a new article should answer."""

    topic: str
    label: str
    tickets: int
    key_terms: list[str] = Field(default_factory=list)
    best_article: str | None = None
    best_score: float | None = None
    examples: list[Example] = Field(default_factory=list)


class SegmentRow(BaseModel):
    """A behavioural segment: its size and its centre in the behaviours it was cut on."""

    segment: str
    customers: int
    share: float
    profile: dict[str, float] = Field(default_factory=dict)


class Anomaly(BaseModel):
    """A source-system anomaly found in a drop before features were built."""

    table: str
    column: str | None = None
    day: str | None = None
    kind: str
    observed: float | None = None
    expected: float | None = None
    severity: Severity = "warning"
    message: str


class ActionRow(BaseModel):
    """What the decision service chose for one action and channel, and what came back."""

    action: str
    channel: str
    decisions: int
    outcomes: dict[str, int] = Field(default_factory=dict)
    response_rate: float | None = None
    expected_rate: float | None = None


class Alert(BaseModel):
    """An open alert on the page: where it came from, how bad, what it says."""

    source: str
    severity: Severity
    title: str
    detail: str = ""
    since: str | None = None


class OperationsReport(BaseModel):
    """Everything the operations page shows, as of one date."""

    as_of: dt.date
    generated_at: dt.datetime
    period: str  # the months the KPIs cover, e.g. "2024-01 to 2025-12"
    kpis: list[KpiSeries] = Field(default_factory=list)
    cuts: list[KpiCut] = Field(default_factory=list)
    topics: list[TopicRow] = Field(default_factory=list)
    topics_note: str | None = None
    emerging: list[EmergingIssue] = Field(default_factory=list)
    suggestions: list[ArticleSuggestion] = Field(default_factory=list)
    segments: list[SegmentRow] = Field(default_factory=list)
    segments_note: str | None = None
    anomalies: list[Anomaly] = Field(default_factory=list)
    actions: list[ActionRow] = Field(default_factory=list)
    actions_note: str | None = None
    alerts: list[Alert] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def write(self, folder: Path) -> Path:
        """Write the report as `folder/report.json` (atomically); returns its path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / REPORT_FILE
        write_text_atomically(path, self.model_dump_json(indent=1) + "\n")
        return path


def read_report(folder: Path) -> OperationsReport | None:
    """The report under `folder`, or None when none has been written (or it cannot be read)."""
    path = folder / REPORT_FILE
    if not path.is_file():
        return None
    try:
        return OperationsReport.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def insights_dir(settings: Settings) -> Path:
    """Where `custintel insights` writes its derived tables and the latest report: `<home>/insights`."""
    return settings.home_dir / "insights"


def latest_dir(settings: Settings) -> Path:
    """The latest operations report and its plots (replaced whole by each run)."""
    return insights_dir(settings) / "latest"
