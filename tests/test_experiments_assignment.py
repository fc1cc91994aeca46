"""Assignment: deterministic across processes, shares within sampling error, layers disjoint and independent,
the global holdout, and assign_many equal to assign key by key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from custintel.personal import Subject
from custintel.settings import Settings
from decisions.arbitration import CustomerState, decide, decide_batch
from decisions.policy import Purpose, load_policy
from experiments.assignment import BUCKETS, Assigner, bucket
from experiments.errors import ExperimentError
from experiments.spec import (
    ExperimentRegistry,
    RegisteredExperiment,
    example_spec_text,
    experiments_root,
    load_spec,
    parse_spec,
)
from serving import decision_log
from serving.decision_log import DecisionLog, Exposure, decision_log_path, expire, new_decision_id, read_exposures
from serving.experiments import ExperimentSource, holdout_decision
from serving.personal import DecisionLogStore
from tests.test_decisions_properties import worlds

KEYS = [f"CUST-{i:06d}" for i in range(100_000)]


def make(registry: ExperimentRegistry, name: str, layer: str, traffic: float, arms: dict[str, float]) -> None:
    registry.register(
        parse_spec({
            "name": name, "hypothesis": "h", "layer": layer, "traffic": traffic,
            "metrics": [{"name": "conversion", "kind": "proportion", "event": "conversion", "primary": True}],
            "arms": [{"name": a, "share": s} for a, s in arms.items()], "control": next(iter(arms)),
        })
    )  # fmt: skip
    registry.launch(name)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RegisteredExperiment]]:
    root = tmp_path_factory.mktemp("assign") / "experiments"
    registry = ExperimentRegistry(root)
    make(registry, "three-way", "offers", 0.6, {"control": 0.2, "b": 0.3, "c": 0.5})
    make(registry, "small", "offers", 0.2, {"control": 0.5, "treatment": 0.5})
    make(registry, "prices", "pricing", 1.0, {"control": 0.5, "treatment": 0.5})
    return root, registry.list()


@pytest.fixture(scope="module")
def table(launched: tuple[Path, list[RegisteredExperiment]]) -> pd.DataFrame:
    return Assigner(launched[1]).assign_many(KEYS)


def test_bucket_is_the_documented_hash() -> None:
    expected = int(hashlib.sha256(b"offers:CUST-000001").hexdigest()[:8], 16) % 10_000
    assert bucket("offers", "CUST-000001") == expected and BUCKETS == 10_000


def test_the_same_key_gets_the_same_arm_in_another_process(
    launched: tuple[Path, list[RegisteredExperiment]], table: pd.DataFrame
) -> None:
    root, _ = launched
    keys = KEYS[:300]
    code = (
        "import json, sys\n"
        "from experiments.assignment import Assigner\n"
        "from experiments.spec import ExperimentRegistry\n"
        f"a = Assigner(ExperimentRegistry(__import__('pathlib').Path({str(root)!r})).list())\n"
        "keys = json.loads(sys.stdin.read())\n"
        "print(json.dumps([[(x.experiment, x.version, x.arm, x.layer) for x in a.assign(k)] for k in keys]))\n"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}  # a different str hash seed: no effect on arms
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True,
                         check=True, cwd=root.parent, env=env)  # fmt: skip
    other = json.loads(out.stdout)
    here = Assigner(launched[1])
    assert other == [[list(t) for t in ((x.experiment, x.version, x.arm, x.layer) for x in here.assign(k))]
                     for k in keys]  # fmt: skip
    mine = table[table["key"].isin(keys)]
    flat = sorted((k, e, a) for k, row in zip(keys, other, strict=True) for e, _, a, _ in row)
    assert flat == sorted(zip(mine["key"], mine["experiment"], mine["arm"], strict=True))


def test_traffic_and_arm_shares_are_within_sampling_error(table: pd.DataFrame) -> None:
    n = len(KEYS)
    per = table.groupby("experiment").size()
    for name, share in (("three-way", 0.6), ("small", 0.2), ("prices", 1.0)):
        assert abs(per[name] / n - share) < 4 * np.sqrt(share * (1 - share) / n) + 1e-9
    halves = {"control": 0.5, "treatment": 0.5}
    for name, shares in (("three-way", {"control": 0.2, "b": 0.3, "c": 0.5}), ("small", halves), ("prices", halves)):
        counts = table[table["experiment"] == name]["arm"].value_counts()
        observed = np.array([counts[a] for a in shares])
        expected = np.array(list(shares.values())) * observed.sum()
        assert stats.chisquare(observed, expected).pvalue > 0.001, (name, observed, expected)


def test_a_layer_never_gives_a_customer_two_experiments(table: pd.DataFrame) -> None:
    offers = table[table["layer"] == "offers"]
    assert not offers["key"].duplicated().any()
    assert table.groupby("key")["layer"].nunique().max() == 2
    assert set(table.groupby("key").size().unique()) <= {1, 2}


def test_layers_are_independent(table: pd.DataFrame) -> None:
    """The pricing arm says nothing about the offers layer's experiment and arm: chi-square of the cross table."""
    wide = table.pivot_table(index="key", columns="layer", values="arm", aggfunc="first")
    offers = table[table["layer"] == "offers"].set_index("key")
    cell = (offers["experiment"] + "/" + offers["arm"]).reindex(wide.index).fillna("none")
    cross = pd.crosstab(cell, wide["pricing"])
    assert cross.shape == (6, 2)  # 3 + 2 arms, and outside both
    assert stats.chi2_contingency(cross.to_numpy()).pvalue > 0.001


