"""The operations page end to end: `custintel insights` on the session world, read in headless Chromium.

One run of the command (a fresh process, from another working directory) on a copy of the featured
home; the tests read what it wrote: the page and its plots in a real browser, no planted personal
data anywhere it wrote text, consent per purpose in its per-customer tables, an erasure reaching them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from custintel.personal import Subject
from custintel.settings import Settings
from insights.personal import InsightsStore
from insights.report import read_report
from monitoring.outcomes import action_rows
from tests.conftest import World
from tests.test_report_site import _crawl, _serving, chromium

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("custintel"))


@dataclass(frozen=True)
class Run:
    settings: Settings
    output: str
    world: World


@pytest.fixture(scope="module")
def run(featured: Settings, world: World, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("operations")
    home = root / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
    env = {**os.environ, "CUSTINTEL_HOME": str(home)}
    env.pop("CUSTINTEL_TRAINING_CONFIG", None)
    done = subprocess.run(
        [CLI, "insights", "--engine", "local"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return Run(Settings(home=home), done.stdout + done.stderr, world)


def test_the_command_says_what_it_computed_and_where_the_page_is(run: Run) -> None:
    assert "Traceback" not in run.output and "Warning:" not in run.output, run.output
    page = run.settings.site_dir / "operations.html"
    assert f"page: {page}" in run.output.replace("\n", "") or str(page) in run.output
    report = read_report(run.settings.home_dir / "insights" / "latest")
    assert report is not None
    assert {k.name for k in report.kpis} >= {"fcr", "csat", "nps", "ces_mean", "repeat_contact_rate"}
    assert report.topics and sum(t.tickets for t in report.topics) > 1000
    assert report.segments and abs(sum(s.share for s in report.segments) - 1) < 1e-9
    fcr = next(k for k in report.kpis if k.name == "fcr")
    assert all(p.value is None or 0 <= p.value <= 1 for p in fcr.points)
    assert {c.dimension for c in report.cuts} >= {"channel", "region", "journey stage", "segment"}


def test_page_in_headless_chromium(run: Run, tmp_path: Path) -> None:
    site = run.settings.site_dir
    with _serving(site) as base, chromium(tmp_path) as driver:
        pages, _resources, images, severe = _crawl(driver, base)
        driver.get(base + "operations.html")
        text = driver.find_element("tag name", "body").text
        driver.save_screenshot(str(tmp_path / "operations.png"))
    assert base + "operations.html" in pages  # linked from the index and the header
    for heading in (
        "Open alerts",
        "KPIs",
        "First-contact resolution",
        "KPIs by group",
        "Ticket topics",
        "Knowledge base",
        "Behavioural segments",
        "Actions the decision service took",
        "Source anomalies",
    ):
        assert heading in text, heading  # fmt: skip
    assert "Definition." in text and "Reichheld" in text
    assert sum(1 for src in images if "/operations/kpi-" in src) >= 5
    assert severe == [], severe
    assert (tmp_path / "operations.png").stat().st_size > 50_000


def test_no_planted_personal_data_reaches_the_page_or_the_report(run: Run) -> None:
    truth = run.world.truth_frame("ticket_text")
    planted = {
        *truth["pii_email"].dropna().astype(str),
        *truth["pii_phone"].dropna().astype(str),
        *truth["pii_name"].dropna().astype(str),
    }
    planted = {p for p in planted if len(p) >= 5}
    assert len(planted) > 20  # the generator planted some
    written = [
        (run.settings.site_dir / "operations.html").read_text(encoding="utf-8"),
        (run.settings.home_dir / "insights" / "latest" / "report.json").read_text(encoding="utf-8"),
    ]
    # whole words only: a planted name "Terri" is not leaked by "Terrible"
    leaked = sorted(p for p in planted if any(re.search(rf"(?<!\w){re.escape(p)}(?!\w)", w) for w in written))
    assert leaked == []
    assert "[EMAIL]" in written[1] or "[PHONE]" in written[1] or "[NAME]" in written[1]


def test_per_customer_tables_respect_consent_and_yield_to_erasure(run: Run) -> None:
    from flows.score import purpose_filter

    topics_path = run.settings.home_dir / "insights" / "tickets" / "topics.parquet"
    topics = pd.read_parquet(topics_path)
    withdrawn = purpose_filter(run.settings, "analytics").keys
    assert not set(topics["customer_key"]) & set(withdrawn)
    segments = pd.concat(
        pd.read_parquet(p) for p in (run.settings.features_dir / "offline" / "segments").rglob("data.parquet")
    )
    assert not set(segments["customer_key"]) & set(purpose_filter(run.settings, "profiling").keys)

    key = str(topics["customer_key"].value_counts().index[0])
    store = InsightsStore(run.settings)
    subject = Subject(request=key, customer_keys=(key,))
    held = store.find([subject])
    assert held and sum(len(h.rows) for h in held) == int((topics["customer_key"] == key).sum())
    erased = store.erase([subject])
    assert sum(e.removed for e in erased) == len(held[0].rows)
    assert store.find([subject]) == []
    assert len(pd.read_parquet(topics_path)) == len(topics) - len(held[0].rows)


def test_insights_on_a_home_without_data_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CUSTINTEL_HOME": str(tmp_path / "empty")}
    done = subprocess.run(
        [CLI, "insights", "--engine", "local"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in out, out
    assert "custintel resolve" in out  # what to run first


def test_action_rows_count_outcomes_per_action_and_channel() -> None:
    decisions = pd.DataFrame(
        {
            "decision_id": ["d1", "d2", "d3", "d4"],
            "action": ["retention_offer", "retention_offer", "retention_offer", "callback"],
            "channel": ["email", "email", "call_centre", "call_centre"],
            "actions": [[{"p": 0.2}], [{"p": 0.4}], [{"p": 0.5}], [{}]],
        }
    )
    outcomes = pd.DataFrame(
        {
            "decision_id": ["d1", "d1", "d2", "d3"],
            "event": ["impression", "accept", "impression", "decline"],
            "action": ["retention_offer"] * 3 + ["retention_offer"],
            "channel": ["email", "email", "email", "call_centre"],
        }
    )
    rows = {(r.action, r.channel): r for r in action_rows(decisions, outcomes)}
    email = rows[("retention_offer", "email")]
    assert email.decisions == 2 and email.outcomes == {"impression": 2, "accept": 1}
    assert email.response_rate == 0.5 and email.expected_rate == pytest.approx(0.3)
    assert rows[("retention_offer", "call_centre")].response_rate is None  # never shown
    assert rows[("callback", "call_centre")].outcomes == {} and rows[("callback", "call_centre")].expected_rate is None


def test_open_monitoring_alerts_are_each_familys_latest_decision_when_not_none(tmp_path: Path) -> None:
    from flows.insights import monitoring_alerts

    settings = Settings(home=tmp_path / "home")
    log = settings.monitoring_dir / "decisions.jsonl"
    log.parent.mkdir(parents=True)
    entries = [
        {"kind": "monitoring", "family": "churn", "model": "custintel-churn", "version": "1", "action": "alert",
         "why": "data quality", "at": "2026-01-02T00:00:00+00:00"},
        {"kind": "monitoring", "family": "churn", "model": "custintel-churn", "version": "2", "action": "none",
         "why": "", "at": "2026-01-09T00:00:00+00:00"},
        {"kind": "monitoring", "family": "propensity", "model": "custintel-propensity", "version": "3",
         "action": "hold", "why": "held: retraining switched off", "at": "2026-01-09T00:00:00+00:00"},
    ]  # fmt: skip
    log.write_text("\n".join(json.dumps(e) for e in entries) + '\n{"kind": "monitor', encoding="utf-8")
    alerts = monitoring_alerts(settings)
    assert [(a.title, a.severity, a.since) for a in alerts] == [
        ("custintel-propensity v3: hold", "warning", "2026-01-09")
    ]
    assert monitoring_alerts(Settings(home=tmp_path / "none")) == []
