"""The serving pieces without a server: consent rules, the request gate, frequency caps, the inference log,
reasons from LightGBM contributions, the champions and a registry outage, snapshots."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from custintel.settings import Settings
from models.tabular import FramePreparer
from serving.caps import RedisFrequencyCaps, SQLiteFrequencyCaps, open_frequency_caps
from serving.champions import Champions, ServedModel, registered_names
from serving.consent import CustomerConsent, decide_consent, latest_consent
from serving.errors import ServingError
from serving.inference_log import InferenceLog
from serving.middleware import Gatekeeper
from serving.policy import Minors, ServingPolicy, ServingPolicyError, load_serving_policy
from serving.scoring import score_with_reasons


def test_the_latest_decision_wins_and_a_tie_withdraws() -> None:
    events = pd.DataFrame(
        {
            "customer_key": ["a", "a", "a", "b", "b", None],
            "purpose": ["marketing", "marketing", "profiling", "marketing", "marketing", "marketing"],
            "status": ["granted", "withdrawn", "granted", "granted", "WITHDRAWN", "granted"],
            "recorded_at": ["2024-01-01", "2024-06-01", "2024-01-01", "2024-03-01", "2024-03-01", "2024-01-01"],
        }
    )
    out = latest_consent(events).set_index(["customer_key", "purpose"])["status"].to_dict()
    assert out == {("a", "marketing"): "withdrawn", ("a", "profiling"): "granted", ("b", "marketing"): "withdrawn"}


def test_consent_and_age_decide_suppression_and_masking() -> None:
    policy = load_serving_policy()
    today = dt.date(2026, 1, 1)
    assert decide_consent(CustomerConsent({"profiling": "granted"}), "profiling", policy, today) == (None, False)
    withdrawn, _ = decide_consent(CustomerConsent({"profiling": "withdrawn"}), "profiling", policy, today)
    assert withdrawn is not None and "withdrew consent for profiling" in withdrawn
    assert decide_consent(CustomerConsent(), "marketing", policy, today) == (None, False)  # unknown: allowed
    strict = policy.model_copy(update={"unknown_consent": {"marketing": "suppress"}})
    assert "no recorded consent" in str(decide_consent(CustomerConsent(), "marketing", strict, today)[0])
    minor = CustomerConsent({}, dt.date(2010, 6, 1))
    assert "minor" in str(decide_consent(minor, "marketing", policy, today)[0])
    masking = policy.model_copy(update={"minors": Minors(age_below=18, action="mask")})
    assert decide_consent(minor, "marketing", masking, today) == (None, True)


def test_the_serving_policy_names_a_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    path.write_text("frequency_cap: {max_impressions: 0}\n")
    with pytest.raises(ServingPolicyError, match="max_impressions"):
        load_serving_policy(path)
    path.write_text("purposes: {churn: gossip}\n")
    with pytest.raises(ServingPolicyError, match="purposes.churn"):
        load_serving_policy(path)
    assert isinstance(load_serving_policy(), ServingPolicy)


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps({"caller": scope.get("state", {}).get("caller"), "bytes": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def _call(
    gate: Gatekeeper, path: str, headers: dict[str, str], chunks: list[bytes], method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
    asyncio.run(gate(scope, receive, send))  # type: ignore[arg-type]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_the_gate_checks_key_content_type_and_size_before_the_app() -> None:
    gate = Gatekeeper(_echo, api_keys=["k1"], max_body_bytes=100, anonymous=False)
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    assert _call(gate, "/churn/score", json_type, [b"{}"])[0] == 401
    status, body = _call(gate, "/churn/score", {**json_type, "Authorization": "Bearer k1"}, [b"{}"])
    assert status == 200 and body["caller"].startswith("key-") and "k1" not in body["caller"]
    assert _call(gate, "/churn/score", {**json_type, "X-API-Key": "k1"}, [b"{", b"}"])[1]["bytes"] == 2  # replayed
    status, body = _call(
        gate, "/churn/score", {"X-API-Key": "k1", "Content-Type": "application/vnd.bentoml+pickle"}, [b"x"]
    )
    assert status == 415 and body["error"]["field"] == "content-type"
    status, body = _call(gate, "/churn/score", {**json_type, "X-API-Key": "k1", "Content-Length": "101"}, [b"x"])
    assert status == 413
    assert _call(gate, "/churn/score", {**json_type, "X-API-Key": "k1"}, [b"x" * 60, b"x" * 60])[0] == 413  # chunked
    assert _call(gate, "/readyz", {}, [b""], method="GET")[0] == 200  # health stays open
    assert (
        _call(Gatekeeper(_echo, [], 100, anonymous=True), "/models", {}, [b""], method="GET")[1]["caller"]
        == "anonymous"
    )


def test_the_gate_answers_a_direct_route_after_its_checks_and_hands_on_what_the_route_declines() -> None:
    from serving.middleware import answer_directly

    seen: list[tuple[bytes, str]] = []

    def handler(body: bytes, caller: str) -> tuple[int, bytes] | None:
        seen.append((body, caller))
        return None if body == b"{}" else (201, json.dumps({"direct": True}).encode())

    gate = Gatekeeper(_echo, api_keys=["k1"], max_body_bytes=100, anonymous=False)
    json_type = {"Content-Type": "application/json", "X-API-Key": "k1"}
    answer_directly("/churn/score", handler)
    try:
        assert _call(gate, "/churn/score", {"Content-Type": "application/json"}, [b"[1]"])[0] == 401  # checks first
        assert _call(gate, "/churn/score", {**json_type, "Content-Length": "101"}, [b"x"])[0] == 413
        assert seen == []
        assert _call(gate, "/churn/score", json_type, [b"[", b"1]"]) == (201, {"direct": True})  # whole body
        assert seen[-1][0] == b"[1]" and seen[-1][1].startswith("key-")
        status, body = _call(gate, "/churn/score", json_type, [b"{}"])  # declined: the app answers, body replayed
        assert status == 200 and body["bytes"] == 2
        assert _call(gate, "/churn/score/batch", json_type, [b"[1]"])[1]["bytes"] == 3  # other routes: the app
    finally:
        answer_directly("/churn/score", None)
    assert _call(gate, "/churn/score", json_type, [b"[1]"])[1]["bytes"] == 3


def test_the_serving_benchmark_trains_the_demos_world_and_budget() -> None:
    import inspect

    from benchmarks import bench_serving
    from flows.cli.demo import demo

    defaults = {k: v.default for k, v in inspect.signature(demo).parameters.items()}
    assert bench_serving.DEFAULT_CUSTOMERS == defaults["customers"]
    assert bench_serving.DEFAULT_TRIALS == defaults["trials"]
    assert bench_serving.DEMO_DRIFT_DATE == defaults["drift_date"]
    assert bench_serving.DEMO_DRIFT_STRENGTH == defaults["drift_strength"]


def test_a_wrong_method_gets_405_naming_the_allowed_one() -> None:
    gate = Gatekeeper(_echo, api_keys=["k1"], max_body_bytes=100, anonymous=False)
    key = {"X-API-Key": "k1"}
    status, body = _call(gate, "/models", {**key, "Content-Type": "text/plain"}, [b"x"], method="POST")
    assert status == 405 and body["error"]["field"] == "method" and "GET" in body["error"]["reason"]
    status, body = _call(gate, "/churn/score/batch", key, [b""], method="GET")
    assert status == 405 and "POST" in body["error"]["reason"]
    assert _call(gate, "/models", key, [b""], method="GET")[0] == 200
    assert _call(gate, "/models", {}, [b""], method="POST")[0] == 401  # the key is checked first


def test_request_types_are_not_coerced() -> None:
    from pydantic import ValidationError

    from serving.schemas import PropensityRequest, RecommendRequest, ScoreRequest

    for bad in ({"features": {"sessions_30d": True}}, {"features": {"plan": False}}, {"features": {"x": [1]}}):
        with pytest.raises(ValidationError):
            ScoreRequest.model_validate(bad)
    for bad in ({"customer_key": "c", "k": "5"}, {"customer_key": "c", "k": True}, {"customer_key": "c", "k": 2.0}):
        with pytest.raises(ValidationError, match="k"):
            RecommendRequest.model_validate(bad)
    with pytest.raises(ValidationError, match="top"):
        PropensityRequest.model_validate({"customer_key": "c", "top": "3"})
    for json_body in ('{"features": {"sessions_30d": true}}', '{"customer_key": 12}'):
        with pytest.raises(ValidationError):
            ScoreRequest.model_validate_json(json_body)
    ok = ScoreRequest.model_validate_json('{"features": {"sessions_30d": 3, "tenure_days": 2.5, "plan": "basic"}}')
    assert ok.features == {"sessions_30d": 3, "tenure_days": 2.5, "plan": "basic"}


def test_a_bodys_features_must_fit_the_models_inputs(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from serving.errors import ServingError
    from serving.policy import ServingPolicy
    from serving.runtime import Runtime

    model = SimpleNamespace(name="m", columns=["a", "b", "plan"], inputs=["a", "b", "plan"],
                            numeric_inputs=frozenset({"a", "b"}))  # fmt: skip
    runtime = Runtime.__new__(Runtime)  # only the policy is read for a body without a key
    runtime.policy = ServingPolicy()
    full = {"a": 1, "b": None, "plan": "basic"}
    assert runtime.feature_row(model, None, full, "body", None)[0] == full  # type: ignore[arg-type]
    cases = [({"a": "abc", "b": 1, "plan": "x"}, "body.features.a", "a number"),
             ({"a": 1, "b": 2, "plan": 3}, "body.features.plan", "a category"),
             ({"a": 1}, "body.features", "2 inputs of m are missing"),
             ({"a": 1, "zz": 2}, "body.features", "not inputs of m")]  # fmt: skip
    for given, field, why in cases:
        with pytest.raises(ServingError) as caught:
            runtime.feature_row(model, None, given, "body", None)  # type: ignore[arg-type]
        assert caught.value.status == 422 and caught.value.field == field and why in caught.value.reason
    runtime.policy = ServingPolicy(absent_inputs=2)
    assert runtime.feature_row(model, None, {"a": 1}, "body", None)[0] == {"a": 1}  # type: ignore[arg-type]
    # with the customer's stored inputs, the body overrides some of them: nothing is absent
    stored = {"a": 5, "b": 6, "plan": "gold"}
    runtime.policy = ServingPolicy()
    assert runtime.feature_row(model, "CK1", {"a": 1}, "body", stored)[0] == {**stored, "a": 1}  # type: ignore[arg-type]


def test_a_refused_request_is_logged_as_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from pydantic import ValidationError

    from serving.errors import quiet_refusals
    from serving.schemas import RecommendRequest

    name = "custintel.test.refusals"
    quiet_refusals(name)
    quiet_refusals(name)  # once
    logger = logging.getLogger(name)
    assert len(logger.filters) == 1
    try:
        RecommendRequest.model_validate({"customer_key": "c", "k": "5"})
    except ValidationError:
        with caplog.at_level(logging.INFO, logger=name):
            logger.error("Exception on %s [%s]", "/recommend", "POST", exc_info=True)
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        with caplog.at_level(logging.INFO, logger=name):
            logger.error("Exception on %s [%s]", "/recommend", "POST", exc_info=True)
    refused, bug = caplog.records
    assert refused.levelname == "INFO" and refused.exc_info is None
    assert refused.getMessage().startswith("refused POST /recommend: k: ")
    assert bug.levelname == "ERROR" and bug.exc_info is not None


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_frequency_caps_count_impressions_in_the_window(tmp_path: Path, backend: str) -> None:
    redis_url = "redis://127.0.0.1:6379/0" if backend == "redis" else None
    settings = Settings(home=tmp_path, redis_url=redis_url, online_namespace=f"t{uuid.uuid4().hex[:8]}")
    caps = open_frequency_caps(settings, max_impressions=2, window_days=1)
    assert isinstance(caps, RedisFrequencyCaps if backend == "redis" else SQLiteFrequencyCaps)
    now = time.time()
    caps.record("c1", ["p1", "p2"], now - 2 * 86400)  # outside the window
    caps.record("c1", ["p1"], now - 10)
    caps.record("c1", ["p1"], now - 5)
    assert caps.counts("c1", ["p1", "p2", "p3"], now) == {"p1": 2, "p2": 0, "p3": 0}
    assert caps.counts("c2", ["p1"], now) == {"p1": 0}


def test_the_inference_log_hashes_keys_and_writes_off_the_request_path(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, "hash", salt="s")
    hashed = log.key("CK1")
    assert hashed and hashed != "CK1" and hashed == log.key("CK1") != InferenceLog(tmp_path, "hash", "t").key("CK1")
    assert InferenceLog(tmp_path, "omit", "s").key("CK1") is None
    for i in range(100):
        log.record({"n": i, "customer": hashed})
    log.close()
    lines = [json.loads(x) for p in tmp_path.glob("*.jsonl") for x in p.read_text().splitlines()]
    assert [x["n"] for x in lines] == list(range(100))


def test_reasons_are_the_largest_positive_lightgbm_contributions() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"risk": rng.normal(size=2000), "noise": rng.normal(size=2000), "plan": rng.choice(["a", "b"], 2000)}
    )
    y = (frame["risk"] + 0.1 * rng.normal(size=2000) > 1).astype(int)
    from sklearn.pipeline import Pipeline

    pipe = Pipeline([("prepare", FramePreparer(["risk", "noise"], ["plan"])),
                     ("model", lgb.LGBMClassifier(n_estimators=30, verbose=-1))]).fit(frame, y)  # fmt: skip
    high = pd.DataFrame({"risk": [3.0], "noise": [0.0], "plan": ["a"]})
    scores, reasons = score_with_reasons(pipe, high, 2)
    assert scores[0] > 0.5 and reasons[0][0][0] == "risk" and reasons[0][0][1] > 0
    assert score_with_reasons(pipe, high, 0)[1] == [[]]


def test_a_registry_outage_keeps_the_served_model_and_reports_degraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tracking server that refuses connections, and no retries: the poll fails the way an outage does.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    settings = Settings(home=tmp_path, mlflow_tracking_uri="http://127.0.0.1:1")
    champions = Champions(settings, {"churn": "custintel-churn"})
    champions.models["churn"] = "the model in memory"  # type: ignore[assignment]
    assert champions.refresh() == []
    assert champions.models["churn"] == "the model in memory"
    assert champions.state.degraded is not None and "127.0.0.1:1" in champions.state.degraded


def test_a_family_without_a_champion_answers_503_and_the_service_is_ready_with_the_others(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    champions = Champions(settings, registered_names(settings, ["churn", "recommendation"]))
    assert not champions.ready  # the registry has not been read yet
    champions.models["churn"] = "loaded"  # type: ignore[assignment]
    champions.state.polled_at = "2026-11-23T08:00:00+00:00"
    assert champions.ready
    with pytest.raises(ServingError) as info:
        champions.served("recommendation")
    assert info.value.status == 503 and "custintel-recommendation" in info.value.reason


def test_registered_names_come_from_the_training_config(tmp_path: Path) -> None:
    import yaml

    from models.config import FAMILIES

    assert registered_names(Settings(), FAMILIES) == {
        "churn": "custintel-churn",
        "propensity": "custintel-propensity",
        "recommendation": "custintel-recommendation",
    }
    shipped = yaml.safe_load((Path(__file__).parents[1] / "models" / "training.yaml").read_text())
    shipped["churn"]["registered_model"] = "acme-churn"
    path = tmp_path / "training.yaml"
    path.write_text(yaml.safe_dump(shipped))
    settings = Settings(home=tmp_path, training_config=path)
    champions = Champions(settings, registered_names(settings, ["churn", "recommendation"]))
    assert champions.names == {"churn": "acme-churn", "recommendation": "custintel-recommendation"}
    champions.refresh()  # nothing registered under either name: not degraded, nothing served
    assert champions.state.degraded is None and not champions.models
    with pytest.raises(ServingError, match="no @champion of acme-churn has been promoted yet"):
        champions.served("churn")


def test_one_pass_scores_equal_the_calibrated_models_own() -> None:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline

    import serving.scoring as scoring

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"risk": rng.normal(size=3000), "plan": rng.choice(["a", "b", "c"], 3000)})
    y = (frame["risk"] + rng.normal(size=3000) > 1).astype(int)
    steps = [("prepare", FramePreparer(["risk"], ["plan"])), ("model", lgb.LGBMClassifier(n_estimators=40, verbose=-1))]
    pipe = Pipeline(steps).fit(frame[:2000], y[:2000])
    for method in ("sigmoid", "isotonic"):
        calibrated = CalibratedClassifierCV(FrozenEstimator(pipe), method=method).fit(frame[2000:], y[2000:])
        rows = frame.sample(50, random_state=2)
        first, _ = score_with_reasons(calibrated, rows, 2)  # checks the one-pass route against predict_proba
        second, reasons = score_with_reasons(calibrated, rows, 2)
        np.testing.assert_allclose(second, calibrated.predict_proba(rows)[:, 1], atol=1e-9)
        np.testing.assert_allclose(first, second, atol=1e-9)
        assert scoring._ONE_PASS[id(calibrated)] in ("raw", "proba")
        assert all(r == [] or r[0][1] > 0 for r in reasons)


def test_the_pandas_free_route_scores_records_exactly_like_the_pipeline() -> None:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline

    import serving.scoring as scoring

    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame(
        {"risk": rng.normal(size=n), "count": rng.integers(0, 9, n), "plan": rng.choice(["a", "b", "c"], n)}
    )
    frame.loc[::7, "risk"] = np.nan
    y = (frame["risk"].fillna(0) + (frame["plan"] == "c") + rng.normal(size=n) > 1).astype(int)
    steps = [
        ("prepare", FramePreparer(["risk", "count"], ["plan"])),
        ("model", lgb.LGBMClassifier(n_estimators=30, verbose=-1)),
    ]
    pipe = Pipeline(steps).fit(frame[:2000], y[:2000])
    model = CalibratedClassifierCV(FrozenEstimator(pipe), method="sigmoid").fit(frame[2000:], y[2000:])
    records = [
        {"risk": 1.5, "count": 3, "plan": "c"},
        {"risk": None, "count": "4", "plan": "a"},  # missing number, number as text
        {"risk": -0.5, "count": 0, "plan": "never-seen"},  # unseen category
        {"risk": 0.1, "count": None, "plan": None},
    ]
    expected = model.predict_proba(pd.DataFrame(records))[:, 1]
    first, reasons_first = scoring.score_records(model, records, ["risk", "count", "plan"], 2)  # checks the route
    assert scoring._FAST[id(model)] in ("raw", "proba")
    fast, reasons_fast = scoring.score_records(model, records, ["risk", "count", "plan"], 2)
    np.testing.assert_allclose(first, expected, atol=1e-12)
    np.testing.assert_allclose(fast, expected, atol=1e-9)
    assert [[f for f, _ in r] for r in reasons_fast] == [[f for f, _ in r] for r in reasons_first]


@pytest.mark.parametrize(
    "records",
    [
        [{"risk": 1, "count": 2.5, "plan": "a"}, {"risk": None, "count": True, "plan": None}],  # one block
        [{"risk": "3", "count": " 4 ", "plan": 1}, {"risk": "abc", "count": [1], "plan": "never-seen"}],  # by value
        [{"count": 1}, {}],  # missing columns
        [{"risk": np.float64(2.5), "count": 10**30, "plan": "b"}],
        [],
    ],
)
def test_records_matrix_converts_like_one_value_at_a_time(records: list[dict[str, Any]]) -> None:
    from models.tabular import _as_float

    prepare = FramePreparer(["risk", "count"], ["plan"]).fit(
        pd.DataFrame({"risk": [1.0, 2.0], "count": [1, 2], "plan": ["a", "b"]})
    )
    codes = {"a": 0.0, "b": 1.0}
    expected = np.array(
        [[_as_float(r.get("risk")), _as_float(r.get("count")), codes.get(str(r.get("plan")), np.nan)] for r in records]
    ).reshape(len(records), 3)
    np.testing.assert_array_equal(prepare.records_matrix(records), expected)


def test_consent_lookups_one_at_a_time_and_in_batch_agree(tmp_path: Path) -> None:
    import sqlite3

    from serving.consent import ConsentStore

    path = tmp_path / "consent.sqlite"
    with sqlite3.connect(path) as con:  # the layout build_consent_store writes
        con.execute("CREATE TABLE consent (customer_key TEXT, purpose TEXT, status TEXT, recorded_at TEXT, "
                    "PRIMARY KEY (customer_key, purpose)) WITHOUT ROWID")  # fmt: skip
        decisions = [("a", "profiling", "granted"), ("a", "marketing", "withdrawn"), ("b", "marketing", "granted")]
        con.executemany("INSERT INTO consent VALUES (?, ?, ?, '2024-01-01')", decisions)
        con.execute("CREATE TABLE customers (customer_key TEXT PRIMARY KEY, birth_date TEXT) WITHOUT ROWID")
        con.executemany("INSERT INTO customers VALUES (?, ?)", [("a", "2010-06-01"), ("c", None), ("d", "1980-01-02")])
    store = ConsentStore(path)
    keys = ["a", "b", "c", "d", "unknown", "a"]
    one = {k: store.lookup(k) for k in keys}
    assert one["a"] == CustomerConsent({"profiling": "granted", "marketing": "withdrawn"}, dt.date(2010, 6, 1))
    assert one["b"] == CustomerConsent({"marketing": "granted"}) and one["unknown"] == CustomerConsent()
    assert store.lookup_many(keys) == one
    assert ConsentStore(tmp_path / "absent.sqlite").lookup_many(["a"]) == {"a": CustomerConsent()}
    # one row per customer, decoded: what the decision service reads for a campaign
    from serving.consent import parse_statuses

    summaries = store.summaries_many(keys)
    assert set(summaries) == set(keys)
    for key, (text, born) in summaries.items():
        assert parse_statuses(text) == one[key].statuses
        assert (dt.date.fromisoformat(born) if born else None) == one[key].birth_date
    assert ConsentStore(tmp_path / "absent.sqlite").summaries_many(["a"]) == {"a": (None, None)}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_online_lookups_one_at_a_time_and_in_batch_agree(tmp_path: Path, backend: str) -> None:
    from features.featurestore.online import RedisOnlineStore, SQLiteOnlineStore

    if backend == "redis":
        store: Any = RedisOnlineStore("redis://127.0.0.1:6379/0", namespace=f"t{uuid.uuid4().hex[:8]}")
    else:
        store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    try:
        store.replace_set(
            "a@1", [("k1", '{"as_of": "2025-01-01", "x": 1}'), ("k2", '{"as_of": "2025-01-01", "x": 2}')], {}
        )
        store.replace_set("b@1", [("k2", '{"as_of": "2025-02-01", "y": "z"}'), ("k3", '{"y": null}')], {})
        keys = ["k3", "k1", "nobody", "k2", "k1"]
        assert store.lookup_many(keys) == {k: store.lookup(k) for k in keys if store.lookup(k) is not None}
        assert store.lookup_many(keys, set_keys=["b@1"]) == {"k2": {"b@1": {"as_of": "2025-02-01", "y": "z"}},
                                                            "k3": {"b@1": {"y": None}}}  # fmt: skip
    finally:
        if backend == "redis":
            store.drop_namespace()
        store.close()


def test_the_inference_log_writes_within_its_flush_interval(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, "hash", salt="s", flush_seconds=0.05)
    log.record({"n": 1, "x": float("nan"), "v": np.float64(0.5)})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not list(tmp_path.glob("*.jsonl")):
        time.sleep(0.02)
    log.close()
    (line,) = [json.loads(x) for p in tmp_path.glob("*.jsonl") for x in p.read_text().splitlines()]
    assert line == {"n": 1, "x": None, "v": 0.5}  # NaN as null: the log stays valid JSON


def test_refresh_loads_the_champions_there_are_and_is_not_degraded_by_missing_ones(tmp_path: Path) -> None:
    """A registered model without @champion, and a model never registered, are 'nothing promoted yet'."""
    settings = Settings(home=tmp_path)
    champions = Champions(settings, registered_names(settings, ["churn", "recommendation"]))
    champions.registry.client.create_registered_model("custintel-churn")  # registered, never promoted
    assert champions.refresh() == []
    assert champions.state.degraded is None and champions.state.polled_at is not None
    assert not champions.ready  # read, but nothing to serve


def test_stored_texts_are_the_model_inputs_the_log_would_write(tmp_path: Path) -> None:
    """The JSON text kept for the log parses to what `input_values` takes from the merged row."""
    import orjson

    from features.featurestore.online import SQLiteOnlineStore, set_view

    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    store.replace_set("a@1", [("k1", '{"as_of":"2025-01-01","x":1,"y":null}'),
                              ("k2", '{"as_of":"2025-01-01","x":2.5,"y":7}')],
                      {"columns": ["x", "y"], "numeric": ["x", "y"]})  # fmt: skip
    store.replace_set("b@1", [("k1", '{"as_of":"2025-02-01","plan":"gold \\"x\\""}')], {"columns": ["plan"]})
    store.replace_set("i@1", [("k1", '{"as_of":"2025-02-01","items":[{"p":1}]}')],
                      {"columns": ["items"], "grouped": True})  # fmt: skip
    model = ServedModel("churn", "m", "1", None, ["x", "y", "plan"], None, None, "now")
    view = set_view(store.sets(), model.inputs)
    found = store.merged_many(["k1", "k2", "k3"], view)
    assert set(found.rows) == {"k1", "k2"} and "items" not in found.rows["k1"]
    assert found.rows["k1"]["_as_of"] == "2025-02-01" and found.rows["k2"]["_as_of"] == "2025-01-01"
    assert set(found.texts) == {"k1"}  # k2 lacks set b: its entry takes the row's values (plan: None)
    assert orjson.loads(found.texts["k1"]) == model.input_values(found.rows["k1"]) == {"x": 1, "y": None,
                                                                                       "plan": 'gold "x"'}  # fmt: skip
    store.close()


def test_log_entries_from_texts_equal_entries_from_rows(tmp_path: Path) -> None:
    from serving.inference_log import audit_entries

    model = ServedModel("churn", "m", "1", None, ["x", "plan"], None, None, "now")
    rows = [{"x": 1.5, "plan": "a", "_as_of": "2025-01-01"}, {"x": None, "plan": None, "_as_of": "2025-01-01"}]
    texts = ['{"x":1.5,"plan":"a"}', None]
    logs = []
    for i, given in enumerate((texts, None)):
        log = InferenceLog(tmp_path / str(i), "hash", salt="s")
        policy = load_serving_policy(None)
        log.record_many(audit_entries(policy, log, "c", "/churn/score", model, ["k1", "k2"],
                                      [{"score": 0.1}, {"score": 0.2}], [False, False], rows, given))  # fmt: skip
        log.close()
        logs.append([json.loads(x) for p in (tmp_path / str(i)).glob("*.jsonl") for x in p.read_text().splitlines()])
    for a, b in zip(*logs, strict=True):
        assert {k: v for k, v in a.items() if k != "at"} == {k: v for k, v in b.items() if k != "at"}
    assert logs[0][0]["inputs"] == {"x": 1.5, "plan": "a"} and logs[0][1]["inputs"] == {"x": None, "plan": None}


def test_worker_processes_append_whole_lines_to_one_log(tmp_path: Path) -> None:
    """Several service workers write the same day file: every line stays whole."""
    import multiprocessing

    # spawned, not forked: a fork copies whatever an earlier test left in this process (threads, a JVM gateway), and
    # in the full suite forked writers died before their first line; the service's workers are separate processes
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_log, args=(tmp_path, w)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    errors = {p.name: p.read_text() for p in tmp_path.glob("worker-*.error")}
    assert [w.exitcode for w in workers] == [0, 0, 0], errors
    lines = [json.loads(x) for p in tmp_path.glob("*.jsonl") for x in p.read_text().splitlines()]
    assert sorted((x["w"], x["n"]) for x in lines) == [(w, n) for w in range(3) for n in range(3000)]


def _write_log(folder: Path, worker: int) -> None:
    try:
        log = InferenceLog(folder, "hash", salt="s", flush_seconds=0.01)
        for n in range(0, 3000, 100):
            log.record_many([{"w": worker, "n": n + i, "pad": "x" * 3000} for i in range(100)])
            time.sleep(0.002)
        log.close(30)
    except BaseException:  # a forked child's traceback goes nowhere pytest shows: keep it for the assertion
        import traceback

        (folder / f"worker-{worker}.error").write_text(traceback.format_exc())
        raise


def test_consent_for_one_purpose_decides_like_the_full_lookup(tmp_path: Path) -> None:
    import sqlite3

    from serving.consent import ConsentStore

    path = tmp_path / "consent.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE consent (customer_key TEXT, purpose TEXT, status TEXT, recorded_at TEXT, "
                    "PRIMARY KEY (customer_key, purpose)) WITHOUT ROWID")  # fmt: skip
        con.execute("CREATE TABLE customers (customer_key TEXT PRIMARY KEY, birth_date TEXT) WITHOUT ROWID")
        decisions = [("a", "profiling", "granted"), ("b", "profiling", "withdrawn"), ("b", "marketing", "granted")]
        con.executemany("INSERT INTO consent VALUES (?, ?, ?, 'x')", decisions)
        con.executemany("INSERT INTO customers VALUES (?, ?)", [("a", "2015-01-01"), ("c", ""), ("d", "1980-05-05")])
    store = ConsentStore(path)
    keys = ["a", "b", "c", "d", "e", "a"]
    full = store.lookup_many(keys)
    for key, (status, born) in store.purpose_many(keys, "profiling").items():
        assert full[key].statuses.get("profiling") == status
        assert full[key].birth_date == (dt.date.fromisoformat(born) if born else None)


def test_a_snapshot_holds_what_the_store_holds_and_knows_its_state(tmp_path: Path, monkeypatch: Any) -> None:
    from features.featurestore.online import SQLiteOnlineStore, set_view
    from serving.snapshot import Snapshots, StoreMoved, build_snapshot

    prepare = FramePreparer(["risk", "count"], ["plan"]).fit(
        pd.DataFrame({"risk": [0.1, 0.2], "count": [1, 2], "plan": ["a", "b"]})
    )
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    store.replace_set("n@1", [("k1", '{"as_of":"2025-01-01","risk":1.5,"count":3}'),
                              ("k2", '{"as_of":"2025-01-01","risk":null,"count":true}')],
                      {"columns": ["risk", "count"], "numeric": ["risk", "count"]})  # fmt: skip
    store.replace_set("c@1", [("k1", '{"as_of":"2025-02-01","plan":"b"}'), ("k3", '{"as_of":"2025-02-01","plan":"z"}')],
                      {"columns": ["plan"], "numeric": []})  # fmt: skip
    view = set_view(store.sets(), ["risk", "count", "plan"])
    assert view.set_keys == ("c@1", "n@1") and view.exact
    snap = build_snapshot(store, "m@1", prepare, view.set_keys, max_customers=10)
    assert snap is not None and snap.customers == 3 and snap.state == store.state(view.set_keys)
    rows = store.merged_many(["k1", "k2", "k3"], view).rows
    matrix, inputs, cutoffs = snap.rows([snap.index[k] for k in ("k3", "k1", "k2")])
    np.testing.assert_array_equal(matrix, prepare.records_matrix([rows["k3"], rows["k1"], rows["k2"]]))
    assert cutoffs == ["2025-02-01", "2025-02-01", "2025-01-01"]
    assert inputs[1] == {"risk": 1.5, "count": 3.0, "plan": "b"} and inputs[2]["plan"] is None
    assert np.isnan(inputs[0]["risk"]) and inputs[0]["plan"] == "z" and np.isnan(inputs[2]["risk"])
    assert build_snapshot(store, "m@1", prepare, view.set_keys, max_customers=2) is None  # over the limit

    held = Snapshots(10)
    held._current["m@1"] = snap
    assert held.get("m@1", snap.state) is snap
    store.replace_set("c@1", [("k1", '{"as_of":"2025-03-01","plan":"a"}')], {"columns": ["plan"], "numeric": []})
    assert held.get("m@1", store.state(view.set_keys)) is None  # the store moved on: never the old copy

    real = store.state(view.set_keys)
    states = iter([real, real, (("c@1", "a table written meanwhile"),)])  # read before, for the keys, after
    monkeypatch.setattr(store, "state", lambda _: next(states))
    with pytest.raises(StoreMoved):
        build_snapshot(store, "m@1", prepare, view.set_keys, max_customers=10)
    store.close()


def test_log_entries_read_back_through_the_logs_own_layout(tmp_path: Path) -> None:
    """What the writer makes (`audit_entry`, `audit_entries`) is what a reader of `entries_sql` gets, typed."""
    import duckdb

    from serving.inference_log import (
        ENTRY_TYPES,
        SUPPRESSED,
        InferenceEntry,
        audit_entries,
        audit_entry,
        day_file,
        day_files,
        entries_sql,
    )

    assert list(ENTRY_TYPES) == list(InferenceEntry.__annotations__)  # the reader's fields are the entry's
    policy = load_serving_policy(None)
    model = ServedModel("churn", "m", "3", None, ["x", "plan"], None, None, "now")
    log = InferenceLog(tmp_path, "plain", salt="s")
    log.record(audit_entry(policy, log, "key-1", "/churn/score", model, "k0", {}, True, False))
    log.record(audit_entry(policy, log, "key-1", "/churn/score", model, "k1", {"score": 0.25}, False, False,
                           {"x": 1.5, "plan": "a", "_as_of": "2025-01-01"}))  # fmt: skip
    log.record_many(audit_entries(policy, log, "key-2", "/churn/score/batch", model, ["k2", "k3"],
                                  [{"score": 0.5}, {"score": 0.75}], [False, True],
                                  [{"x": None, "plan": None, "_as_of": "2025-02-01"}, {"x": 2.0}]))  # fmt: skip
    log.close()
    today = dt.datetime.now(dt.UTC)
    assert day_files(tmp_path, today, today) == [day_file(tmp_path, today.date())]
    assert day_files(tmp_path, today + dt.timedelta(days=3), today + dt.timedelta(days=4)) == []
    with duckdb.connect() as con:
        sql = f"SELECT * FROM {entries_sql(day_files(tmp_path, today, today), list(ENTRY_TYPES))} ORDER BY customer"
        frame = con.execute(sql).df()
        kinds = {row[0]: row[1] for row in con.execute(f"DESCRIBE {sql}").fetchall()}
    assert {k: str(v) for k, v in kinds.items()} == ENTRY_TYPES
    assert frame["customer"].tolist()[:2] == ["k1", "k2"] and frame["customer"].isna().sum() == 2
    suppressed = frame[frame["status"] == SUPPRESSED]
    assert len(suppressed) == 1 and suppressed["answer"].isna().all() and suppressed["customer"].isna().all()
    given = frame[frame["status"].isna()].set_index("answer")
    assert given.loc['{"score":0.25}', ["customer", "as_of", "caller", "version"]].tolist() == [
        "k1", "2025-01-01", "key-1", "3"]  # fmt: skip
    assert json.loads(given.loc['{"score":0.25}', "inputs"]) == {"x": 1.5, "plan": "a"}
    assert json.loads(given.loc['{"score":0.5}', "inputs"]) == {"x": None, "plan": None}
    masked = given.loc['{"score":0.75}']
    assert masked["customer"] is None and masked["inputs"] is None and masked["endpoint"] == "/churn/score/batch"


def test_a_batch_gets_the_workers_cores_only_when_scored_alone() -> None:
    from serving.scoring import PARALLEL_ROWS, ScoringThreads

    threads = ScoringThreads(share=4)
    with threads.lease(PARALLEL_ROWS - 1) as small:
        assert small == 1
    with threads.lease(PARALLEL_ROWS) as first:
        assert first == 4
        with threads.lease(10 * PARALLEL_ROWS) as second:
            assert second == 1  # another batch is being scored: one thread each
    with pytest.raises(RuntimeError), threads.lease(PARALLEL_ROWS):
        raise RuntimeError("a failed batch")
    with threads.lease(PARALLEL_ROWS) as again:
        assert again == 4  # a failed batch gives its lease back


def test_consent_checks_of_a_batch_equal_checks_one_by_one(tmp_path: Path) -> None:
    import sqlite3

    from serving.consent import ConsentChecks, ConsentStore

    path = tmp_path / "consent.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE consent (customer_key TEXT, purpose TEXT, status TEXT, recorded_at TEXT, "
                    "PRIMARY KEY (customer_key, purpose)) WITHOUT ROWID")  # fmt: skip
        con.execute("CREATE TABLE customers (customer_key TEXT PRIMARY KEY, birth_date TEXT) WITHOUT ROWID")
        decisions = [("a", "profiling", "granted"), ("b", "profiling", "withdrawn"), ("m", "profiling", "granted")]
        con.executemany("INSERT INTO consent VALUES (?, ?, ?, 'x')", decisions)
        con.executemany("INSERT INTO customers VALUES (?, ?)", [("m", f"{dt.date.today().year - 10}-01-01")])
    strict = load_serving_policy(None).model_copy(update={"unknown_consent": {"profiling": "suppress"}})
    checks = ConsentChecks(ConsentStore(path), strict)
    keys = ["a", None, "b", "m", "unknown", "a"]
    one_by_one = [checks.check(k, "profiling") for k in keys]
    assert one_by_one[0] == (None, False) and one_by_one[1] == (None, False)  # granted; anonymous
    assert "withdrew" in str(one_by_one[2][0]) and "minor" in str(one_by_one[3][0])
    assert "no recorded consent" in str(one_by_one[4][0])
    assert checks.check_many(keys, "profiling") == one_by_one
    assert checks.check_many(keys, "profiling") == one_by_one  # again, from the decisions kept for today


def test_monitoring_reads_the_log_without_loading_the_service() -> None:
    """The log's reader side (`serving.inference_log`) stands alone: no service runtime, no MLflow."""
    import subprocess
    import sys

    code = (
        "import sys, monitoring.served, serving.inference_log, serving.snapshot; "
        "print(sorted(m for m in ('serving.runtime', 'serving.champions', 'mlflow', 'bentoml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _Proba:
    """A propensity model: the probability grows with `x` and the product's number."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        p = 1 / (1 + np.exp(-(frame["x"].astype(float) / 10 + frame["product_id"].str[1:].astype(float) / 5)))
        return np.column_stack([1 - p, p])


def _propensity_runtime(audits: list[object]) -> Any:
    from types import SimpleNamespace

    from serving.policy import ServingPolicy

    model = SimpleNamespace(name="custintel-propensity", version="1", columns=["x", "product_id"], inputs=["x"],
                            model=_Proba(), catalogue=["p1", "p2", "p3"])  # fmt: skip
    stored = {
        f"C{i}": {"x": float(i), "items": [{"product_id": "p2", "holds": True}] if i % 2 else []} for i in range(40)
    }

    def feature_row(m: object, key: str, given: object, field: str) -> tuple[dict[str, Any], dict[str, Any]]:
        from serving.errors import ServingError

        if key not in stored:
            raise ServingError(404, f"{field}.customer_key", f"unknown customer {key!r}")
        return {"x": stored[key]["x"]}, stored[key]

    return SimpleNamespace(
        champions=SimpleNamespace(served=lambda family: model),
        policy=ServingPolicy(),
        consent=SimpleNamespace(check=lambda key, purpose: (None, False)),
        feature_row=feature_row,
        audit=lambda *args: audits.append(args),
    )


def test_a_propensity_batch_is_scored_in_one_pass_like_one_customer_at_a_time(monkeypatch: Any) -> None:
    import threading
    import time

    from serving import answers
    from serving.errors import ServingError
    from serving.schemas import PropensityRequest

    monkeypatch.setattr(answers, "product_catalogue", lambda model: model.catalogue)
    audits: list[object] = []
    runtime = _propensity_runtime(audits)
    requests = [PropensityRequest(customer_key=f"C{i}", top=2) for i in range(40)] + [
        PropensityRequest(customer_key="C-UNKNOWN")
    ]
    together = answers.score_propensity(runtime, requests, "key-1", batch=True)
    alone = [answers.score_propensity(runtime, [r], "key-1")[0] for r in requests[:-1]]
    assert [a.model_dump() for a in together[:-1]] == [a.model_dump() for a in alone]
    assert together[-1].status == "not_found" and together[1].products[0].product_id == "p3"  # p2 is held
    assert {p.product_id for p in together[1].products} == {"p1", "p3"}
    assert len(audits) == 80  # 40 in the batch, 40 alone; the unknown customer is not logged
    audits.clear()
    with pytest.raises(ServingError) as late:
        answers.score_propensity(runtime, requests, "key-1", True, answers.Deadline(time.monotonic() - 1))
    assert late.value.status == 504 and audits == []  # computed after the caller's timeout: nothing served
    gone = threading.Event()
    gone.set()
    with pytest.raises(ServingError) as left:
        answers.score_propensity(runtime, requests, "key-1", True, answers.Deadline(time.monotonic() + 60, gone))
    assert left.value.status == 499 and audits == []  # the caller hung up: nothing served
