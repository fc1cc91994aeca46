"""Operations KPIs: every definition on a tiny hand-computed fixture, and a known movement in a generated world.

The fixture (data from 2025-01-01 to 2025-03-01, windows of 7 days, costs phone 5, chat 2, email 3, store 10):

  ticket customer opened      channel category  outcome        csat  FCR          repeat
  T1     A        01-10 09:00 phone   billing   resolved       5     no (T2)      no
  T2     A        01-14       chat    billing   resolved       2     yes          yes (T1 4 days before)
  T3     A        01-30       email   technical escalated      -     no (outcome) no
  T4     B        01-03       phone   network   resolved       4     yes          excluded (data start)
  T5     B        01-05       store   account   refund_issued  4     yes          excluded (data start)
  T6     B        02-25       chat    account   resolved       3     excluded     no
  T7     B        02-10       phone   device    open           -     excluded     no
  T8     (none)   02-01       fax     billing   resolved       5     excluded     excluded
  T9     B        03-05       (after the data end: ignored)

  FCR 3/5; repeat 1/5; CSAT top box 4/6; cost (5+2+3+5+10+2+5) / 5 resolved = 6.4 (fax: warned, left out).
  Surveys: A 10 (effort 7), A 9 (-), B 6 (3), B 8 (5), B after the end: NPS (2-1)/4 = +25; CES mean 5, agree 2/3.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custintel.settings import Settings
from insights.kpis import (
    KpiDefinitions,
    KpiError,
    compute_kpis,
    load_kpi_definitions,
    make_inputs,
    movement,
    read_kpi_inputs,
    wilson_interval,
)

COSTS = {"phone": 5.0, "chat": 2.0, "email": 3.0, "store": 10.0}
DEFS = KpiDefinitions(cost_per_contact=COSTS, min_n=3)
END = dt.date(2025, 3, 1)
START = dt.date(2025, 1, 1)


def _tickets() -> pd.DataFrame:
    rows = [
        ("T1", "A", "2025-01-10 09:00", "2025-01-10 10:00", "phone", "billing", "resolved", "5"),
        ("T2", "A", "2025-01-14 09:00", "2025-01-14 12:00", "chat", "billing", "resolved", "2"),
        ("T3", "A", "2025-01-30 09:00", "2025-02-03 09:00", "email", "technical", "escalated", None),
        ("T4", "B", "2025-01-03 09:00", "2025-01-03 09:30", "phone", "network", "resolved", "4"),
        ("T5", "B", "2025-01-05 09:00", "2025-01-06 09:00", "store", "account", "refund_issued", "4"),
        ("T6", "B", "2025-02-25 09:00", "2025-02-25 10:00", "chat", "account", "resolved", "3"),
        ("T7", "B", "2025-02-10 09:00", None, "phone", "device", "open", None),
        ("T8", None, "2025-02-01 09:00", "2025-02-01 09:10", "fax", "billing", "resolved", "5"),
        ("T9", "B", "2025-03-05 09:00", "2025-03-05 10:00", "phone", "account", "resolved", "1"),
    ]
    columns = ["ticket_id", "customer_key", "opened_at", "resolved_at", "channel", "category", "resolution", "csat"]
    return pd.DataFrame(rows, columns=columns)


def _surveys() -> pd.DataFrame:
    rows = [
        ("R1", "A", "2025-01-20", 10, 7),
        ("R2", "A", "2025-02-20", 9, None),
        ("R3", "B", "2025-01-15", 6, 3),
        ("R4", "B", "2025-02-02", 8, 5),
        ("R5", "B", "2025-03-10", 0, 1),
    ]
    return pd.DataFrame(rows, columns=["response_id", "customer_key", "survey_date", "score", "effort"])


def _customers() -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_key": ["A", "B"], "customer_since": ["2024-12-15", "2023-01-01"], "region": ["north", "south"]}
    )


@pytest.fixture
def inputs():  # type: ignore[no-untyped-def]
    return make_inputs(_tickets(), _surveys(), _customers(), END, START)


def test_overall_kpis_match_the_hand_computed_values(inputs) -> None:  # type: ignore[no-untyped-def]
    result = compute_kpis(inputs, DEFS)
    t = result.table.set_index("kpi")
    assert t.loc["fcr", "n"] == 5 and t.loc["fcr", "value"] == pytest.approx(3 / 5)
    assert t.loc["repeat_contact_rate", "n"] == 5 and t.loc["repeat_contact_rate", "value"] == pytest.approx(1 / 5)
    assert t.loc["csat", "n"] == 6 and t.loc["csat", "value"] == pytest.approx(4 / 6)
    assert t.loc["nps", "n"] == 4 and t.loc["nps", "value"] == pytest.approx(25.0)
    assert t.loc["ces_mean", "n"] == 3 and t.loc["ces_mean", "value"] == pytest.approx(5.0)
    assert t.loc["ces_agree", "n"] == 3 and t.loc["ces_agree", "value"] == pytest.approx(2 / 3)
    cost = t.loc["cost_per_resolved_issue"]
    assert cost["n"] == 5 and cost["value"] == pytest.approx(32 / 5) and cost["unit"] == "USD"
    # The fax channel has no cost: a named warning with its count; the unlinked ticket is counted too.
    codes = {(w.code, w.subject): w.rows for w in result.warnings}
    assert codes == {("channel_without_cost", "fax"): 1, ("ticket_without_customer", "support_tickets"): 1}
    assert "fax" in next(w.message for w in result.warnings if w.code == "channel_without_cost")


def test_intervals_are_wilson_for_shares_normal_for_nps_and_t_for_mean_effort(inputs) -> None:  # type: ignore[no-untyped-def]
    t = compute_kpis(inputs, DEFS).table.set_index("kpi")
    # Wilson 95% for 3 of 5, from the textbook formula.
    assert (t.loc["fcr", "lower"], t.loc["fcr", "upper"]) == pytest.approx((0.2307, 0.8824), abs=1e-4)
    # NPS: p=.5, d=.25, se = sqrt((p + d - (p - d)^2) / n) = 0.41458; 25 +- 1.96 x 41.458, clipped at 100.
    assert t.loc["nps", "lower"] == pytest.approx(25 - 1.959964 * 41.4578, abs=1e-2)
    assert t.loc["nps", "upper"] == 100.0
    # Effort 7, 3, 5: mean 5, sd 2, t(2) = 4.3027: 5 +- 4.968.
    assert (t.loc["ces_mean", "lower"], t.loc["ces_mean", "upper"]) == pytest.approx((0.0323, 9.9677), abs=1e-3)
    assert math.isnan(t.loc["cost_per_resolved_issue", "lower"])
    # min_n = 3: every overall cell is large enough; a month with no eligible ticket is flagged.
    assert not t["low_n"].any()


def test_wilson_interval_edges() -> None:
    lo, hi = wilson_interval(np.array([0, 10, 0]), np.array([10, 10, 0]), 0.95)
    assert lo[0] == pytest.approx(0.0, abs=1e-12) and 0.2 < hi[0] < 0.35
    assert hi[1] == pytest.approx(1.0) and 0.65 < lo[1] < 0.8
    assert np.isnan(lo[2]) and np.isnan(hi[2])


def test_by_month(inputs) -> None:  # type: ignore[no-untyped-def]
    result = compute_kpis(inputs, DEFS, by=("month",))
    assert result.value("fcr", month="2025-01") == pytest.approx(3 / 5)
    assert result.value("csat", month="2025-01") == pytest.approx(3 / 4)
    assert result.value("csat", month="2025-02") == pytest.approx(1 / 2)
    feb = result.table[(result.table["kpi"] == "fcr") & (result.table["month"] == "2025-02")].iloc[0]
    assert feb["n"] == 0 and math.isnan(feb["value"]) and feb["low_n"]
    assert result.value("nps", month="2025-01") == pytest.approx(0.0)  # 10 and 6
    assert result.value("nps", month="2025-02") == pytest.approx(50.0)  # 9 and 8
    assert set(result.table["month"]) == {"2025-01", "2025-02"}  # nothing after the data end


def test_by_channel_region_and_journey_stage(inputs) -> None:  # type: ignore[no-untyped-def]
    by_channel = compute_kpis(inputs, DEFS, by=("channel",))
    assert set(by_channel.table["kpi"]) == {"fcr", "repeat_contact_rate", "csat", "cost_per_resolved_issue"}
    assert by_channel.value("fcr", channel="phone") == pytest.approx(1 / 2)  # T1 no, T4 yes
    assert by_channel.value("cost_per_resolved_issue", channel="phone") == pytest.approx(15 / 2)
    assert math.isnan(by_channel.value("cost_per_resolved_issue", channel="fax"))
    by_region = compute_kpis(inputs, DEFS, by=("region",))
    assert by_region.value("fcr", region="north") == pytest.approx(1 / 3)
    assert by_region.value("csat", region="unknown") == pytest.approx(1.0)  # the unlinked ticket
    assert by_region.value("nps", region="south") == pytest.approx(-50.0)  # 6 and 8
    by_stage = compute_kpis(inputs, DEFS, by=("journey_stage",))
    # A joined 2024-12-15: all of A's tickets fall in its first 90 days; B is established.
    assert by_stage.value("fcr", journey_stage="onboarding") == pytest.approx(1 / 3)
    assert by_stage.value("fcr", journey_stage="established") == pytest.approx(1.0)
    assert by_stage.value("ces_mean", journey_stage="onboarding") == pytest.approx(7.0)


def test_by_segment_and_two_cuts(inputs) -> None:  # type: ignore[no-untyped-def]
    result = compute_kpis(inputs, DEFS, by=("month", "segment"), segments={"A": "digital-first"})
    assert result.value("fcr", month="2025-01", segment="digital-first") == pytest.approx(1 / 3)
    assert result.value("fcr", month="2025-01", segment="unassigned") == pytest.approx(1.0)
    with pytest.raises(KpiError, match="segment cut needs the segments"):
        compute_kpis(inputs, DEFS, by=("segment",))


def test_windows_and_outcomes_come_from_the_definitions(inputs) -> None:  # type: ignore[no-untyped-def]
    # A 3-day window: T1 -> T2 is 4 days, so T1 becomes first-contact-resolved and T2 no longer a repeat.
    short = KpiDefinitions(cost_per_contact=COSTS, fcr={"window_days": 3}, repeat_contact={"window_days": 3}, min_n=1)
    t = compute_kpis(inputs, short).table.set_index("kpi")
    # FCR eligible: T1-T5 and now T6 (02-25 <= 02-26); FCR: T1, T2, T4, T5, T6.
    assert (t.loc["fcr", "n"], t.loc["fcr", "value"]) == (6, pytest.approx(5 / 6))
    # Repeat eligible from 01-04: T1, T2, T3, T5, T6, T7; T5 repeats T4 (2 days), T2 no longer repeats T1.
    assert (t.loc["repeat_contact_rate", "n"], t.loc["repeat_contact_rate", "value"]) == (6, pytest.approx(1 / 6))
    lenient = KpiDefinitions(cost_per_contact=COSTS, fcr={"unresolved_outcomes": []})
    assert compute_kpis(inputs, lenient).value("fcr") == pytest.approx(4 / 5)  # T3 counts now


def test_movement_compares_before_and_after(inputs) -> None:  # type: ignore[no-untyped-def]
    m = movement(inputs, "csat", dt.date(2025, 2, 1), DEFS)
    assert (m.before, m.before_n, m.after, m.after_n) == (pytest.approx(3 / 4), 4, pytest.approx(1 / 2), 2)
    assert m.change == pytest.approx(-0.25) and m.z < 0
    with pytest.raises(KpiError, match="no interval"):
        movement(inputs, "cost_per_resolved_issue", dt.date(2025, 2, 1), DEFS)


@pytest.mark.parametrize(
    ("frame", "column", "value", "match"),
    [
        ("tickets", "csat", "five", "tickets.csat: not a number"),
        ("tickets", "opened_at", "yesterday-ish", "tickets.opened_at: not a date"),
        ("surveys", "effort", "easy", "surveys.effort: not a number"),
    ],
)
@pytest.mark.filterwarnings("error")
def test_bad_values_are_named(frame: str, column: str, value: str, match: str) -> None:
    frames = {"tickets": _tickets(), "surveys": _surveys()}
    frames[frame][column] = frames[frame][column].astype(object)
    frames[frame].loc[0, column] = value
    with pytest.raises(KpiError, match=match):
        make_inputs(frames["tickets"], frames["surveys"], _customers(), END, START)


def test_missing_columns_and_bad_cuts_are_named(inputs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KpiError, match=r"tickets: missing column\(s\) \['csat'\]"):
        make_inputs(_tickets().drop(columns="csat"), _surveys(), _customers(), END)
    with pytest.raises(KpiError, match="unknown cut"):
        compute_kpis(inputs, DEFS, by=("weekday",))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("cost_per_contact: {phone: -1}\n", "cost_per_contact.phone: must be a finite amount"),
        ("fcr: {window_days: 0}\n", "fcr.window_days"),
        ("fcr: {window_dayz: 7}\n", "fcr.window_dayz"),
        ("journey_stages: [{name: a, below_days: 90}]\n", "the last stage must be open-ended"),
        ("nps: {promoters: [6, 9, 10]}\n", "promoters and detractors overlap"),
        ("- not a mapping\n", "must hold a mapping"),
    ],
)
def test_bad_definitions_name_the_field(tmp_path: Path, yaml_text: str, match: str) -> None:
    path = tmp_path / "kpis.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(KpiError, match=match):
        load_kpi_definitions(path)


def test_shipped_definitions_load() -> None:
    defs = load_kpi_definitions()
    assert defs.fcr.window_days == 7
    assert set(defs.cost_per_contact) == {"phone", "email", "chat", "social", "store"}
    assert [s.name for s in defs.journey_stages] == ["onboarding", "first_year", "established"]


# --- The generated world: the drift date strains service; FCR and CSAT must fall beyond noise. ---

DRIFT_DATE = dt.date(2025, 9, 1)


@pytest.fixture(scope="module")
def drifted_home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small drifted world ingested into a home; its crosswalk is the truth's (identity resolution is tested
    elsewhere, and costs more than this test is worth)."""
    from features.lake import ingest_drop
    from features.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("kpi_drift")
    cfg = WorldConfig(customers=3000, chunk_size=1000, seed=5, drift_date=DRIFT_DATE, drift_strength=1.5)
    generate_world(cfg, root / "drop")
    settings = Settings(home=root / "home")
    ingest_drop(root / "drop", settings)
    records = pd.read_parquet(root / "drop" / "_truth" / "source_records.parquet")
    settings.identity_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "record_key": records["source_table"] + ":" + records["record_id"].astype(str),
            "customer_key": "K" + records["person_id"].astype(str),
        }
    ).to_parquet(settings.identity_dir / "crosswalk.parquet")
    return settings


