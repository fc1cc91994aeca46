"""Experiments through the real service: `/decide` and `/decide/batch` assign each customer to the launched
experiments' arms, withhold the control arm's action (said in the reasons), log the first exposure per customer and
experiment, answer the global holdout with the fallback; access and erasure requests cover the exposures; a spec
edited after launch is left out without stopping the service."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from custintel.personal import Subject
from custintel.settings import Settings
from decisions.policy import DecisionPolicy, load_policy
from experiments.assignment import Assigner
from experiments.spec import ExperimentRegistry, example_spec_text, experiments_root, load_spec, parse_spec
from serving.decision_log import decision_log_path, read_decisions, read_exposures, read_outcomes
from serving.inference_log import log_key
from serving.personal import DecisionLogStore
from tests.conftest import decision_home, start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "experiment-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HOLDOUT = 0.1
ERASED: list[str] = []  # the customer the erasure test erased (the analysis test reads the log after it)
WITHHOLDS = "retention_offer: experiment retention-offer arm control withholds retention_offer"


@dataclass
class Server:
    url: str
    settings: Settings
    known: list[str]
    policy: DecisionPolicy
    assigner: Assigner  # what the service should do, computed here
    registry: ExperimentRegistry

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=AUTH, timeout=60)

    def log_key(self, key: str) -> str | None:
        return log_key("hash", self.settings.serving_log_salt or "custintel", key)  # the service's default rule


@pytest.fixture(scope="module")
def server(featured: Settings, decision_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    prepared = decision_home(featured, decision_base, tmp_path_factory.mktemp("experimented"), call_centre=5000)
    home = prepared.settings.home_dir
    registry = ExperimentRegistry(experiments_root(home))
    registry.register(load_spec(example_spec_text()))
    registry.launch("retention-offer")
    # a second layer: half the customers, nothing withheld (both arms get the policy as it is)
    registry.register(parse_spec({
        "name": "prompt-wording", "hypothesis": "a warmer prompt converts more", "layer": "prompts", "traffic": 0.5,
        "metrics": [{"name": "conversion", "kind": "proportion", "event": "conversion", "primary": True}],
        "arms": [{"name": "control", "share": 0.5}, {"name": "warm", "share": 0.5}],
    }))  # fmt: skip
    registry.launch("prompt-wording")
    env = {
        "CUSTINTEL_HOME": str(home),
        "CUSTINTEL_DECISION_POLICY": str(prepared.policy_file),
        "CUSTINTEL_SERVING_API_KEYS": KEY,
        "CUSTINTEL_SERVING_POLL_SECONDS": "1",
        "CUSTINTEL_EXPERIMENTS_HOLDOUT": str(HOLDOUT),
    }
    process, url = start_service(env, home / "serve.log")
    try:
        yield Server(url, prepared.settings, prepared.known, load_policy(prepared.policy_file),
                     Assigner(registry.list(), holdout=HOLDOUT), registry)  # fmt: skip
    finally:
        process.terminate()
        process.wait(30)


def _expected(server: Server, key: str) -> list[dict[str, object]]:
    return [{"experiment": a.experiment, "version": a.version, "arm": a.arm} for a in server.assigner.assign(key)]


def test_decide_assigns_withholds_and_logs_the_first_exposure(server: Server) -> None:
    keys = server.known[:80]
    answers = {}
    for key in keys:
        r = server.post("/decide", {"customer_key": key, "channel": "call_centre"})
        assert r.status_code == 200, r.text
        answers[key] = r.json()
    decisions = read_decisions(server.settings).set_index("decision_id")
    arms: dict[str, list[str]] = {"control": [], "treatment": [], "held": []}
    for key, body in answers.items():
        assert body["experiments"] == _expected(server, key)
        probabilities = decisions.loc[body["decision_id"], "action_probabilities"]
        if server.assigner.holdout(key):
            arms["held"].append(key)
            assert body["experiments"] == [] and body["fallback"] and body["fallback_reason"] == "global holdout"
            assert [a["name"] for a in body["actions"]] == [server.policy.fallback] and body["probability"] == 1.0
            assert probabilities == {server.policy.fallback: 1.0}  # no exploration in the holdout
            continue
        arm = next(e["arm"] for e in body["experiments"] if e["experiment"] == "retention-offer")
        arms[arm].append(key)
        if arm == "control":
            assert WITHHOLDS in body["reasons"]
            assert "retention_offer" not in probabilities  # never chosen, not even by exploration
        else:
            assert not any("withholds" in reason for reason in body["reasons"])
    assert arms["held"] and arms["control"] and arms["treatment"]
    treated = [answers[k] for k in arms["treatment"]]
    offered = [b for b in treated if "retention_offer" in decisions.loc[b["decision_id"], "action_probabilities"]]
    assert offered, "some treated customers are eligible for the retention offer"

    exposures = read_exposures(server.settings)
    by_key = {server.log_key(k): k for k in keys}
    assert set(exposures["customer_key"]) == {server.log_key(k) for k in keys if not server.assigner.holdout(k)}
    for row in exposures.itertuples():
        key = by_key[row.customer_key]
        assert {"experiment": row.experiment, "version": row.version, "arm": row.arm} in _expected(server, key)
        assert row.decision_id == answers[key]["decision_id"] and row.channel == "call_centre"
    assert len(exposures) == sum(len(_expected(server, k)) for k in keys)

    again = server.post("/decide", {"customer_key": arms["control"][0], "channel": "web"})  # a second decision
    assert again.status_code == 200 and again.json()["experiments"] == _expected(server, arms["control"][0])
    later = read_exposures(server.settings, "retention-offer")
    first = later[later["customer_key"] == server.log_key(arms["control"][0])]
    assert len(first) == 1 and first["decision_id"].iloc[0] == answers[arms["control"][0]]["decision_id"]
    assert len(read_exposures(server.settings)) == len(exposures)  # the first exposure is kept, later ones ignored


def test_a_batch_assigns_every_customer_and_the_holdout_takes_no_capacity(server: Server) -> None:
    keys = server.known[100:400]
    r = server.post("/decide/batch", {"customer_keys": [*keys, "CK-UNKNOWN"], "channel": "email"})
    assert r.status_code == 200, r.text
    body = r.json()
    results = {d["customer_key"]: d for d in body["results"]}
    assert results["CK-UNKNOWN"]["status"] == "not_found" and results["CK-UNKNOWN"]["experiments"] == []
    held = [k for k in keys if server.assigner.holdout(k)]
    assert held
    for key in keys:
        d = results[key]
        assert d["experiments"] == _expected(server, key)
        if key in held:
            assert d["fallback_reason"] == "global holdout" and d["actions"][0]["name"] == server.policy.fallback
        elif {"experiment": "retention-offer", "version": 1, "arm": "control"} in _expected(server, key):
            assert WITHHOLDS in d["reasons"] and d["actions"][0]["name"] != "retention_offer"
    holdout_rows = [a for a in body["allocation"] if a["group"] == "global holdout"]
    assert holdout_rows == [{"action": server.policy.fallback, "channel": "email", "group": "global holdout",
                             "count": len(held), "capacity": None}]  # fmt: skip
    exposed = read_exposures(server.settings)
    mine = exposed[exposed["customer_key"].isin({server.log_key(k) for k in keys})]
    assert len(mine) == sum(len(_expected(server, k)) for k in keys)
    assert set(mine["decision_id"]) <= {d["decision_id"] for d in body["results"]}


def test_an_erased_customer_leaves_the_exposures_and_the_analysis_still_runs(server: Server) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    def cli(*args: str) -> object:
        return CliRunner().invoke(app, ["--home", str(server.settings.home_dir), *args])

    key = next(k for k in server.known[500:] if _expected(server, k))
    r = server.post("/decide", {"customer_key": key, "channel": "app"})
    assert r.status_code == 200 and r.json()["experiments"]
    decision = r.json()["decision_id"]
    assert server.post("/outcomes", {"decision_id": decision, "event": "impression", "customer_key": key}).is_success
    found = DecisionLogStore(server.settings).find([Subject(key, customer_keys=(key,))])
    assert {row["table"] for h in found for row in h.rows} == {"decisions", "outcomes", "exposures"}
    before = len(read_exposures(server.settings))
    assert cli("dsar", "verify", key).exit_code == 1  # type: ignore[attr-defined]
    erased = cli("dsar", "erase", key, "--yes")
    assert erased.exit_code == 0, erased.output  # type: ignore[attr-defined]
    after = cli("dsar", "verify", key)
    assert after.exit_code == 0 and "nothing found" in after.output, after.output  # type: ignore[attr-defined]
    exposures = read_exposures(server.settings)
    assert server.log_key(key) not in set(exposures["customer_key"])
    assert len(exposures) == before - len(_expected(server, key))
    assert str(server.log_key(key)).encode() not in decision_log_path(server.settings).read_bytes()
    ERASED.append(key)


def test_the_analysis_runs_without_the_erased_customer(server: Server) -> None:
    analysis = pytest.importorskip("experiments.analysis", reason="experiments.analysis lands with helper stats")
    assert ERASED, "runs after the erasure test"
    units = _units(server, "retention-offer")
    assert server.log_key(ERASED[0]) not in set(units["customer_key"]) and len(units) > 100
    result = analysis.analyse(units, [m for m in load_spec(example_spec_text()).to_metrics() if m.name == "conversion"],
                              expected_shares={"control": 0.5, "treatment": 0.5})  # fmt: skip
    assert result.srm.counts == units["arm"].value_counts().to_dict()


def _units(server: Server, experiment: str) -> pd.DataFrame:
    """One row per exposed customer: arm, day of first exposure, whether they converted since (the outcomes log)."""
    exposures = read_exposures(server.settings, experiment)
    outcomes = read_outcomes(server.settings)
    converted = set(outcomes[outcomes["event"] == "conversion"]["customer_key"])
    return pd.DataFrame({
        "customer_key": exposures["customer_key"], "arm": exposures["arm"],
        "day": pd.to_datetime(exposures["exposed_at"]).dt.date,
        "conversion": exposures["customer_key"].isin(converted).astype(float),
    })  # fmt: skip


def test_a_spec_edited_after_launch_is_left_out_and_the_service_keeps_deciding(server: Server) -> None:
    key = next(k for k in server.known[600:] if len(_expected(server, k)) == 2)
    path = server.registry.get("prompt-wording").path
    path.write_text(path.read_text("utf-8").replace("traffic: 0.5", "traffic: 0.9"), "utf-8")
    deadline = time.monotonic() + 30
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        r = server.post("/decide", {"customer_key": key, "channel": "web"})
        assert r.status_code == 200, r.text
        body = r.json()
        if len(body["experiments"]) == 1:  # type: ignore[arg-type]
            break
        time.sleep(0.5)
    assert body["experiments"] == [e for e in _expected(server, key) if e["experiment"] == "retention-offer"]
    log = (server.settings.home_dir / "serve.log").read_text(errors="replace")
    assert "changed after launch" in log
