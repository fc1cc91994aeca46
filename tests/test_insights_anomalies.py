"""Source anomalies (issue 24, item 6): an injected outage is caught, a normal drop raises nothing.

The small session world (tests/conftest.py) is checked clean, then a copy of its drop with an injected
outage (a day of digital events missing, a CRM column and a support column emptied from a date, a spike
of digital events) is ingested and checked against the outage's recorded truth. False positives are
measured on day slices of the clean world: drops cut every twelve weeks, each judged like a first drop.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custintel.settings import Settings
from features.contracts import load_contracts
from features.lake import ingest_drop, lake_files
from features.synthetic.outage import (
    EmptyColumn,
    InjectedDefect,
    MissingDay,
    OutageError,
    VolumeSpike,
    inject_outage,
    read_outage_truth,
)
from insights.anomalies import (
    Acknowledged,
    Anomaly,
    AnomalyError,
    AnomalyPolicy,
    SourcesStopped,
    TableProfile,
    apply_policy,
    check_sources,
    check_table,
    latest_anomaly_report,
    load_anomaly_policy,
    page_rows,
    profile_lake,
    profile_root,
    raise_if_stopped,
    save_anomaly_report,
    slice_profile,
    stored_profiles,
    synthetic_world_policy,
)

TIME_TABLES = [
    "crm_accounts",
    "billing_accounts",
    "billing_transactions",
    "support_tickets",
    "digital_events",
    "nps_responses",
    "consent_events",
    "northwind_customers",
    "northwind_consents",
]


def _copy_home(src: Settings, dst: Path) -> Settings:
    shutil.copytree(src.home_dir, dst)
    return Settings(home=dst)


@pytest.fixture(scope="module")
def clean(ingested, tmp_path_factory):
    settings = _copy_home(ingested.settings, tmp_path_factory.mktemp("anomaly-clean") / "home")
    return settings, check_sources(settings, synthetic_world_policy(ingested.world.cfg))


@pytest.fixture(scope="module")
def outage(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("anomaly-outage")
    drop = root / "drop"
    shutil.copytree(world.path, drop, ignore=shutil.ignore_patterns("_truth"))
    end = world.cfg.window_end
    monday = end - dt.timedelta(days=end.weekday()) - dt.timedelta(weeks=14)
    defects = [
        MissingDay("digital_events", end - dt.timedelta(days=58)),
        VolumeSpike("digital_events", end - dt.timedelta(days=85), factor=3),
        EmptyColumn("crm_accounts", "email", monday),
        EmptyColumn("support_tickets", "resolution", end - dt.timedelta(days=45)),
    ]
    inject_outage(drop, defects)
    settings = Settings(home=root / "home")
    ingest_drop(drop, settings)
    return drop, settings, check_sources(settings, synthetic_world_policy(world.cfg))


def _matches(defect: InjectedDefect, a: Anomaly) -> bool:
    kind = {"missing_day": "volume", "volume_spike": "volume", "empty_column": "null_rate"}[defect.kind]
    if (a.table, a.column, a.kind) != (defect.table, defect.column, kind) or a.day is None or a.until is None:
        return False
    if a.period == "day" and a.day != defect.day:
        return False
    return a.day <= defect.day <= a.until


def test_injected_outage_is_caught_on_the_right_table_column_and_day(outage) -> None:
    drop, _, report = outage
    truth = read_outage_truth(drop)
    assert {d.kind for d in truth} == {"missing_day", "volume_spike", "empty_column"}
    for defect in truth:
        hits = [a for a in report.anomalies if _matches(defect, a)]
        assert hits, f"{defect} not caught; found: {report.lines()}"
    # and nothing else: every anomaly is one of the injected defects
    extra = [a for a in report.anomalies if not any(_matches(d, a) for d in truth)]
    assert extra == [], "\n".join(a.message for a in extra)
    missing = next(a for a in report.anomalies if a.kind == "volume" and a.observed == 0)
    assert missing.severity == "high" and "digital_events: no rows per day on" in missing.message
    emptied = next(a for a in report.anomalies if a.column == "email")
    assert (
        emptied.period == "week"
        and emptied.observed == 1.0
        and "crm_accounts.email is empty in every row" in (emptied.message)
    )
    assert report.action == "warn" and not report.stop


def test_a_normal_drop_raises_nothing(clean) -> None:
    settings, report = clean
    assert report.anomalies == [], "\n".join(report.lines())
    assert report.action == "none"
    acknowledged = {(a.table, a.kind) for a, _ in report.acknowledged}
    assert acknowledged <= {("billing_accounts", "volume"), ("crm_accounts", "volume"), ("consent_events", "volume")}
    assert set(report.drops) >= set(TIME_TABLES) | {"product_catalogue"}
    assert any("product_catalogue: no time column" in n for n in report.notes)


def test_false_positive_rate_on_day_slices(clean, world) -> None:
    """Drops cut every twelve weeks from month four on, each table judged like a first drop (35 days)."""
    settings, _ = clean
    policy = synthetic_world_policy(world.cfg, first_drop_days=35)
    checked, found = 0, []
    for table in TIME_TABLES:
        profile = stored_profiles(settings, table)[-1]
        day = world.cfg.window_start + dt.timedelta(days=100)
        while day < world.cfg.window_end - dt.timedelta(days=28):
            checked += 1
            found += [a for a in check_table(slice_profile(profile, day), [], policy)
                      if not any(k.covers(a) for k in policy.acknowledged)]  # fmt: skip
            day += dt.timedelta(weeks=12)
    rate = len({(a.table, a.drop_id) for a in found}) / checked
    print(f"false positives: {len(found)} anomalies in {checked} table-slices ({rate:.1%} of slices)")
    assert checked >= 45
    assert rate <= 0.03, "\n".join(a.message for a in found)


def test_stop_policy_stops_the_build_on_a_high_anomaly(outage, world) -> None:
    _, settings, report = outage
    latest = save_anomaly_report(settings, report)
    assert save_anomaly_report(settings, report) == latest  # the same check: saved once
    assert len((latest.parent / "history.jsonl").read_text().splitlines()) == 1
    assert (
        check_sources(settings, synthetic_world_policy(world.cfg)) == report
    )  # the same drops and policy: the saved report
    assert latest_anomaly_report(settings) == report
    rows = page_rows(report)
    assert {r.severity for r in rows} == {"critical", "warning"} and rows[0].message == report.anomalies[0].message
    shown = json.loads(latest.read_text())
    assert shown["action"] == "warn" and len(shown["anomalies"]) == len(report.anomalies)
    assert {"drop_id", "table", "column", "day", "kind", "observed", "expected", "severity", "message"} <= set(
        shown["anomalies"][0]
    )
    stopped = apply_policy(report, synthetic_world_policy(world.cfg, action="stop"))
    assert stopped.stop and stopped.action == "stop" and len(stopped.anomalies) == len(report.anomalies)
    assert apply_policy(report, synthetic_world_policy(world.cfg, action="stop", stop_on=[])).action == "warn"
    everything = [Acknowledged(table=a.table, start=dt.date(2000, 1, 1), end=dt.date(2100, 1, 1), reason="known")
                  for a in report.anomalies]  # fmt: skip
    known = synthetic_world_policy(world.cfg).acknowledged
    quiet = apply_policy(report, synthetic_world_policy(world.cfg, action="stop", acknowledged=known + everything))
    with pytest.raises(
        SourcesStopped, match=r"features not built: 4 source anomalies and the anomaly policy says stop"
    ):
        raise_if_stopped(stopped)
    assert raise_if_stopped(report) is report
    assert quiet.action == "none" and len(quiet.acknowledged) == len(report.anomalies) + len(report.acknowledged)


def test_empty_table_missing_table_and_table_without_time_column(clean, drop_copy, tmp_path, world) -> None:
    """A later drop: consent export empty (header only), the acquired company's folder missing."""
    settings = _copy_home(clean[0], tmp_path / "home")
    drop = drop_copy("later")
    consent = drop / "consent" / "consent_events.csv"
    consent.write_text(consent.read_text().splitlines()[0] + "\n")
    shutil.rmtree(drop / "northwind")
    ingest_drop(drop, settings, export_date=world.cfg.window_end + dt.timedelta(days=7))
    report = check_sources(settings, synthetic_world_policy(world.cfg))
    by_kind = {(a.kind, a.table): a for a in report.anomalies}
    empty = by_kind[("empty_table", "consent_events")]
    assert empty.severity == "high" and "consent_events: drop" in empty.message and "landed no rows" in empty.message
    for table in ("northwind_customers", "northwind_consents"):
        gone = by_kind[("missing_table", table)]
        assert f"has no {table}" in gone.message and gone.severity == "high"
    # the catalogue (no time column) is now compared with its previous drop: unchanged, so nothing
    assert not [a for a in report.anomalies if a.table == "product_catalogue"]
    # the drop adds a week with no rows at all: every dated table says its latest days are missing
    assert ("volume", "digital_events") in by_kind
    assert len(stored_profiles(settings, "product_catalogue")) == 2


