"""The synthetic world generator: determinism, truth consistency and knobs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.synthetic import WorldConfig, generate_world
from features.synthetic.behaviour import simulate_behaviour
from features.synthetic.people import simulate_persons
from features.synthetic.sources import SOURCE_FILES
from tests.conftest import World, tree_digest

# --------------------------------------------------------------------------------------------
# helpers


def read_source(world: World, table: str) -> pd.DataFrame:
    """A source file as exported, every CSV value as text ('' for empty)."""
    rel, fmt, sep = SOURCE_FILES[table]
    if fmt == "parquet":
        return pd.read_parquet(world.path / rel)
    return pd.read_csv(world.path / rel, sep=sep, dtype=str, keep_default_na=False)


def injected_rows(world: World, table: str) -> set[int]:
    """1-based data row numbers of the rows deliberately broken (or duplicated) in a table."""
    inj = world.truth_frame("injected_errors")
    return set(inj.loc[inj["table"] == table, "row_number"].astype(int))


def clean_rows(world: World, table: str) -> pd.DataFrame:
    """A source file without the rows listed in the truth's injected errors."""
    raw = read_source(world, table)
    bad = injected_rows(world, table)
    keep = ~pd.Series(np.arange(1, len(raw) + 1), index=raw.index).isin(bad)
    return raw[keep]


def record_person(world: World, table: str) -> pd.Series:
    """record_id -> person_id for one source table, from the truth."""
    sr = world.truth_frame("source_records")
    sub = sr[sr["source_table"] == table]
    return sub.set_index("record_id")["person_id"]


# --------------------------------------------------------------------------------------------
# 1. determinism

TINY = {"customers": 1100, "chunk_size": 1000}  # two chunks, the second one partial (chunk_size >= 1000)


def test_same_config_gives_byte_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(WorldConfig(seed=5, **TINY), a)
    generate_world(WorldConfig(seed=5, **TINY), b)
    generate_world(WorldConfig(seed=6, **TINY), c)
    da, db, dc = tree_digest(a), tree_digest(b), tree_digest(c)

    expected_sources = {rel for rel, _, _ in SOURCE_FILES.values()}
    assert expected_sources <= set(da), "every source file is written"
    assert {f"_truth/{n}.parquet" for n in ("persons", "source_records", "injected_errors")} <= set(da)
    assert "manifest.json" in da and "_truth/manifest.json" in da
    assert da == db, "same config must give the same bytes, sources and truth alike"

    assert set(dc) == set(da)
    # The product catalogue is static reference data; everything simulated must change with the seed.
    simulated = [rel for rel in da if rel != SOURCE_FILES["product_catalogue"][0] and not rel.endswith("manifest.json")]
    same = [rel for rel in simulated if da[rel] == dc[rel]]
    assert not same, f"a different seed left these files unchanged: {same}"


# --------------------------------------------------------------------------------------------
# 2. truth consistency


@pytest.mark.parametrize(
    ("table", "key", "role"),
    [
        ("crm_accounts", "crm_id", {"crm_primary", "crm_duplicate"}),
        ("billing_accounts", "billing_account_id", {"billing"}),
        ("northwind_customers", "CUST_NO", {"acquired"}),
    ],
)
def test_identity_records_map_to_exactly_one_true_person(world: World, table: str, key: str, role: set[str]) -> None:
    sr = world.truth_frame("source_records")
    persons = world.truth_frame("persons")
    recs = sr[sr["source_table"] == table]
    assert len(recs) > 0
    assert recs["record_id"].is_unique, "a record id must belong to one person only"
    assert set(recs["role"]) == role
    assert recs["person_id"].isin(persons["person_id"]).all()

    raw = read_source(world, table)
    assert len(raw) == len(recs), "the file has one row per truth record"
    clean = clean_rows(world, table)
    ids = clean[key]
    assert (ids != "").all()
    assert ids.is_unique
    assert set(ids) <= set(recs["record_id"]), "every record in the file is known to the truth"
    # Only rows whose key was deliberately blanked are missing from the file's key column.
    inj = world.truth_frame("injected_errors")
    blanked = inj[(inj["table"] == table) & (inj["kind"] == "missing_key")]
    assert len(set(recs["record_id"]) - set(raw[key])) == len(blanked)