def test_fcr_and_csat_fall_after_the_drift_date(drifted_home: Settings) -> None:
    inputs = read_kpi_inputs(drifted_home)
    assert inputs.data_end == pd.Timestamp("2026-01-01")
    assert inputs.customers["customer_key"].str.startswith("K").all()
    defs = load_kpi_definitions()
    for kpi in ("fcr", "csat"):
        m = movement(inputs, kpi, DRIFT_DATE, defs)
        assert m.after < m.before, (kpi, m)
        assert m.z < -3, f"{kpi} should fall beyond noise after the drift date: {m}"
        assert m.after_interval[1] < m.before_interval[1]
    # Effort answers reach the lake; the planted out-of-range ones were emptied by the contract.
    answered = inputs.surveys["effort"].dropna()
    assert len(answered) > 0 and answered.between(1, 7).all()


def test_read_kpi_inputs_needs_a_crosswalk(tmp_path: Path) -> None:
    with pytest.raises(KpiError, match="run `custintel resolve` first"):
        read_kpi_inputs(Settings(home=tmp_path / "empty"))


def test_definitions_in_words_follow_the_settings() -> None:
    from insights.errors import InsightsError
    from insights.kpis import KPI_LABELS, REPORT_UNITS, kpi_definitions_text

    words = kpi_definitions_text(KpiDefinitions(cost_per_contact=COSTS, fcr={"window_days": 5}))
    assert "within 5 days" in words["fcr"] and "phone 5.00" in words["cost_per_resolved_issue"]
    assert "onboarding (< 90 days)" in words["journey_stage"]
    assert set(KPI_LABELS) == set(REPORT_UNITS) == set(words) - {"journey_stage"}
    assert issubclass(KpiError, InsightsError)