def test_profiles_keep_no_value_that_identifies_a_person(clean) -> None:
    settings, _ = clean
    contracts = load_contracts()
    for table in TIME_TABLES:
        contract = contracts.get(table)
        personal = {c.name for c in contract.columns if c.data_class in ("direct_identifier", "quasi_identifier")}
        profile = stored_profiles(settings, table)[-1]
        assert not personal & set(profile.values["column"]), table
        meta = json.loads((profile_root(settings) / table / profile.drop_id / "profile.json").read_text())
        assert not [
            c for c in personal if "shares" in meta["columns"].get(c, {}) or "quantiles" in meta["columns"].get(c, {})
        ]
    crm = pd.concat(pd.read_parquet(f, columns=["email"]) for f in lake_files(settings, "crm_accounts"))[
        "email"
    ].dropna()
    text = "".join(p.read_bytes().hex() for p in (profile_root(settings) / "crm_accounts").rglob("*.parquet"))
    assert not any(e.encode().hex() in text for e in crm.head(50))


def _profile(counts: list[int], nulls: list[int] | None = None, as_of: dt.date | None = None) -> TableProfile:
    start = dt.date(2025, 1, 6)
    days = pd.to_datetime([start + dt.timedelta(days=i) for i in range(len(counts))])
    nulls = nulls or [0] * len(counts)
    return TableProfile(
        table="events",
        drop_id="20250501-test",
        as_of=as_of or (start + dt.timedelta(days=len(counts) + 2)),
        time_column="t",
        rows=sum(counts),
        quarantined=0,
        volume=pd.DataFrame({"day": days, "rows": counts}),
        nulls=pd.DataFrame({"day": days, "column": "c", "rows": counts, "nulls": nulls}),
        values=pd.DataFrame({"day": [], "column": [], "bucket": [], "count": []}),
    )