def test_every_person_has_a_primary_crm_record(world: World) -> None:
    sr = world.truth_frame("source_records")
    persons = world.truth_frame("persons")
    crm = sr[sr["source_table"] == "crm_accounts"]
    primaries = crm[crm["role"] == "crm_primary"]
    assert primaries["person_id"].is_unique
    assert set(primaries["person_id"]) == set(persons["person_id"])
    assert len(persons) == world.cfg.customers
    assert persons["person_id"].is_unique


def _activity(world: World) -> pd.DataFrame:
    """Support tickets, digital events, NPS responses and billing transactions as (source, person, time)."""
    crm = record_person(world, "crm_accounts")
    billing = record_person(world, "billing_accounts")
    parts = []
    t = clean_rows(world, "support_tickets")
    parts.append(("support_tickets", t["crm_id"].map(crm), pd.to_datetime(t["opened_at"], format="%Y-%m-%d %H:%M:%S")))
    e = clean_rows(world, "digital_events")
    e = e[e["crm_id"].notna()]
    parts.append(("digital_events", e["crm_id"].map(crm), e["event_time"].dt.tz_convert(None)))
    n = clean_rows(world, "nps_responses")
    parts.append(("nps_responses", n["crm_id"].map(crm), pd.to_datetime(n["survey_date"], format="%m/%d/%Y")))
    x = clean_rows(world, "billing_transactions")
    parts.append(
        (
            "billing_transactions",
            x["billing_account_id"].map(billing),
            pd.to_datetime(x["txn_time"], format="%Y-%m-%dT%H:%M:%SZ"),
        )
    )
    frames = []
    for name, person, time in parts:
        assert person.notna().all(), f"{name}: every activity row routes to a known record"
        frames.append(pd.DataFrame({"source": name, "person_id": person.astype("int64"), "time": time}))
    return pd.concat(frames, ignore_index=True)


def test_churned_persons_have_no_activity_after_churn(world: World) -> None:
    persons = world.truth_frame("persons")
    assert persons["churned"].any() and (~persons["churned"]).any()
    assert (persons["churned"] == persons["churn_date"].notna()).all()
    churned = persons.loc[persons["churned"], ["person_id", "churn_date"]]

    act = _activity(world).merge(churned, on="person_id")
    assert set(act["source"]) == {"support_tickets", "digital_events", "nps_responses", "billing_transactions"}, (
        "churned persons do have activity before churning; the check must not be vacuous"
    )
    after = act[act["time"].dt.normalize() > act["churn_date"]]
    assert after.empty, f"activity after churn:\n{after.head(10)}"


def test_duplicate_rate_roughly_respected(world: World) -> None:
    sr = world.truth_frame("source_records")
    crm = sr[sr["source_table"] == "crm_accounts"]
    per_person = crm.groupby("person_id").size()
    share = float((per_person > 1).mean())
    assert abs(share - world.cfg.duplicate_rate) < 0.03, share
    assert per_person.max() <= 3


def test_acquired_persons_have_a_northwind_record(world: World) -> None:
    persons = world.truth_frame("persons")
    nw = record_person(world, "northwind_customers")
    acquired = set(persons.loc[persons["acquired"], "person_id"])
    assert acquired, "the world must contain acquired persons"
    assert set(nw) == acquired
    assert nw.is_unique, "one Northwind record per acquired person"
    assert (persons.loc[persons["acquired"], "acquisition_channel"] == "acquisition").all()


def test_offer_test_groups_balanced_and_match_truth(world: World) -> None:
    offer = read_source(world, "offer_test")
    persons = world.truth_frame("persons").set_index("person_id")
    te = world.truth_frame("treatment_effect").set_index("person_id")
    sr = world.truth_frame("source_records")
    primaries = sr[(sr["source_table"] == "crm_accounts") & (sr["role"] == "crm_primary")].set_index("record_id")

    assert len(offer) > 100
    assert offer["crm_id"].is_unique
    who = offer["crm_id"].map(primaries["person_id"])
    assert who.notna().all(), "offer test rows use the person's primary CRM id"
    in_test = set(te.index[te["in_test"]])
    assert set(who) == in_test, "the test contains exactly the truth's in_test persons"
    assert set(offer["group"]) == {"treatment", "control"}
    treated = offer["group"].eq("treatment").to_numpy()
    assert (te.loc[who, "treated"].to_numpy() == treated).all()
    share = treated.mean()
    assert 0.4 < share < 0.6, share
    assert (persons.loc[who, "segment"] != "premium").all()
    assert (~te["treated"] | te["in_test"]).all()


