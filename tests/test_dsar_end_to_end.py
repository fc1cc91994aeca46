"""Access and erasure requests end to end, on a generated world served over real HTTP.

One home: MLflow tracking on PostgreSQL (a fresh database), the online store and the frequency caps
on Redis (a namespace of its own), the churn champion served by `custintel serve`, every online
customer scored, monitoring run on that traffic, the reviewers' site built. The people asked about
have records in several sources, one of them in the acquired company's (northwind), and the truth
says which source records are theirs:
- `dsar export` holds every one of their source records and nobody else's, and finds them in the
  feature stores, the inference log and MLflow;
- `dsar erase` (a file of requests; one erasure killed with SIGKILL half-way and run again) leaves
  `dsar verify` nothing to find in any store, by any identifier the truth knows;
- re-ingesting the same drop, resolving and rebuilding the features does not bring them back;
- the service answers `not_found` for them, and every other customer's keys, features and answers
  are what they were.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from custintel.settings import Settings
from features.lake import ingest_drop
from features.synthetic import WorldConfig, generate_world
from flows.cli import app
from flows.features import PLAIN_STEPS as FEATURE_STEPS
from flows.features import run_feature_build
from flows.train import PLAIN_STEPS as TRAIN_STEPS
from flows.train import run_training
from governance import store
from models.registry import Registry
from tests.conftest import SMALL_TRAINING_YAML, start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "dsar-test-key"
NAME = "custintel-churn"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
CUTOFFS = [dt.date(2024, 9, 1), dt.date(2024, 11, 1), dt.date(2025, 2, 1), dt.date(2025, 6, 1)]
SERVED_AT = dt.date(2025, 7, 1)
IDENTITY_TABLES = ("crm_accounts", "billing_accounts", "northwind_customers")


def _database() -> tuple[str, str]:
    import psycopg

    name = f"custintel_dsar_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return name, f"{PG}/{name}"


def _drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Home:
    """The served home, its world and truth, and the people the requests are about."""

    settings: Settings
    env: dict[str, str]
    world: Path
    root: Path
    url: str
    process: subprocess.Popen[bytes]
    people: dict[str, dict]  # request -> {"person_id", "records": {(table, id)}, "keys": {...}, "tokens": {...}}
    spare: dict  # one more person, erased by the killed-and-rerun erasure

    def cli(self, *args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, ["--home", str(self.settings.home_dir), *args], env=self.env)
        assert result.exit_code == code, result.output
        return result.output

    def scores(self, keys: list[str]) -> dict[str, dict]:
        body = {"customers": [{"customer_key": k} for k in keys]}
        answer = httpx.post(self.url + "/churn/score/batch", json=body, headers={"X-API-Key": KEY}, timeout=120)
        assert answer.status_code == 200, answer.text
        return {r["customer_key"]: r for r in answer.json()["results"]}


def _online_keys(settings: Settings) -> list[str]:
    from features.featurestore.store import open_online_store

    with open_online_store(settings) as online:
        sets = list(online.sets())
        return sorted(online.customer_keys(sets))


def _people(world: Path, settings: Settings, scored: set[str]) -> list[dict]:
    """People with records in northwind and another source whose records the resolution put under one key, and a
    score served (customers who objected to profiling are answered `suppressed` and leave no key in the log)."""
    truth = pd.read_parquet(world / "_truth" / "source_records.parquet")
    truth = truth[truth["source_table"].isin(IDENTITY_TABLES)]
    crosswalk = pd.read_parquet(settings.identity_dir / "crosswalk.parquet")
    records = pd.read_parquet(settings.identity_dir / "records.parquet")
    keyed = records[["record_key", "source_table", "record_id", "email", "phone"]].merge(crosswalk, on="record_key")
    keyed = keyed.merge(truth, on=["source_table", "record_id"])
    chosen = []
    for person_id, rows in keyed.groupby("person_id", sort=True):
        if rows["source_table"].nunique() < 2 or "northwind_customers" not in set(rows["source_table"]):
            continue
        keys = set(rows["customer_key"])
        theirs = set(map(tuple, truth.loc[truth["person_id"] == person_id, ["source_table", "record_id"]].to_numpy()))
        under_keys = set(
            map(tuple, keyed.loc[keyed["customer_key"].isin(keys), ["source_table", "record_id"]].to_numpy())
        )
        held = not rows["email"].isna().all() and not rows["phone"].isna().all()
        if len(keys) != 1 or not keys <= scored or theirs != under_keys or not held:
            continue
        tokens = {*keys, *(r for _, r in theirs), *rows["email"].dropna(), *rows["phone"].dropna()}
        chosen.append({"person_id": int(person_id), "records": theirs, "keys": keys, "tokens": tokens,
                       "email": rows["email"].dropna().iloc[0], "phone": rows["phone"].dropna().iloc[0]})  # fmt: skip
        if len(chosen) == 4:
            break
    assert len(chosen) == 4, "the world has too few correctly resolved people with a northwind record"
    return chosen


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("dsar")
    world = root / "drop"
    generate_world(WorldConfig(customers=2500, chunk_size=1000, seed=7), world)
    config = root / "training.yaml"
    config.write_text(SMALL_TRAINING_YAML, encoding="utf-8")
    db_name, tracking = _database()
    namespace = f"dsar-{uuid.uuid4().hex[:8]}"
    env = {
        "CUSTINTEL_HOME": str(root / "home"),
        "CUSTINTEL_MLFLOW_TRACKING_URI": tracking,
        "CUSTINTEL_REDIS_URL": "redis://127.0.0.1:6379/0",
        "CUSTINTEL_ONLINE_NAMESPACE": namespace,
        "CUSTINTEL_TRAINING_CONFIG": str(config),
        "CUSTINTEL_IDENTITY_U_MAX_PAIRS": "1e6",
    }
    settings = Settings(home=root / "home", training_config=config, mlflow_tracking_uri=tracking,
                        redis_url=env["CUSTINTEL_REDIS_URL"], online_namespace=namespace)  # fmt: skip
    ingest_drop(world, settings)
    result = CliRunner().invoke(app, ["--home", str(settings.home_dir), "resolve", "--engine", "local"], env=env)
    assert result.exit_code == 0, result.output
    run_feature_build(settings, CUTOFFS, False, FEATURE_STEPS, lambda _: None)
    run_training(settings, "churn", TRAIN_STEPS, lambda _: None, trials=1)
    store.move_champion(Registry(settings), NAME, "1", "the first champion of the DSAR test")
    run_feature_build(settings, [SERVED_AT], True, FEATURE_STEPS, lambda _: None)

    serve_env = {**env, "CUSTINTEL_SERVING_API_KEYS": KEY, "CUSTINTEL_SERVING_POLL_SECONDS": "1"}
    process, url = start_service(serve_env, root / "serve.log")
    served = Home(settings, env, world, root, url, process, {}, {})
    try:
        started = dt.datetime.now(dt.UTC).isoformat()
        keys, scored = _online_keys(settings), set()
        for i in range(0, len(keys), 1000):
            scored |= {k for k, a in served.scores(keys[i : i + 1000]).items() if a["status"] == "scored"}
        chosen = _people(world, settings, scored)
        for person, request in zip(chosen[:3], ("email", "phone", "record"), strict=True):
            if request == "record":
                table, record_id = sorted(t for t in person["records"] if t[0] == "northwind_customers")[0]
                served.people[f"{table}:{record_id}"] = person
            else:
                served.people[str(person[request])] = person
        served.spare = chosen[3]
        policy = yaml.safe_load((Path(__file__).parents[1] / "monitoring" / "policy.yaml").read_text())
        policy["drift"]["min_rows"] = 300
        policy["families"]["churn"]["triggers"]["performance"]["min_labelled"] = 300
        policy_path = root / "monitoring.yaml"
        policy_path.write_text(yaml.safe_dump(policy))
        result = CliRunner().invoke(
            app, ["--home", str(settings.home_dir), "monitor", "--family", "churn", "--start", started],
            env={**env, "CUSTINTEL_MONITORING_POLICY": str(policy_path)},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        served.cli("report")
        yield served
    finally:
        process.terminate()
        process.wait(30)
        _drop_database(db_name)


def _bundle(home: Home, request: str) -> dict:
    out = home.root / "bundles" / str(abs(hash(request)))
    home.cli("dsar", "export", request, "--out", str(out))
    return json.loads((out / "bundle.json").read_text())


def test_the_export_holds_every_source_record_of_the_person_and_nobody_elses(home: Home, prefect_api: None) -> None:
    truth = pd.read_parquet(home.world / "_truth" / "source_records.parquet")
    owner = dict(zip(zip(truth["source_table"], truth["record_id"], strict=True), truth["person_id"], strict=True))
    ids_by_table: dict[str, set[str]] = {}
    for table, record_id in owner:
        ids_by_table.setdefault(table, set()).add(record_id)
    for request, person in home.people.items():
        bundle = _bundle(home, request)
        (subject,) = bundle["subjects"]
        assert set(subject["customer_keys"]) == person["keys"]
        assert {tuple(r) for r in subject["source_records"] if r[0] in IDENTITY_TABLES} == person["records"]
        lake = bundle["stores"]["lake"]
        found: set[tuple[str, str]] = set()
        for holding in lake:
            table = next((t for t in IDENTITY_TABLES if t in holding["place"]), None)
            if table is None:
                continue
            for row in holding["rows"]:
                hits = {(table, str(v)) for v in row.values() if str(v) in ids_by_table[table]}
                assert hits, f"a {table} row in the export names no record: {row}"
                assert {owner[h] for h in hits} == {person["person_id"]}, f"someone else's row exported: {row}"
                found |= hits
        assert found == person["records"], f"{request}: lake rows missing from the export"
        stores = set(bundle["stores"])
        assert {"features.offline", "features.online", "inference_log", "mlflow"} <= stores, stores
        # consent history and transactions come along with the accounts
        assert any("consent" in h["place"] for h in lake)


def _other_state(home: Home, others: list[str]) -> tuple[pd.DataFrame, dict[str, dict]]:
    from features.featurestore.store import offline_root

    frames = []
    for path in sorted(offline_root(home.settings).rglob("*.parquet")):
        frame = pd.read_parquet(path)
        if "customer_key" in frame.columns:
            frame = frame[frame["customer_key"].isin(others)]
            frames.append(frame.assign(_file=str(path.relative_to(home.settings.home_dir))).astype(str))
    offline = pd.concat(frames, ignore_index=True).sort_values(["_file", "customer_key"]).reset_index(drop=True)
    answers = home.scores(others)
    return offline, {k: {f: a.get(f) for f in ("status", "score", "model_version")} for k, a in answers.items()}


def test_erasure_leaves_nothing_and_nothing_comes_back(home: Home, prefect_api: None) -> None:
    erased_keys = {k for p in home.people.values() for k in p["keys"]} | set(home.spare["keys"])
    others = [k for k in _online_keys(home.settings) if k not in erased_keys][:200]
    offline_before, answers_before = _other_state(home, others)
    crosswalk_before = pd.read_parquet(home.settings.identity_dir / "crosswalk.parquet")

    requests = home.root / "requests.txt"
    requests.write_text("\n".join(home.people) + "\n")
    out = home.cli("dsar", "erase", "--file", str(requests), "--yes")
    assert "erased" in out

    # one more erasure, killed with SIGKILL once a store is done, then run again
    spare_request = sorted(home.spare["keys"])[0]
    cli = Path(sys.executable).with_name("custintel")
    env = {**os.environ, **home.env}
    process = subprocess.Popen([str(cli), "dsar", "erase", spare_request, "--yes"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    dsar_dir = home.settings.governance_dir / "dsar"
    killed_mid_way = False
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        journals = [json.loads(p.read_text()) for p in dsar_dir.glob("*/journal.json") if p.stat().st_size]
        mine = [j for j in journals if j.get("status") == "in_progress"]
        if any(any(s["status"] == "done" for s in j["stores"]) for j in mine):
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            killed_mid_way = True
            break
        time.sleep(0.01)
    assert killed_mid_way, "the erasure ended before a store was done: nothing to resume"
    out = home.cli("dsar", "erase", spare_request, "--yes")
    assert "resuming" in out or "erased" in out

    everyone = {**home.people, spare_request: home.spare}
    for request, person in everyone.items():
        for token in sorted(person["tokens"]):
            home.cli("dsar", "verify", token)
        home.cli("dsar", "verify", request)
        for key in person["keys"]:
            assert home.scores([key])[key]["status"] == "not_found"

    offline_after, answers_after = _other_state(home, others)
    pd.testing.assert_frame_equal(offline_before, offline_after)
    assert answers_before == answers_after

    # the same drop again, resolved and built again: they do not come back, the others keep their keys
    ingest_drop(home.world, home.settings)
    home.cli("resolve", "--engine", "local")
    run_feature_build(home.settings, [*CUTOFFS, SERVED_AT], True, FEATURE_STEPS, lambda _: None)
    for person in everyone.values():
        for token in sorted(person["tokens"]):
            home.cli("dsar", "verify", token)
        for key in person["keys"]:
            assert home.scores([key])[key]["status"] == "not_found"
    crosswalk_after = pd.read_parquet(home.settings.identity_dir / "crosswalk.parquet")
    before = crosswalk_before[crosswalk_before["customer_key"].isin(others)].set_index("record_key")["customer_key"]
    after = crosswalk_after.set_index("record_key")["customer_key"].reindex(before.index)
    assert (before == after).all()
    assert home.scores(others) and _other_state(home, others)[1] == answers_before

    home.cli("audit", "verify")
    trail = home.settings.governance_dir / "audit_trail.jsonl"
    actions = [json.loads(line)["action"] for line in trail.read_text().splitlines()]
    assert actions.count("dsar_erase") >= 2 and actions.count("dsar_verify") >= 2 * len(everyone), actions
    text = trail.read_text()
    assert not any(t in text for p in everyone.values() for t in p["tokens"]), "a raw identifier in the audit trail"