@pytest.mark.parametrize(
    ("day", "value", "kind", "observed"),
    [(70, 0, "volume", 0.0), (72, 1500, "volume", 1500.0), (75, 80, "volume", 80.0)],
)
def test_volume_check_on_a_tiny_series(day, value, kind, observed) -> None:
    rng = np.random.default_rng(3)
    counts = [int(c) for c in rng.poisson(500, 90)]
    counts[day] = value
    found = check_table(_profile(counts), [], AnomalyPolicy(first_drop_days=None))
    assert [(a.kind, a.observed, a.day) for a in found] == [
        (kind, observed, dt.date(2025, 1, 6) + dt.timedelta(days=day))
    ]


def test_null_rate_check_reports_the_onset_once() -> None:
    rng = np.random.default_rng(4)
    counts = [int(c) for c in rng.poisson(300, 90)]
    nulls = [int(rng.binomial(c, 0.05)) if i < 60 else c for i, c in enumerate(counts)]
    found = check_table(_profile(counts, nulls), [], AnomalyPolicy(first_drop_days=None))
    assert len(found) == 1
    a = found[0]
    assert (a.kind, a.column, a.day, a.severity) == ("null_rate", "c", dt.date(2025, 3, 7), "high")
    assert a.until is not None and a.until >= dt.date(2025, 4, 1)