def test_truth_probabilities_are_valid(world: World) -> None:
    hz = world.truth_frame("churn_hazard")
    assert len(hz) > 0
    assert ((hz["hazard"] > 0) & (hz["hazard"] < 1)).all()
    assert not hz.duplicated(["person_id", "month"]).any()
    te = world.truth_frame("treatment_effect")
    for col in ("p_churn_if_control", "p_churn_if_treated"):
        assert te[col].between(0, 1).all()
    assert np.allclose(te["true_uplift"], te["p_churn_if_control"] - te["p_churn_if_treated"], atol=1e-5)


def test_churn_risk_is_a_probability_that_predicts_churn(world: World) -> None:
    risk = world.truth_frame("churn_risk")
    persons = world.truth_frame("persons")
    assert len(risk) > 0
    assert not risk.duplicated(["person_id", "month"]).any()
    assert risk["p_churn_1m"].between(0, 1).all() and risk["p_churn_3m"].between(0, 1).all()
    assert (risk["p_churn_3m"] >= risk["p_churn_1m"] - 1e-6).all()
    # Only months where the person was observed and not yet gone.
    month = pd.to_datetime(risk["month"])
    joined = risk.merge(persons[["person_id", "observed_from", "churn_date"]], on="person_id", how="left")
    assert (pd.to_datetime(joined["observed_from"]).dt.to_period("M") <= month.dt.to_period("M")).all()
    gone = joined["churn_date"].notna() & (joined["churn_date"] < month)
    assert not gone.any()
    # The risk agrees with the hazard on average and ranks who churns within three months.
    hz = world.truth_frame("churn_hazard").merge(risk, on=["person_id", "month"])
    assert abs(hz["hazard"].mean() - hz["p_churn_1m"].mean()) < 0.1 * hz["hazard"].mean()
    end = month + pd.DateOffset(months=3)
    churned = joined["churn_date"].notna() & (joined["churn_date"] >= month) & (joined["churn_date"] < end)
    complete = end <= pd.Timestamp(world.cfg.window_end)
    y, p = churned[complete].to_numpy(), risk["p_churn_3m"][complete].to_numpy()
    assert 0.02 < y.mean() < 0.12, y.mean()
    assert abs(p.mean() - y.mean()) < 0.2 * y.mean(), (p.mean(), y.mean())
    ranks = pd.Series(p).rank().to_numpy()
    auc = (ranks[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum())
    assert auc > 0.62, auc


def test_catalogue_is_broad_and_customers_buy_several_add_ons(world: World) -> None:
    catalogue = read_source(world, "product_catalogue")
    addons = catalogue[catalogue["is_plan"].str.lower() != "true"]
    assert len(addons) >= 40
    assert {"PLN-BASIC", "PLN-STD", "PLN-PLUS", "PLN-PREM", "ADD-STREAM"} <= set(catalogue["product_id"])
    assert addons["category"].nunique() >= 8
    assert (addons["is_recurring"].str.lower() == "false").sum() >= 5, "some add-ons are bought repeatedly"

    persons = world.truth_frame("persons")
    tx = clean_rows(world, "billing_transactions")
    bought = tx[tx["txn_type"] == "purchase"]
    per_person = bought["billing_account_id"].map(record_person(world, "billing_accounts")).value_counts()
    per_person = per_person.reindex(persons["person_id"], fill_value=0)
    assert per_person.mean() > 3, per_person.mean()
    assert (per_person >= 2).mean() > 0.5
    assert bought["product_id"].nunique() >= 40

    # Taste, not popularity, decides what a person buys: affinity of bought items beats the item's average.
    aff = world.truth_frame("product_affinity").dropna(subset=["affinity"])
    item_mean = aff.groupby("product_id")["affinity"].transform("mean")
    aff = aff.assign(personal=aff["affinity"] - item_mean)
    assert aff["personal"].std() > aff.groupby("product_id")["affinity"].mean().std()


# --------------------------------------------------------------------------------------------
# 3. knobs


def _persons(**kw: object) -> pd.DataFrame:
    """True persons with their simulated churn, for one chunk (the simulation half of generate_world).

    The knobs act in the simulation; rendering the source files adds nothing to these checks but time.
    """
    cfg = WorldConfig(**kw)  # type: ignore[arg-type]
    rng = np.random.default_rng([cfg.seed, 0])
    persons = simulate_persons(cfg, rng, 0, cfg.customers)
    return simulate_behaviour(cfg, rng, persons).persons


def test_drift_shifts_the_population_after_the_drift_date() -> None:
    base = {"customers": 4000, "chunk_size": 4000, "seed": 3}
    drift_date = dt.date(2025, 1, 1)
    plain = _persons(**base)
    drifted = _persons(drift_date=drift_date, drift_strength=1.0, **base)

    assert not plain["joined_after_drift"].any()
    after = drifted["signup_date"] >= pd.Timestamp(drift_date)
    assert (drifted["joined_after_drift"] == after).all()
    assert after.sum() > 300

    plain_after = plain[plain["signup_date"] >= pd.Timestamp(drift_date)]
    gap = drifted.loc[after, "price_sensitivity"].mean() - plain_after["price_sensitivity"].mean()
    assert gap > 0.4, gap  # the generator adds 0.7 * strength
    assert drifted.loc[after, "age_at_window_start"].mean() < plain_after["age_at_window_start"].mean() - 3
    # Persons who joined before the drift date are not shifted.
    before_gap = (
        drifted.loc[~after, "price_sensitivity"].mean()
        - plain.loc[plain["signup_date"] < pd.Timestamp(drift_date), "price_sensitivity"].mean()
    )
    assert abs(before_gap) < 0.15, before_gap


def test_bias_raises_churn_of_the_protected_group() -> None:
    base = {"customers": 4000, "chunk_size": 4000, "seed": 3}
    fair = _persons(**base)
    biased = _persons(bias_strength=2.0, **base)
    for p in (fair, biased):
        assert (p["protected"] == (p["gender"] == "F")).all()

    def rates(p: pd.DataFrame) -> tuple[float, float]:
        return float(p.loc[p["protected"], "churned"].mean()), float(p.loc[~p["protected"], "churned"].mean())

    fair_prot, fair_rest = rates(fair)
    bias_prot, bias_rest = rates(biased)
    assert abs(fair_prot / fair_rest - 1) < 0.2, (fair_prot, fair_rest)
    assert bias_prot / bias_rest > 1.4, (bias_prot, bias_rest)
    assert bias_prot - fair_prot > 0.1
    assert abs(bias_rest - fair_rest) < 0.05


@pytest.mark.parametrize(
    "overrides",
    [
        {"drift_date": dt.date(2023, 6, 1)},
        {"drift_date": dt.date(2026, 1, 1)},  # the export date itself is outside the window
        {"offer_test_date": dt.date(2025, 3, 15)},
        {"offer_test_date": dt.date(2030, 1, 1)},
        {"acquisition_date": dt.date(2023, 12, 31)},
        {"window_start": dt.date(2024, 1, 15)},
        {"customers": 5},
        {"chunk_size": 999},
        {"malformed_rate": 0.5},
        {"bias_attribute": "religion"},
        {"months": 5},
    ],
)
def test_invalid_config_raises_validation_error(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        WorldConfig(**overrides)  # type: ignore[arg-type]


def test_valid_config_window_end() -> None:
    cfg = WorldConfig(
        window_start=dt.date(2024, 11, 1),
        months=14,
        acquisition_date=dt.date(2025, 1, 1),
        offer_test_date=dt.date(2025, 6, 1),
        drift_date=dt.date(2025, 12, 31),
    )
    assert cfg.window_end == dt.date(2026, 1, 1)
    assert cfg.month_index(dt.date(2025, 2, 10)) == 3
