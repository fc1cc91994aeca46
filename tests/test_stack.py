"""The production stack, started by `custintel stack up` on free ports, and one loop through it.

One stack for the module (its own PostgreSQL databases, prefixed ci_stack_<pid>_, dropped at the end):
MLflow and Prefect servers on PostgreSQL, one Prefect worker on a process pool, a Spark standalone
master and worker, the BentoML service. `custintel deploy` registers the flows; the loop ingest ->
resolve -> features -> train -> promote -> serve -> monitor runs as deployment runs on the worker, and
its results equal the embedded run (plain steps in this process, MLflow on SQLite) on the same world:
the same gate decision, the same churn metrics (within 1e-9: the same seeds, the same data), the same
served answers, the same monitoring decision. The loop's feature build is first killed mid-run (its
flow-run process, SIGKILL): Prefect marks the run crashed, the rerun completes, and the lake holds
the rerun's files only. Then the bad conditions: `stack up` twice, a port in use, the tracking server
down (a training run fails naming the URI after its retries, the service keeps answering).

Spark is started and health-checked; the loop itself runs on DuckDB (the Spark engine's parity is
issue 23's Spark work, tested beside it).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from custintel.settings import Settings
from features.lake import ingest_drop
from features.synthetic import WorldConfig, generate_world
from flows.cli import app
from flows.features import PLAIN_STEPS as FEATURE_STEPS
from flows.features import run_feature_build
from flows.promote import PLAIN_STEPS as GATE_STEPS
from flows.promote import run_gate
from flows.stack import StackConfig, drop_databases, probe, read_state, stop_components
from flows.train import PLAIN_STEPS as TRAIN_STEPS
from flows.train import run_training
from governance.gate import Waiver
from models.registry import Registry
from tests.conftest import SMALL_TRAINING_YAML, start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "stack-test-key"
NAME = "custintel-churn"
CUTOFFS = ["2024-09-01", "2024-11-01", "2025-02-01", "2025-06-01"]
SERVE_AS_OF = "2025-07-01"
DAYS = [*CUTOFFS, SERVE_AS_OF]  # training cutoffs, then the serving day (the online store's)
WAIVER = Waiver("stack-test", "a small test world: too few rows per protected group to audit")
METRIC_TOLERANCE = 1e-9  # same data, same seeds, one trial: the two topologies compute the same model
CLI = str(Path(sys.executable).with_name("custintel"))


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [int(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class Stack:
    """The running stack, its config and the environment that points a process at it."""

    root: Path
    home: Path
    config_path: Path
    config: StackConfig
    env: dict[str, str]
    world: Path
    training: Path
    policy: Path

    def cli(self, *args: str, home: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "--home", str(home or self.home), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    def settings(self, home: Path | None = None) -> Settings:
        return Settings(home=home or self.home, training_config=self.training, monitoring_policy=self.policy,
                        mlflow_tracking_uri=self.env["CUSTINTEL_MLFLOW_TRACKING_URI"])  # fmt: skip


def _stack_config(ports: list[int], prefix: str) -> dict[str, Any]:
    names = ["mlflow", "prefect", "prefect_worker", "spark_master", "spark_master_ui", "spark_worker_ui", "serving"]
    return {
        "ports": dict(zip(names, ports, strict=True)),
        "postgres": {"mlflow_database": f"{prefix}_mlflow", "prefect_database": f"{prefix}_prefect"},
        # a flow-run process killed by SIGKILL may keep its slot on the worker: room for the monitor and its child
        "prefect": {"work_pool": prefix.replace("_", "-"), "workers": 1, "query_seconds": 1, "runs_per_worker": 4},
        "spark": {"enabled": True, "worker_cores": 1, "worker_memory": "512m"},
        "serving": {"enabled": True, "workers": 1},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    prefix = f"ci_stack_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    config_path = root / "stack.yaml"
    config_path.write_text(yaml.safe_dump(_stack_config(_free_ports(7), prefix)), encoding="utf-8")
    config = StackConfig.model_validate(yaml.safe_load(config_path.read_text()))
    world = root / "drop"
    generate_world(WorldConfig(customers=1500, chunk_size=1000, seed=23), world)
    training = root / "training.yaml"
    training.write_text(SMALL_TRAINING_YAML, encoding="utf-8")
    policy = yaml.safe_load((Path(__file__).parents[1] / "monitoring" / "policy.yaml").read_text())
    policy["drift"]["min_rows"] = 200
    policy["families"]["churn"]["triggers"]["max_age_days"] = 1e-5  # the fresh champion is "too old": retrain
    policy["retrain"]["trials"] = 1
    policy_path = root / "monitoring.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    env = {**os.environ, "CUSTINTEL_SERVING_API_KEYS": KEY, "CUSTINTEL_SERVING_POLL_SECONDS": "1",
           "CUSTINTEL_IDENTITY_U_MAX_PAIRS": "1e6", "PREFECT_HOME": str(root / "client-prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # the MLflow client's own retries (7, backing off for minutes) would hide the flows' retry policy
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip
    for key in ("CUSTINTEL_HOME", "CUSTINTEL_MLFLOW_TRACKING_URI", "PREFECT_API_URL", "CUSTINTEL_SPARK_MASTER"):
        env.pop(key, None)
    stack = Stack(root, root / "home", config_path, config, env, world, training, policy_path)
    up = stack.cli("stack", "up", "--config", str(config_path))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = read_state(Settings(home=stack.home))
        assert state is not None
        env.update(state["env"])
        deployed = stack.cli("deploy")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        yield stack
    finally:
        down = stack.cli("stack", "down")
        drop_databases(config)
        assert down.returncode == 0, down.stdout + down.stderr


def _prefect(stack: Stack) -> Any:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]})


def _run(stack: Stack, deployment: str, timeout: float = 300, **parameters: Any) -> Any:
    """A deployment run on the stack's worker, waited for; its final flow run."""
    from prefect.deployments import run_deployment

    with _prefect(stack):
        return run_deployment(deployment, parameters=parameters, timeout=timeout, poll_interval=1)


