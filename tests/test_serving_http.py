"""The scoring service over real HTTP: `custintel serve` (BentoML) on 127.0.0.1 against a real registry,
online store and consent snapshot. Each endpoint, auth, each class of bad input, suppression, the
frequency cap, the popularity fallback, and a promotion picked up live while a client loops."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as examples
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from custintel.settings import Settings
from flows.features import PLAIN_STEPS as FEATURE_STEPS
from flows.features import run_feature_build
from flows.train import PLAIN_STEPS as TRAIN_STEPS
from flows.train import run_training
from governance import store
from models.registry import Registry
from serving.keys import fingerprint
from tests.conftest import start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "test-key-1"
# generated requests per operation and mode in the schemathesis test (more for a deeper run by hand)
EXAMPLES = int(os.environ.get("CUSTINTEL_TEST_SCHEMATHESIS_EXAMPLES", "12"))
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Server:
    """A running service and what the tests need to know about its data."""

    url: str
    settings: Settings
    process: subprocess.Popen[bytes]
    consenting: list[str]  # customers in the online store who have not withdrawn anything
    withdrawn_profiling: list[str]

    def post(self, path: str, body: object, **kw: object) -> httpx.Response:
        headers = {**AUTH, **kw.pop("headers", {})}  # type: ignore[dict-item]
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def _promote(settings: Settings, name: str, version: str) -> None:
    store.move_champion(Registry(settings), name, version, "test")


@pytest.fixture(scope="module")
def server(featured: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("served") / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
    settings = Settings(home=home, training_config=featured.training_config)
    for family in ("churn", "propensity", "recommendation"):
        run_training(settings, family, TRAIN_STEPS, lambda _: None, trials=1)
    for name in ("custintel-churn", "custintel-propensity", "custintel-recommendation"):
        _promote(settings, name, "1")
    run_feature_build(settings, [dt.date(2025, 6, 1)], True, FEATURE_STEPS, lambda _: None)
    env = {
        "CUSTINTEL_HOME": str(home),
        "CUSTINTEL_SERVING_API_KEYS": f"{KEY},other-key:score",  # the first: every scope; the other: scoring only
        "CUSTINTEL_SERVING_POLL_SECONDS": "1",
    }
    process, url = start_service(env, home / "serve.log")
    with sqlite3.connect(home / "serving" / "consent.sqlite") as con:
        withdrawn = {r[0] for r in con.execute("SELECT customer_key FROM consent WHERE status = 'withdrawn'")}
        profiling = [r[0] for r in con.execute(
            "SELECT customer_key FROM consent WHERE purpose = 'profiling' AND status = 'withdrawn'")]  # fmt: skip
    online = sqlite3.connect(home / "features" / "online.sqlite")
    tables = [r[0] for r in online.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    known = set()
    for table in tables:
        cols = [r[1] for r in online.execute(f'PRAGMA table_info("{table}")')]
        if "customer_key" in cols:
            known |= {r[0] for r in online.execute(f'SELECT customer_key FROM "{table}"')}
    online.close()
    consenting = sorted(known - withdrawn)
    try:
        yield Server(url, settings, process, consenting, sorted(set(profiling) & known))
    finally:
        process.terminate()
        process.wait(30)


def test_each_endpoint_answers(server: Server) -> None:
    key = server.consenting[0]
    churn = server.post("/churn/score", {"customer_key": key})
    assert churn.status_code == 200, churn.text
    body = churn.json()
    assert body["status"] == "scored" and 0 <= body["score"] <= 1 and body["model"]["version"] == "1"
    assert body["decision"] == (body["score"] >= body["threshold"])
    assert body["reasons"] and all(r["contribution"] > 0 for r in body["reasons"])
    # The same inputs in the body, without a key, give the same score as the online store's.
    from features.featurestore.store import open_online_store

    with open_online_store(server.settings) as online:
        docs = online.lookup(key) or {}
    inputs = {k: v for s, doc in docs.items() if s != "interactions@1" for k, v in doc.items() if k != "as_of"}
    anonymous = server.post("/churn/score", {"features": inputs})
    assert anonymous.status_code == 200, anonymous.text
    assert anonymous.json()["status"] == "scored" and anonymous.json()["score"] == pytest.approx(body["score"])
    partial = server.post("/churn/score", {"features": {"tenure_days": 400.0, "segment": "consumer"}})
    assert partial.status_code == 422 and "inputs of custintel-churn are missing" in partial.text  # named
    nulls = server.post("/churn/score", {"features": {**dict.fromkeys(inputs), "tenure_days": 400.0}})
    assert nulls.status_code == 200 and nulls.json()["status"] == "scored"  # missing values said so: NaN

    batch = server.post("/churn/score/batch", {"customers": [{"customer_key": k} for k in server.consenting[:50]]
                                               + [{"customer_key": "CK-UNKNOWN"}]})  # fmt: skip
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert len(results) == 51 and results[0]["score"] == pytest.approx(body["score"])
    assert results[-1]["status"] == "not_found"
    for path in ("/churn/score/batch", "/propensity/score/batch", "/recommend/batch"):  # a batch of one is a batch
        one = server.post(path, {"customers": [{"customer_key": "CK-UNKNOWN"}]})
        assert one.status_code == 200 and one.json()["results"][0]["status"] == "not_found", (path, one.text)

    propensity = server.post("/propensity/score", {"customer_key": key, "top": 3})
    assert propensity.status_code == 200, propensity.text
    products = propensity.json()["products"]
    assert len(products) == 3 and products[0]["score"] >= products[-1]["score"]
    assert server.post("/propensity/score/batch", {"customers": [{"customer_key": key}]}).status_code == 200

    rec = server.post("/recommend", {"customer_key": key, "k": 4})
    assert rec.status_code == 200, rec.text
    assert 0 < len(rec.json()["items"]) <= 4
    assert server.post("/recommend/batch", {"customers": [{"customer_key": key, "k": 2}]}).status_code == 200

    models = httpx.get(server.url + "/models", headers=AUTH).json()
    assert {m["name"] for m in models["models"]} == {"custintel-churn", "custintel-propensity",
                                                      "custintel-recommendation"}  # fmt: skip
    assert models["status"] == "ok"
    assert httpx.get(server.url + "/livez").status_code == 200
    assert "bentoml_service_request" in httpx.get(server.url + "/metrics").text


def test_requests_without_a_valid_key_are_refused(server: Server) -> None:
    key = server.consenting[0]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        r = httpx.post(server.url + "/churn/score", json={"customer_key": key}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
    assert httpx.get(server.url + "/models").status_code == 401
    scorer = {"X-API-Key": "other-key"}
    assert httpx.post(server.url + "/churn/score", json={"customer_key": key}, headers=scorer).is_success
    refused = httpx.post(server.url + "/recommend", json={"customer_key": key}, headers=scorer)
    assert refused.status_code == 403 and refused.json()["error"]["scope"] == "recommend"
    assert httpx.get(server.url + "/models", headers=scorer).json()["error"]["scope"] == "admin"
    time.sleep(1.5)  # the log is written off the request path: callers are fingerprints, never keys
    logged = "".join(p.read_text() for p in (server.settings.home_dir / "serving" / "inference").glob("*.jsonl"))
    logged += (server.settings.home_dir / "serve.log").read_text(errors="replace")  # the service's own log
    assert fingerprint("other-key") in logged and "other-key" not in logged and KEY not in logged


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/churn/score", {"customer_key": "CK-NOT-A-CUSTOMER"}, 404, "customer_key"),
        ("/churn/score", {"customer_key": 12}, 400, "customer_key"),
        ("/churn/score", {}, 400, "give a customer_key or features"),
        ("/churn/score", {"customer_key": "CK1", "extra": 1}, 400, "extra"),
        ("/churn/score", {"features": {"tenure_days": "NaN-as-text", "bogus": 1}}, 422, "features"),
        ("/churn/score", {"customer_key": "CK1", "features": {"tenure_days": True}}, 400, "tenure_days"),
        ("/churn/score", {"features": {"tenure_days": "abc"}}, 422, "features.tenure_days"),
        ("/recommend", {"customer_key": "x", "k": "5"}, 400, "k"),
        ("/recommend", {"customer_key": "x", "k": True}, 400, "k"),
        ("/propensity/score", {"customer_key": "x", "top": "3"}, 400, "top"),
        ("/recommend", {"customer_key": "x", "k": 0}, 400, "k"),
        ("/recommend", {"k": 3}, 400, "customer_key"),
        ("/propensity/score", {"customer_key": "x", "product_ids": []}, 400, "product_ids"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(
    server: Server, path: str, body: object, status: int, field: str
) -> None:
    r = server.post(path, body)
    assert r.status_code == status, r.text
    assert field in r.text


def test_nan_infinity_oversize_and_foreign_content_types_are_refused(server: Server) -> None:
    key = server.consenting[0]
    for raw in (
        b'{"customer_key": "%s", "features": {"tenure_days": NaN}}',
        b'{"features": {"tenure_days": Infinity}}',
    ):
        r = httpx.post(server.url + "/churn/score", content=raw.replace(b"%s", key.encode()),
                       headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 400 and "finite" in r.text
    too_many = server.post("/churn/score/batch", {"customers": [{"customer_key": key}] * 1001})
    assert too_many.status_code == 413 and "customers" in too_many.text
    huge = httpx.post(server.url + "/churn/score", content=b"{" + b" " * 2_000_000 + b"}",
                      headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert huge.status_code == 413 and huge.json()["error"]["field"] == "body"

    def chunks() -> Iterator[bytes]:
        yield b'{"customer_key": "'
        for _ in range(40):
            yield b"x" * 50_000
        yield b'"}'

    chunked = httpx.post(
        server.url + "/churn/score", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    for content_type in (
        "application/vnd.bentoml+pickle",
        "application/python-pickle",
        "text/plain",
        "application/octet-stream",
    ):
        r = httpx.post(
            server.url + "/churn/score", content=b"\x80\x04K\x01.", headers={**AUTH, "Content-Type": content_type}
        )
        assert r.status_code == 415, (content_type, r.text)
    broken = httpx.post(
        server.url + "/churn/score", content=b'{"customer_key": ', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert broken.status_code == 400
    wrong = httpx.post(server.url + "/models", content=b"x", headers={**AUTH, "Content-Type": "text/plain"})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert httpx.get(server.url + "/churn/score", headers=AUTH).status_code == 405
    # every refusal above is one INFO line in the service's log, never a traceback
    time.sleep(0.5)
    log = (server.settings.home_dir / "serve.log").read_text(errors="replace")
    assert "refused POST /churn/score" in log and "Traceback" not in log


def test_a_customer_who_withdrew_consent_is_suppressed_and_not_logged(server: Server) -> None:
    assert server.withdrawn_profiling, "the world has customers who withdrew profiling consent"
    key = server.withdrawn_profiling[0]
    r = server.post("/churn/score", {"customer_key": key})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "suppressed" and body["purpose"] == "profiling" and body["score"] is None
    assert "withdrew" in body["suppressed_reason"] and body["reasons"] == []
    time.sleep(1.5)  # the log is written off the request path
    lines = [json.loads(x) for p in (server.settings.home_dir / "serving" / "inference").glob("*.jsonl")
             for x in p.read_text().splitlines()]  # fmt: skip
    suppressed = [x for x in lines if x.get("status") == "suppressed"]
    assert suppressed and all("customer" not in x and "answer" not in x for x in suppressed)
    scored = [x for x in lines if "answer" in x]
    assert scored and all(x["customer"] != server.consenting[0] for x in scored)  # hashed, never the raw key
    assert all(x["caller"].startswith("key-") for x in lines)


def test_the_frequency_cap_stops_repeating_the_same_offer(server: Server) -> None:
    key = server.consenting[1]
    shown = [server.post("/recommend", {"customer_key": key, "k": 3}).json() for _ in range(4)]
    first = [i["product_id"] for i in shown[0]["items"]]
    assert [i["product_id"] for i in shown[2]["items"]] == first  # three impressions allowed (policy)
    fourth = shown[3]
    assert set(first) <= set(fourth["capped"])
    assert not set(first) & {i["product_id"] for i in fourth["items"]}


def test_customers_without_history_get_the_popularity_fallback(server: Server) -> None:
    answers = server.post(
        "/recommend/batch", {"customers": [{"customer_key": k, "k": 3} for k in server.consenting[:400]]}
    )
    assert answers.status_code == 200
    results = [r for r in answers.json()["results"] if r["status"] == "scored"]
    fallback = [r for r in results if r["fallback"]]
    personal = [r for r in results if not r["fallback"]]
    assert fallback and personal
    assert all(i["source"] == "popularity" for r in fallback for i in r["items"])


def test_a_promotion_is_picked_up_live_with_no_failed_request(server: Server) -> None:
    settings = server.settings
    run_training(settings, "churn", TRAIN_STEPS, lambda _: None, trials=1)  # version 2
    key = server.consenting[0]
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers=AUTH, timeout=30) as http:
            while not stop.is_set():
                r = http.post(server.url + "/churn/score", json={"customer_key": key})
                seen.append((r.status_code, r.json().get("model", {}).get("version", "") if r.is_success else r.text))

    worker = threading.Thread(target=client)
    worker.start()
    time.sleep(1)
    _promote(settings, "custintel-churn", "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(v == "2" for _, v in seen):
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    worker.join(30)
    assert all(code == 200 for code, _ in seen), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions)  # once swapped, never back
    served = httpx.get(server.url + "/models", headers=AUTH).json()
    assert {m["family"]: m["version"] for m in served["models"]}["churn"] == "2"
    assert len(pd.Series(versions).unique()) == 2


def _exercise(operation: object, mode: object, checks: list[object]) -> None:
    """Up to EXAMPLES generated requests of one operation in one mode, each answer validated by `checks`."""
    from hypothesis import given

    @given(case=operation.as_strategy(mode))  # type: ignore[attr-defined]
    @examples(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        case.validate_response(case.call(headers=AUTH, timeout=30), checks=checks)  # type: ignore[arg-type]

    run()


def test_the_service_keeps_to_its_own_openapi_schema(server: Server) -> None:
    """Generated requests per operation (bounded), valid and invalid by the document: never a 5xx, every answer
    one the document declares, every valid request answered (or 404: a well-formed key of a customer who does not
    exist), every invalid one refused.

    Driven with Hypothesis directly: schemathesis' pytest plugin does not run under pytest 9.
    """
    from schemathesis import GenerationMode
    from schemathesis.checks import negative_data_rejection, positive_data_acceptance

    schema = schemathesis.openapi.from_url(server.url + "/docs.json")
    # 413 refuses a batch over the policy's limit (the document's maxItems): a refusal like 400 and 422
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(("/churn", "/propensity", "/recommend", "/models")):
            continue
        for mode, check in ((GenerationMode.POSITIVE, positive_data_acceptance),
                            (GenerationMode.NEGATIVE, negative_data_rejection)):  # fmt: skip
            if operation.method.upper() == "GET" and mode == GenerationMode.NEGATIVE:
                continue  # nothing to send wrong
            _exercise(operation, mode, [*checks, check])
            tested.append(f"{operation.label} {mode.value}")
    assert len(tested) == 13, tested
    # the document declares what the served models read
    doc = httpx.get(server.url + "/docs.json").json()
    score = doc["components"]["schemas"]["ScoreRequest"]
    inputs = score["properties"]["features"]["properties"]
    assert score["properties"]["features"]["additionalProperties"] is False and len(inputs) > 40
    assert {"type": "number", "nullable": True} in inputs.values() and {
        "type": "string",
        "nullable": True,
    } in inputs.values()
    assert score["anyOf"][1]["properties"]["features"]["required"] == sorted(inputs)
    batch = doc["paths"]["/churn/score/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["customers"]["maxItems"] == 1000


def _logged(server: Server, version: str) -> dict[str, dict[str, object]]:
    """The last logged churn entry per hashed customer for one model version."""
    entries = {}
    for path in sorted((server.settings.home_dir / "serving" / "inference").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):  # JSON Lines: only \n ends a record (not U+2028)
            if not line:
                continue
            entry = json.loads(line)
            if entry.get("model") == "custintel-churn" and entry.get("version") == version and entry.get("customer"):
                entries[entry["customer"]] = entry
    return entries


def test_batches_from_the_snapshot_equal_batches_from_the_store(server: Server) -> None:
    """A model's in-memory inputs answer exactly as the online store does, and never after the store moves on."""
    from features.featurestore.store import open_online_store

    keys = server.consenting[:300]
    body = {"customers": [{"customer_key": k} for k in keys] + [{"customer_key": "CK-UNKNOWN"}]}
    assert server.post("/churn/score/batch", body).status_code == 200  # a model's first call checks its route
    # A customer given with features in the body (no key: every input, most of them null) sends the whole batch
    # to the store.
    with open_online_store(server.settings) as online:
        docs = online.lookup(keys[0]) or {}
    names = {k for s, doc in docs.items() if s != "interactions@1" for k in doc if k != "as_of"}
    with_body = {"customers": [*body["customers"], {"features": {**dict.fromkeys(names), "tenure_days": 100.0}}]}
    started = time.time()
    mixed = server.post("/churn/score/batch", with_body)
    assert mixed.status_code == 200, mixed.text
    from_store = {"results": mixed.json()["results"][:-1]}
    version = from_store["results"][0]["model"]["version"]
    time.sleep(0.6)  # the log writer's interval
    before = {c: e for c, e in _logged(server, version).items() if float(e["at"]) >= started}  # this batch's
    deadline = time.monotonic() + 60
    held: list[dict[str, object]] = []
    while time.monotonic() < deadline and not held:
        assert server.post("/churn/score/batch", body).status_code == 200  # asks for the snapshot to be built
        held = [s for s in httpx.get(server.url + "/models", headers=AUTH).json()["snapshots"]
                if s["model"] == f"custintel-churn@{version}"]  # fmt: skip
        time.sleep(0.3)
    assert held and held[0]["customers"] >= len(keys), held
    from_memory = server.post("/churn/score/batch", body)
    differing = [(a, b) for a, b in zip(from_memory.json()["results"], from_store["results"], strict=True)
                 if a != b]  # fmt: skip
    assert not differing, json.dumps(differing[:1])  # scores, decisions, reasons and their values, not_found
    time.sleep(0.6)  # the log writer's interval
    after = _logged(server, version)
    assert len(before) >= len(keys) - 5
    for customer, entry in before.items():
        assert after[customer]["inputs"] == entry["inputs"] and after[customer]["as_of"] == entry["as_of"]
        assert after[customer]["at"] > entry["at"]

    # The store moves on: one customer's strongest reason changes. The next batch reads the store, not the old copy.
    target = keys[-1]
    answered = from_store["results"][len(keys) - 1]
    feature = answered["reasons"][0]["feature"]
    with open_online_store(server.settings) as online:
        (set_key,) = [k for k, m in online.sets().items() if feature in m.get("columns", [])]
        meta = online.sets()[set_key]
        docs = dict(online.raw_documents_many(online.customer_keys([set_key]), [set_key]))
        changed = json.loads(docs[target][0])
        value = changed[feature]
        changed[feature] = -abs(value) - 1e6 if isinstance(value, int | float) else None
        docs[target] = [json.dumps(changed, separators=(",", ":"))]
        online.replace_set(set_key, [(k, d[0]) for k, d in sorted(docs.items())], meta)
    moved = server.post("/churn/score/batch", body).json()["results"][len(keys) - 1]
    single = server.post("/churn/score", {"customer_key": target}).json()
    assert moved == single != answered