def test_the_global_holdout_takes_its_share_from_every_experiment(launched: tuple[Path, list]) -> None:
    assigner = Assigner(launched[1], holdout=0.1)
    held = np.array([assigner.holdout(k) for k in KEYS[:20_000]])
    assert abs(held.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 20_000)
    frame = assigner.assign_many(KEYS[:20_000])
    held_keys = {k for k, h in zip(KEYS, held, strict=False) if h}
    assert held_keys and not held_keys & set(frame["key"])
    assert all(assigner.assign(k) == [] for k in list(held_keys)[:50])
    plain = Assigner(launched[1]).assign_many(KEYS[:20_000])
    kept = plain[~plain["key"].isin(held_keys)].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, kept)  # the holdout removes customers, it never moves them
    with pytest.raises(ExperimentError, match="holdout: 0.6 is not a share"):
        Assigner(launched[1], holdout=0.6)
    assert not Assigner(launched[1]).holdout(KEYS[0])


def test_assign_many_matches_assign(launched: tuple[Path, list]) -> None:
    assigner = Assigner(launched[1], holdout=0.05)
    keys = KEYS[:2000]
    rows = [(k, a.experiment, a.version, a.arm, a.layer) for k in keys for a in assigner.assign(k)]
    frame = assigner.assign_many(keys)
    assert list(frame.columns) == ["key", "experiment", "version", "arm", "layer"]
    assert sorted(rows) == sorted(frame.itertuples(index=False, name=None))
    assert assigner.assign_many([]).empty and Assigner([]).assign(KEYS[0]) == []


def test_drafts_and_stopped_experiments_assign_nobody(tmp_path: Path) -> None:
    registry = ExperimentRegistry(tmp_path)
    make(registry, "gone", "x", 1.0, {"control": 0.5, "t": 0.5})
    registry.stop("gone")
    registry.register(parse_spec({"name": "draft", "hypothesis": "h", "arms": [{"name": "control", "share": 1 / 3},
                      {"name": "t", "share": 2 / 3}], "metrics": [{"name": "m", "kind": "mean", "column": "m",
                      "primary": True}]}))  # fmt: skip
    assert Assigner(registry.list()).assign_many(KEYS[:100]).empty


def test_assign_many_speed(launched: tuple[Path, list]) -> None:
    """100k keys through three experiments in two layers and a holdout: about 1 µs per hash (four per key)."""
    assigner = Assigner(launched[1], holdout=0.05)
    start = time.perf_counter()
    frame = assigner.assign_many(KEYS)
    seconds = time.perf_counter() - start
    assert len(frame) > 150_000
    assert seconds < 5.0, f"{seconds:.2f} s for 100k keys"