def _flow_run(stack: Stack, run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    with _prefect(stack), get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _task_runs(stack: Stack, run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with _prefect(stack), get_client(sync_client=True) as client:
        return list(client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                                          sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200))  # fmt: skip


def _embedded(stack: Stack) -> Settings:
    """The same loop in this process on the embedded defaults (MLflow on SQLite under the home)."""
    settings = Settings(home=stack.root / "embedded", training_config=stack.training, monitoring_policy=stack.policy)
    ingest_drop(stack.world, settings)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTINTEL_IDENTITY_U_MAX_PAIRS", "1e6")
        result = CliRunner().invoke(app, ["--home", str(settings.home_dir), "resolve", "--engine", "local"])
    assert result.exit_code == 0, result.output
    run_feature_build(settings, [dt.date.fromisoformat(d) for d in DAYS], True, FEATURE_STEPS, lambda _: None)
    run_training(settings, "churn", TRAIN_STEPS, lambda _: None, trials=1)
    run_gate(settings, NAME, "1", WAIVER, "stack-test", GATE_STEPS)
    return settings


def _metrics(settings: Settings) -> dict[str, float]:
    registry = Registry(settings)
    run_id = registry.version(NAME, "1").run_id
    assert run_id
    return registry.run(run_id).metrics


def _scores(url: str, keys: list[str]) -> list[dict[str, Any]]:
    body = {"customers": [{"customer_key": k} for k in keys]}
    answer = httpx.post(url + "/churn/score/batch", json=body, headers={"X-API-Key": KEY}, timeout=60)
    assert answer.status_code == 200, answer.text
    return [{k: r.get(k) for k in ("customer_key", "status", "score", "reason")} for r in answer.json()["results"]]


def _feature_files(home: Path) -> list[str]:
    """The feature stores' files; SQLite's -wal/-shm are left out (they exist while a reader, the service, has
    the online store open)."""
    files = (p for p in (home / "features").rglob("*") if p.is_file())
    return sorted(str(p.relative_to(home)) for p in files if not p.name.endswith(("-wal", "-shm")))


def _kill_flow_run_process(stack: Stack, run_id: Any) -> None:
    """SIGKILL the process the worker started for this flow run (a machine lost mid-flow)."""
    import psutil

    state = read_state(Settings(home=stack.home))
    assert state is not None
    worker = psutil.Process(int(state["components"]["prefect-worker-1"]["pid"]))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for child in worker.children(recursive=True):
            try:
                if str(run_id) in " ".join(child.environ().values()) or "prefect" in " ".join(child.cmdline()):
                    os.kill(child.pid, signal.SIGKILL)
                    return
            except psutil.Error:
                continue
        time.sleep(0.2)
    pytest.fail("the worker started no process for the flow run")


def test_the_loop_on_the_stack_equals_the_embedded_run(stack: Stack) -> None:
    from prefect.deployments import run_deployment

    settings = stack.settings()
    passed = settings.to_flow()
    assert _run(stack, "ingest_sources/custintel", source_dir=str(stack.world), settings=passed).state.is_completed()
    assert _run(stack, "resolve_identities/custintel", settings=passed).state.is_completed()

    # features: the first run's process is killed mid-build; Prefect marks it crashed; the rerun completes
    with _prefect(stack):
        started = run_deployment("build_features/custintel", parameters={"settings": passed, "as_of": DAYS},
                                 timeout=0)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run := _flow_run(stack, started.id)).state.is_running():
        assert time.monotonic() < deadline and not run.state.is_final(), run.state
        time.sleep(0.3)
    time.sleep(2)
    _kill_flow_run_process(stack, started.id)
    deadline = time.monotonic() + 120
    while not (run := _flow_run(stack, started.id)).state.is_final():
        assert time.monotonic() < deadline, run.state
        time.sleep(0.5)
    assert run.state.is_crashed(), run.state
    rerun = _run(stack, "build_features/custintel", settings=passed, as_of=DAYS)
    assert rerun.state.is_completed(), rerun.state

    trained = _run(stack, "train_model/custintel", settings=passed, family="churn", trials=1)
    assert trained.state.is_completed(), trained.state
    promoted = _run(stack, "audit_and_promote/custintel", settings=passed, model=NAME, version="1", actor="stack-test",
                    approver=WAIVER.approver, reason=WAIVER.reason)  # fmt: skip
    assert promoted.state.is_completed(), promoted.state

    embedded = _embedded(stack)
    # the feature stores after a killed build and its rerun: the same files as the embedded build's, nothing
    # half-written
    assert _feature_files(stack.home) == _feature_files(embedded.home_dir)
    # the same gate decision (on this small world: fairness cannot be audited, waived in both), the same model
    assert _gate_decisions(settings) == _gate_decisions(embedded)
    assert _gate_decisions(settings)[0]["result"] == "waived", _gate_decisions(settings)
    stack_registry, embedded_registry = Registry(settings), Registry(embedded)
    assert stack_registry.alias_version(NAME, "champion") == embedded_registry.alias_version(NAME, "champion") == "1"
    assert [v for v in ("2",) if _has_version(stack_registry, v)] == []  # the killed run registered nothing
    ours, theirs = _metrics(settings), _metrics(embedded)
    assert ours.keys() == theirs.keys()
    for key in (k for k in ours if "seconds" not in k):  # wall times differ; every score is the same
        assert abs(ours[key] - theirs[key]) <= METRIC_TOLERANCE * max(1.0, abs(theirs[key])), key

    # serve: the stack's service (pointed at the tracking server) and an embedded one answer alike
    from serving.consent import build_consent_store
    from serving.policy import load_serving_policy

    for home in (settings, embedded):
        build_consent_store(home, load_serving_policy(None))
    served = stack.config.ports.serving
    url = f"http://127.0.0.1:{served}"
    keys = _customer_keys(settings)
    deadline = time.monotonic() + 60
    while (ours_served := _scores(url, keys))[0]["status"] != "scored":
        assert time.monotonic() < deadline, ours_served[:3]
        time.sleep(1)
    env = {"CUSTINTEL_HOME": str(embedded.home_dir), "CUSTINTEL_SERVING_API_KEYS": KEY,
           "CUSTINTEL_TRAINING_CONFIG": str(stack.training)}  # fmt: skip
    process, embedded_url = start_service(env, stack.root / "embedded-serve.log")
    try:
        theirs_served = _scores(embedded_url, keys)
        # the same answers; scores equal to 1e-12 (the model's float64 sums may add in another order: seen 2e-17)
        strip = [[{k: v for k, v in one.items() if k != "score"} for one in a] for a in (theirs_served, ours_served)]
        assert strip[0] == strip[1]
        for theirs, ours in zip(theirs_served, ours_served, strict=True):
            if theirs["score"] is None:
                assert ours["score"] is None, (theirs, ours)
            else:
                assert ours["score"] == pytest.approx(theirs["score"], rel=1e-12, abs=1e-15), (theirs, ours)
    finally:
        process.terminate()
        process.wait(30)

    # monitor on the stack: its decision is the embedded monitor's on the same served window
    # executor "inprocess": the retrain and gate are deployment runs of the pool, executed in the monitor's own
    # flow-run process on the worker (the deployments.yaml default). With "external" (the child waits for a worker
    # slot) the one-worker stack here stopped submitting runs while the monitor waited (Prefect 3.8; open).
    monitored = _run(stack, "monitor_models/custintel", settings=passed, families=["churn"], executor="inprocess")
    assert monitored.state.is_completed(), monitored.state
    ours_decision = _monitoring_decisions(settings)[-1]
    theirs_decision = _embedded_monitoring(embedded)
    for key in ("family", "model", "version", "action", "fired"):
        assert ours_decision[key] == theirs_decision[key], (key, ours_decision, theirs_decision)
    assert ours_decision["action"] == "retrain"
    # ... and its retrain and gate were deployment runs of the pool, completed on the worker
    retrain = [e for e in _monitoring_decisions(settings, "retrain") if e["monitor_flow_run_id"] == str(monitored.id)]
    assert retrain and retrain[0].get("train_flow_run_id"), retrain
    children = [retrain[0]["train_flow_run_id"], *(g["flow_run_id"] for g in retrain[0].get("gate", []))]
    assert len(children) == 2, retrain
    for child in children:
        run = _flow_run(stack, child)
        assert run.work_pool_name == stack.config.prefect.work_pool and run.state.is_completed(), run