def test_a_day_is_compared_with_the_previous_drop_that_held_it() -> None:
    rng = np.random.default_rng(5)
    counts = [int(c) for c in rng.poisson(400, 90)]
    old = _profile(counts, as_of=dt.date(2025, 4, 1))
    restated = list(counts)
    restated[30] = counts[30] // 4  # a day the earlier drop held in full
    new = _profile(restated)
    found = check_table(new, [old], AnomalyPolicy())
    assert [(a.day, a.kind) for a in found] == [(dt.date(2025, 2, 5), "volume")]
    assert "previous drop" in found[0].message


def test_bad_policy_and_empty_lake_are_named(tmp_path, new_settings) -> None:
    bad = tmp_path / "anomalies.yaml"
    bad.write_text("action: shout\n")
    with pytest.raises(AnomalyError, match=r"anomalies.yaml: action"):
        load_anomaly_policy(bad)
    with pytest.raises(AnomalyError, match="nothing has been ingested"):
        check_sources(new_settings("empty"))


def test_bad_time_column_is_named(clean) -> None:
    settings, _ = clean
    policy = AnomalyPolicy.model_validate({"tables": {"support_tickets": {"time_column": "closed_on"}}})
    shutil.rmtree(profile_root(settings) / "support_tickets")
    try:
        with pytest.raises(AnomalyError, match=r"tables.support_tickets.time_column: closed_on is not a column"):
            profile_lake(settings, policy)
    finally:
        assert profile_lake(settings, load_anomaly_policy())  # profiled again for the other tests


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        (MissingDay("web_hits", dt.date(2025, 1, 1)), "no contract for table web_hits"),
        (EmptyColumn("crm_accounts", "fax", dt.date(2025, 1, 1)), "crm_accounts has no column fax"),
        (MissingDay("digital_events", dt.date(2031, 1, 1)), "no rows dated 2031-01-01"),
    ],
)
def test_outage_bad_input_is_named(drop_copy, defect, message) -> None:
    with pytest.raises(OutageError, match=message):
        inject_outage(drop_copy(), [defect])


def test_slicing_a_table_without_time_column_is_refused(clean) -> None:
    settings, _ = clean
    with pytest.raises(AnomalyError, match="product_catalogue has no time column"):
        slice_profile(stored_profiles(settings, "product_catalogue")[-1], dt.date(2025, 1, 1))


def test_distribution_check_finds_a_new_mix_and_ignores_noise() -> None:
    rng = np.random.default_rng(6)
    counts = [int(c) for c in rng.poisson(800, 90)]
    profile = _profile(counts)
    rows = []
    for i, n in enumerate(counts):
        shares = [0.6, 0.3, 0.1] if i < 75 else [0.2, 0.3, 0.5]  # a mapping change from day 75 on
        for bucket, k in zip(["web", "app", "store"], rng.multinomial(n, shares), strict=True):
            rows.append({"day": profile.volume["day"][i], "column": "channel", "bucket": bucket, "count": int(k)})
    shifted = replace(profile, values=pd.DataFrame(rows))
    found = check_table(shifted, [], AnomalyPolicy(first_drop_days=None))
    assert [(a.kind, a.column, a.day) for a in found] == [("distribution", "channel", dt.date(2025, 3, 22))]
    assert found[0].observed >= 0.25 and found[0].until == dt.date(2025, 4, 5)
    calm = pd.DataFrame([r for r in rows if r["day"] < pd.Timestamp("2025-03-22")])
    assert check_table(replace(profile, values=calm), [], AnomalyPolicy(first_drop_days=None)) == []