def test_a_batch_whose_caller_hangs_up_is_not_logged_as_served(server: Server) -> None:
    """The gate watches the connection: a batch finished after its caller left is neither served nor logged."""
    import socket
    from urllib.parse import urlparse

    keys = (server.consenting * 1000)[:1000]
    body = json.dumps({"customers": [{"customer_key": k} for k in keys]}).encode()

    def propensity_entries() -> int:
        time.sleep(0.6)  # the log writer's interval
        return sum(
            line.count('"endpoint":"/propensity/score"')
            for path in (server.settings.home_dir / "serving" / "inference").glob("*.jsonl")
            for line in path.read_text(encoding="utf-8").split("\n")
        )

    started, before = time.perf_counter(), propensity_entries()
    assert server.post("/propensity/score/batch", json.loads(body)).status_code == 200
    took = time.perf_counter() - started - 0.6
    after_served = propensity_entries()
    assert after_served > before  # a batch answered is logged
    url = urlparse(server.url)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80)) as sock:
        head = (f"POST /propensity/score/batch HTTP/1.1\r\nHost: {url.hostname}\r\nX-API-Key: {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        sock.sendall(head.encode() + body)
        time.sleep(max(took / 5, 0.02))  # hang up while the batch is being computed
    time.sleep(took + 1.0)  # the batch finishes, finds its caller gone
    assert propensity_entries() == after_served, "answers computed for a caller who left were logged as served"
    log = (server.settings.home_dir / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log