def _gate_decisions(settings: Settings) -> list[dict[str, Any]]:
    import json

    lines = (settings.home_dir / "governance" / "decisions.jsonl").read_text().splitlines()
    keep = ("model", "version", "result", "reasons")
    return [{**{k: e.get(k) for k in keep}, "checks": [(c.get("name"), c.get("passed")) for c in e.get("checks", [])]}
            for e in map(json.loads, lines)]  # fmt: skip


def _monitoring_decisions(settings: Settings, kind: str = "monitoring") -> list[dict[str, Any]]:
    import json

    path = settings.monitoring_dir / "decisions.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("kind") == kind]


def _embedded_monitoring(settings: Settings) -> dict[str, Any]:
    from flows.monitor import serving_log_rule
    from monitoring.decisions import decision_entry, window_bounds
    from monitoring.monitor import monitor_family
    from monitoring.policy import load_policy

    policy = load_policy(settings.monitoring_policy)
    now = dt.datetime.now(dt.UTC)
    since, until = window_bounds(policy, None, None, now)
    run = monitor_family(settings, policy, "churn", since, until, now, serving_log_rule(settings))
    assert run is not None
    return decision_entry(run, None)


def _has_version(registry: Registry, version: str) -> bool:
    try:
        registry.version(NAME, version)
    except Exception:  # noqa: BLE001 - a missing version raises
        return False
    return True


