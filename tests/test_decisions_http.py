"""Next-best-action decisions over real HTTP: `/decide`, `/decide/batch` and `/outcomes` against `custintel serve`
(BentoML) with real champions (churn, propensity, uplift), the online store, the consent snapshot and the decision
log. Each 4xx rule, consent per purpose, the batch capacity, an access and erasure request over the logs, and
schemathesis over the new endpoints."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from custintel.personal import Subject
from custintel.settings import Settings
from decisions.policy import DecisionPolicy, default_policy_text, load_policy
from governance import store
from models.registry import Registry
from serving.decision_log import decision_log_path, read_decisions, read_outcomes
from serving.personal import DecisionLogStore
from tests.conftest import decision_home, start_service
from tests.test_serving_http import _exercise

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "decide-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Server:
    """A running service and the customers the tests pick from."""

    url: str
    settings: Settings
    process: subprocess.Popen[bytes]
    known: list[str]
    no_marketing: list[str]  # customers in the online store who withdrew marketing consent
    policy: DecisionPolicy  # the policy file served (the packaged one, with a small call-centre capacity)

    def post(self, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=headers or AUTH, timeout=60)


@pytest.fixture(scope="module")
def server(featured: Settings, decision_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    prepared = decision_home(featured, decision_base, tmp_path_factory.mktemp("decided"))
    home = prepared.settings.home_dir
    env = {
        "CUSTINTEL_HOME": str(home),
        "CUSTINTEL_DECISION_POLICY": str(prepared.policy_file),
        "CUSTINTEL_SERVING_API_KEYS": f"{KEY},scorer:score",
        "CUSTINTEL_SERVING_POLL_SECONDS": "1",
    }
    process, url = start_service(env, home / "serve.log")
    try:
        yield Server(url, prepared.settings, process, prepared.known, prepared.no_marketing,
                     load_policy(prepared.policy_file))  # fmt: skip
    finally:
        process.terminate()
        process.wait(30)


def test_decide_answers_an_action_logs_it_and_takes_outcomes(server: Server) -> None:
    key = server.known[0]
    r = server.post("/decide", {"customer_key": key, "channel": "call_centre", "context": {"reason": "billing"}})
    assert r.status_code == 200, r.text
    body = r.json()
    policy = server.policy
    assert body["status"] == "decided" and len(body["decision_id"]) == 32
    assert body["policy"]["source"] == "file" and body["policy"]["version"] is None  # none promoted: the file
    assert body["policy"]["name"] == policy.name and body["policy"]["digest"] == policy.digest()
    assert body["actions"] and 0 < body["probability"] <= 1 and body["prompt"]
    first = body["actions"][0]
    assert first["priority"] == pytest.approx(first["p"] * first["v"] * first["l"])
    assert {m["name"] for m in body["models"]} >= {"custintel-churn", "custintel-uplift", "custintel-propensity"}
    logged = read_decisions(server.settings).set_index("decision_id").loc[body["decision_id"]]
    assert logged["action"] == first["name"] and logged["context"] == {"reason": "billing"}
    assert logged["customer_key"] != key  # hashed like the inference log's keys
    assert sum(logged["action_probabilities"].values()) == pytest.approx(1.0)
    models = httpx.get(server.url + "/models", headers=AUTH).json()
    assert models["decision_policy"]["source"] == "file"
    assert "custintel-uplift" in {m["name"] for m in models["models"]}

    decision = body["decision_id"]

    def outcome(event: str, **extra: object) -> httpx.Response:
        return server.post("/outcomes", {"decision_id": decision, "event": event, "customer_key": key, **extra})

    assert outcome("click").status_code == 409  # before an impression: out of order
    assert outcome("impression").status_code == 200
    again = outcome("impression")
    assert again.status_code == 409 and again.json()["error"]["field"] == "event"
    assert outcome("decline").status_code == 200
    late = outcome("conversion")
    assert late.status_code == 409 and "after decline" in late.text
    feedback = outcome("feedback")
    assert feedback.status_code == 422 and feedback.json()["error"]["field"] == "reason"
    assert outcome("feedback", reason="offered a discount to a customer who is moving abroad").status_code == 200
    other = server.post("/outcomes", {"decision_id": decision, "event": "complaint", "customer_key": server.known[1]})
    assert other.status_code == 422 and other.json()["error"]["field"] == "customer_key"
    unknown = server.post("/outcomes", {"decision_id": "0" * 32, "event": "impression", "customer_key": key})
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "decision_id"
    events = read_outcomes(server.settings)
    assert list(events[events["decision_id"] == decision]["event"]) == ["impression", "decline", "feedback"]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/decide", {"customer_key": "CK-NOT-A-CUSTOMER", "channel": "web"}, 404, "customer_key"),
        ("/decide", {"customer_key": "CK1", "channel": "fax"}, 400, "channel"),
        ("/decide", {"customer_key": "CK1"}, 400, "channel"),
        ("/decide", {"customer_key": "CK1", "channel": "web", "extra": 1}, 400, "extra"),
        ("/decide", {"customer_key": "CK1", "channel": "web", "context": {"reason": 3}}, 400, "context"),
        ("/decide/batch", {"customer_keys": [], "channel": "web"}, 400, "customer_keys"),
        ("/decide/batch", {"customer_keys": ["A", "A"], "channel": "web"}, 400, "more than once"),
        ("/decide/batch", {"customer_keys": [f"K{i}" for i in range(1001)], "channel": "email"}, 413, "customers"),
        ("/outcomes", {"decision_id": "x", "event": "click", "customer_key": "CK1"}, 400, "decision_id"),
        ("/outcomes", {"decision_id": "0" * 32, "event": "purchase", "customer_key": "CK1"}, 400, "event"),
        ("/outcomes", {"decision_id": "0" * 32, "event": "click"}, 400, "customer_key"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(server: Server, path: str, body: object, status: int,
                                               field: str) -> None:  # fmt: skip
    r = server.post(path, body)
    assert r.status_code == status, r.text
    assert field in r.text


def test_the_decide_scope_is_needed(server: Server) -> None:
    r = server.post("/decide", {"customer_key": server.known[0], "channel": "web"}, headers={"X-API-Key": "scorer"})
    assert r.status_code == 403 and r.json()["error"]["scope"] == "decide"
    assert httpx.get(server.url + "/decide", headers=AUTH).status_code == 405


def test_no_marketing_action_for_a_customer_who_withdrew_marketing_consent(server: Server) -> None:
    assert server.no_marketing, "the world has customers who withdrew marketing consent"
    policy = server.policy
    marketing = {a.name for a in policy.actions if a.purpose == "marketing"}
    chosen = []
    for key in server.no_marketing[:25]:
        for channel in ("web", "email"):
            r = server.post("/decide", {"customer_key": key, "channel": channel})
            assert r.status_code == 200, r.text
            chosen += [a["name"] for a in r.json()["actions"]]
            probabilities = read_decisions(server.settings).set_index("decision_id").loc[
                r.json()["decision_id"], "action_probabilities"]  # fmt: skip
            assert not marketing & {a for a, p in probabilities.items() if p > 0}  # not even by exploration
    assert chosen and not marketing & set(chosen)
    batch = server.post("/decide/batch", {"customer_keys": server.no_marketing[:200], "channel": "email"})
    assert batch.status_code == 200
    assert not marketing & {a["name"] for d in batch.json()["results"] for a in d["actions"]}


def test_a_batch_keeps_to_the_channel_capacity_and_reports_its_value(server: Server) -> None:
    """The call centre takes 25 contacts a day (this test's policy): two campaigns together never exceed it."""
    policy = server.policy
    capacity = policy.capacity["call_centre"]
    contacts = []
    for keys in (server.known[:300], server.known[300:600]):
        r = server.post("/decide/batch", {"customer_keys": [*keys, "CK-UNKNOWN"], "channel": "call_centre"})
        assert r.status_code == 200, r.text
        body = r.json()
        results = body["results"]
        assert [d["customer_key"] for d in results] == [*keys, "CK-UNKNOWN"]
        assert results[-1]["status"] == "not_found" and results[-1]["decision_id"] is None
        contacts += [d for d in results[:-1] if d["actions"] and d["actions"][0]["name"] != policy.fallback]
        assert body["value_given_up"] == pytest.approx(body["unconstrained_value"] - body["value"], abs=1e-6)
        assert body["value"] <= body["unconstrained_value"] + 1e-9
        ids = {d["decision_id"] for d in results[:-1]}
        assert ids <= set(read_decisions(server.settings)["decision_id"])  # every decision logged
    assert contacts and len(contacts) <= capacity
    first = server.post("/decide/batch", {"customer_keys": server.known[:300], "channel": "call_centre"}).json()
    assert first["value_given_up"] > 0  # the day's capacity is spent: what would have been contacted is given up
    assert any(d["fallback"] and d["fallback_reason"] for d in first["results"])


def test_an_erasure_removes_a_customers_decisions_and_outcomes(server: Server) -> None:
    """`dsar verify` finds the decision log, `dsar erase` removes it with the rest, `dsar verify` then finds nothing."""
    from typer.testing import CliRunner

    from flows.cli import app

    def cli(*args: str) -> object:
        return CliRunner().invoke(app, ["--home", str(server.settings.home_dir), *args])

    key = server.known[-1]
    r = server.post("/decide", {"customer_key": key, "channel": "app", "context": {"reason": "moving house"}})
    assert r.status_code == 200
    decision = r.json()["decision_id"]
    assert server.post("/outcomes", {"decision_id": decision, "event": "impression", "customer_key": key}).is_success
    subject = Subject(key, customer_keys=(key,))
    found = DecisionLogStore(server.settings).find([subject])
    assert {row["table"] for h in found for row in h.rows} == {"decisions", "outcomes"}
    before = cli("dsar", "verify", key)
    assert before.exit_code == 1 and "decision_log  serving/decisions.db" in before.output, before.output  # type: ignore[attr-defined]
    erased = cli("dsar", "erase", key, "--yes")
    assert erased.exit_code == 0, erased.output  # type: ignore[attr-defined]
    after = cli("dsar", "verify", key)
    assert after.exit_code == 0 and "nothing found" in after.output, after.output  # type: ignore[attr-defined]
    assert DecisionLogStore(server.settings).find([subject]) == []
    assert decision not in set(read_decisions(server.settings)["decision_id"])
    assert decision.encode() not in decision_log_path(server.settings).read_bytes()
    followup = server.post("/outcomes", {"decision_id": decision, "event": "click", "customer_key": key})
    assert followup.status_code == 404  # the service finds nothing of theirs either
    gone = server.post("/decide", {"customer_key": key, "channel": "app"})
    assert gone.status_code == 404  # erased from the online store too: an unknown customer


def test_the_new_endpoints_keep_to_the_openapi_schema(server: Server) -> None:
    """Generated requests (valid and invalid) to /decide, /decide/batch and /outcomes: never a 5xx, every answer one
    the document declares, valid ones answered (or 404), invalid ones refused."""
    from schemathesis import GenerationMode
    from schemathesis.checks import negative_data_rejection, positive_data_acceptance

    schema = schemathesis.openapi.from_url(server.url + "/docs.json")
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(("/decide", "/outcomes")):
            continue
        for mode, check in ((GenerationMode.POSITIVE, positive_data_acceptance),
                            (GenerationMode.NEGATIVE, negative_data_rejection)):  # fmt: skip
            _exercise(operation, mode, [*checks, check])
            tested.append(f"{operation.label} {mode.value}")
    assert len(tested) == 6, tested


def test_a_promoted_policy_is_picked_up_live(server: Server) -> None:
    """Register a policy with another exploration share and promote it: /decide answers with it within a few polls."""
    import time

    registry = Registry(server.settings)
    policy = server.policy
    text = (default_policy_text() + "\n# promoted in a test\n").replace("exploration: 0.05", "exploration: 0.2")
    promoted = load_policy(text)
    assert promoted.exploration == 0.2 and promoted.digest() != policy.digest()
    version = registry.register_policy(policy.name, text, promoted.digest(), {"test": "live pickup"})
    store.move_champion(registry, policy.name, version, "test")
    deadline = time.monotonic() + 60
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        r = server.post("/decide", {"customer_key": server.known[2], "channel": "web"})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["policy"]["version"] == version:  # type: ignore[index]
            break
        time.sleep(0.5)
    assert body["policy"] == {"name": policy.name, "version": version, "source": "registry",
                              "digest": promoted.digest()}  # fmt: skip
    logged = read_decisions(server.settings).set_index("decision_id").loc[body["decision_id"]]
    assert logged["policy_version"] == version
    models = httpx.get(server.url + "/models", headers=AUTH).json()
    assert models["decision_policy"]["version"] == version and models["decision_policy"]["source"] == "registry"