# --- serving: withheld actions, exposures in the decision log, access and erasure, retention ------------------------

TODAY = dt.date(2026, 12, 1)


def _state(key: str, uplift: float = 0.3) -> CustomerState:
    consent: dict[Purpose, bool] = {"profiling": True, "marketing": True, "analytics": True}
    return CustomerState(customer_key=key, consent=consent, uplift=uplift, churn_risk=0.4,
                         propensity={"ADD-STREAM": 0.05}, signals={"yearly_value": 500.0})  # fmt: skip


def test_a_withheld_action_is_never_chosen_and_the_reason_says_why() -> None:
    policy = load_policy(None)
    why = {"retention_offer": "experiment retention-offer arm control withholds retention_offer"}
    free = decide(policy, _state("A"), "call_centre", TODAY, seed=1)
    assert free.actions[0].action == "retention_offer"
    held = decide(policy, _state("A"), "call_centre", TODAY, seed=1, withheld=why)
    assert held.actions[0].action != "retention_offer"
    assert "retention_offer" not in held.action_probabilities  # not even by exploration
    assert f"retention_offer: {why['retention_offer']}" in held.reasons
    states = [_state(f"K{i}") for i in range(40)]
    batch = decide_batch(policy, states, "email", TODAY, seed=3,
                         withheld={f"K{i}": why for i in range(0, 40, 2)})  # fmt: skip
    for i, d in enumerate(batch.decisions):
        if i % 2 == 0:
            assert "retention_offer" not in d.action_probabilities
            assert f"retention_offer: {why['retention_offer']}" in d.reasons
        else:
            assert d.actions[0].action == "retention_offer"
    assert decide(policy, _state("A"), "call_centre", TODAY, seed=1, withheld={"no_action": "x"}).actions


def _exposure(log: DecisionLog, key: str, arm: str, at: str, experiment: str = "retention-offer") -> Exposure:
    return Exposure(experiment, 1, arm, log.key(key), new_decision_id(), "email", at)