def _customer_keys(settings: Settings, n: int = 50) -> list[str]:
    import sqlite3

    with sqlite3.connect(settings.features_dir / "online.sqlite") as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if "customer_key" in [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]:
                return sorted(r[0] for r in con.execute(f'SELECT customer_key FROM "{table}"'))[:n]
    pytest.fail("no customer in the online store")


def test_up_twice_starts_no_second_copy_and_a_port_in_use_is_named(stack: Stack) -> None:
    before = read_state(Settings(home=stack.home))
    again = stack.cli("stack", "up", "--config", str(stack.config_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already up" in again.stdout
    assert read_state(Settings(home=stack.home)) == before
    status = stack.cli("stack", "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == len(before["components"]), status.stdout  # type: ignore[index]

    # another home on a config whose MLflow port someone else holds: named, exit 1, nothing started
    other = yaml.safe_load(stack.config_path.read_text())
    free = _free_ports(7)
    other["ports"] = dict(zip(other["ports"], free, strict=True))
    other_path = stack.root / "other.yaml"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free[0]))
        holder.listen()
        other_path.write_text(yaml.safe_dump(other))
        taken = stack.cli("stack", "up", "--config", str(other_path), home=stack.root / "other")
    assert taken.returncode == 1
    assert f"port {free[0]} (mlflow)" in taken.stdout and "already in use" in taken.stdout, taken.stdout
    assert not (stack.root / "other" / "stack" / "state.json").exists()
    assert all(_free(p) for p in free[1:])


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_tracking_server_down_fails_the_flow_naming_the_uri_and_the_service_keeps_serving(stack: Stack) -> None:
    """Runs last: it stops the tracking server (the module's teardown stops the rest)."""
    settings = stack.settings()
    state = read_state(settings)
    assert state is not None
    assert stop_components({"components": {"mlflow": state["components"]["mlflow"]}}, lambda _: None, grace=2)
    assert not probe(state["components"]["mlflow"]["health"])
    run = _run(stack, "train_model/custintel", settings=settings.to_flow(), family="churn", trials=1)
    assert run.state.is_failed(), run.state
    uri = stack.env["CUSTINTEL_MLFLOW_TRACKING_URI"]
    assert uri in (run.state.message or ""), run.state.message
    registering = [t for t in _task_runs(stack, run.id) if t.name.startswith("log-and-register")]
    assert registering and registering[0].run_count == 3, [(t.name, t.run_count) for t in registering]  # 1 + 2 retries
    # the service keeps answering from the champion it loaded
    url = f"http://127.0.0.1:{stack.config.ports.serving}"
    answers = _scores(url, _customer_keys(settings, 5))
    assert [a["status"] for a in answers] == ["scored"] * 5
    status = stack.cli("stack", "status")
    assert status.returncode == 1 and "mlflow" in status.stdout and "stopped" in status.stdout, status.stdout