def test_exposures_keep_the_first_per_customer_are_found_erased_and_expire(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    path = decision_log_path(settings)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as old:  # a log from before exposures existed: its tables as they were
        old.executescript(decision_log._SCHEMA.split("CREATE TABLE IF NOT EXISTS exposures")[0])
    assert read_exposures(settings).empty
    old_store = DecisionLogStore(settings)
    assert old_store.find([Subject("r0", ("CK1",))]) == []
    log = DecisionLog(path, "hash", settings.serving_log_salt or "custintel")  # migrates: CREATE TABLE IF NOT EXISTS
    log.write([], [_exposure(log, "CK1", "control", "2026-10-01T09:00:00+00:00"),
                   _exposure(log, "CK2", "treatment", "2026-11-20T09:00:00+00:00"),
                   _exposure(log, "CK1", "control", "2026-11-21T09:00:00+00:00", "other")])  # fmt: skip
    log.write([], [_exposure(log, "CK1", "treatment", "2026-11-25T09:00:00+00:00")])  # a later one: ignored
    frame = read_exposures(settings, "retention-offer")
    assert list(frame.columns) == ["experiment", "version", "arm", "customer_key", "decision_id", "channel",
                                   "exposed_at"]  # fmt: skip
    assert list(frame["arm"]) == ["control", "treatment"] and frame["customer_key"].iloc[0] == log.key("CK1")
    assert "CK1" not in set(frame["customer_key"])  # hashed like the decision log's keys
    assert len(read_exposures(settings)) == 3

    store = DecisionLogStore(settings)
    found = store.find([Subject("r1", ("CK1",))])
    rows = [r for h in found for r in h.rows if r["table"] == "exposures"]
    assert sorted(r["experiment"] for r in rows) == ["other", "retention-offer"]
    erased = store.erase([Subject("r1", ("CK1",))])
    assert erased and "2 exposures deleted" in erased[0].detail
    assert list(read_exposures(settings)["customer_key"]) == [log.key("CK2")]
    assert store.find([Subject("r1", ("CK1",))]) == []

    expiry = expire(path, dt.date(2026, 11, 21), dry_run=True)
    assert [i.count for i in expiry.removed] == [1] and read_exposures(settings).shape[0] == 1
    expire(path, dt.date(2026, 11, 21))
    assert read_exposures(settings).empty


def test_the_service_source_assigns_launched_experiments_and_drops_a_tampered_one(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", experiments_holdout=0.2, serving_poll_seconds=1000)
    registry = ExperimentRegistry(experiments_root(settings.home_dir))
    registry.register(load_spec(example_spec_text()))
    source = ExperimentSource(settings)
    assert source.assigner.experiments == []  # a draft assigns nobody
    registry.launch("retention-offer")
    assert source.refresh() == "retention-offer v1"
    assert source.refresh() is None  # nothing changed on disk
    placed = source.place(KEYS[:2000])
    held = [k for k, p in placed.items() if p.held_out]
    assert 0.15 < len(held) / 2000 < 0.25 and all(not placed[k].assignments for k in held)
    control = [p for p in placed.values() if p.assignments and p.assignments[0].arm == "control"]
    treated = [p for p in placed.values() if p.assignments and p.assignments[0].arm == "treatment"]
    assert control and treated and len(control) + len(treated) + len(held) == 2000
    assert control[0].withheld == {
        "retention_offer": "experiment retention-offer arm control withholds retention_offer"
    }
    assert control[0].refs() == [{"experiment": "retention-offer", "version": 1, "arm": "control"}]
    assert all(not p.withheld for p in treated)
    spec_file = registry.get("retention-offer").path
    spec_file.write_text(spec_file.read_text().replace("traffic: 1.0", "traffic: 0.5"))
    source.refresh()
    assert source.assigner.experiments == [] and "changed after launch" in (source.degraded or "")
    decision = holdout_decision(load_policy(None), "CK1", "web", None)
    assert decision.fallback and decision.fallback_reason == "global holdout" and decision.probability == 1.0
    assert decision.actions[0].action == "no_action" and decision.action_probabilities == {"no_action": 1.0}


def test_the_holdout_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTINTEL_EXPERIMENTS_HOLDOUT", "0.1")
    assert Settings().experiments_holdout == 0.1
    monkeypatch.setenv("CUSTINTEL_EXPERIMENTS_HOLDOUT", "0.7")
    with pytest.raises(ValueError, match="experiments_holdout"):
        Settings()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(worlds(), st.data())
def test_withheld_actions_batch_equals_single_and_never_appear(world: tuple, data: st.DataObject) -> None:
    """Random customers and arms' withholdings: the batch replays each single decision, and no withheld action is
    chosen or given a probability (the decision log's distribution stays one OPE can use)."""
    policy, batch, channel, seed, _ = world
    names = [a.name for a in policy.actions if a.kind != "none"]
    withheld = {
        s.customer_key: {
            a: f"experiment x arm control withholds {a}" for a in data.draw(st.sets(st.sampled_from(names)))
        }
        for s in batch
    }
    seeds = [seed + i for i in range(len(batch))]
    result = decide_batch(policy, batch, channel, TODAY, seed=0, seeds=seeds, capacity={channel: len(batch)},
                          withheld=withheld)  # fmt: skip
    for state, d, s in zip(batch, result.decisions, seeds, strict=True):
        single = decide(policy, state, channel, TODAY, seed=s, withheld=withheld[state.customer_key])
        assert dataclasses.asdict(d) == dataclasses.asdict(single)
        gone = set(withheld[state.customer_key])
        assert not gone & set(d.action_probabilities) and not gone & {c.action for c in d.actions}
        on_channel = {a.name for a in policy.actions if channel in a.channels}
        for action in gone & on_channel:
            assert f"{action}: experiment x arm control withholds {action}" in d.reasons
