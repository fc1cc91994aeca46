"""Shared fixtures: one small generated world, ingested once, plus fresh homes on demand."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import settings as hypothesis_settings

from custintel.settings import Settings
from features.synthetic import WorldConfig, generate_world
from features.synthetic.world import WorldSummary

# Timing is not what the property tests check: on a loaded 2-core machine one example can take 300 ms.
hypothesis_settings.register_profile("custintel", deadline=None)
hypothesis_settings.load_profile("custintel")

# Three chunks of 1000 persons; a malformed rate high enough that every injection kind shows up in
# every table that can receive it, even the small acquired-company table.
WORLD_CONFIG = WorldConfig(customers=3000, chunk_size=1000, seed=11, malformed_rate=0.04, duplicate_row_rate=0.004)


@dataclass(frozen=True)
class World:
    """A generated drop and its truth."""

    cfg: WorldConfig
    path: Path
    summary: WorldSummary

    @property
    def truth(self) -> Path:
        return self.path / "_truth"

    def truth_frame(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.truth / f"{name}.parquet")


@dataclass(frozen=True)
class Ingested:
    """The world above, ingested once into its own home."""

    world: World
    settings: Settings
    report: object  # features.lake.IngestionReport


def make_settings(root: Path, name: str = "home") -> Settings:
    """A fresh Settings whose home is `root/name` (nothing read from the environment matters)."""
    return Settings(home=root / name)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, keyed by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    out = tmp_path_factory.mktemp("world") / "drop"
    summary = generate_world(WORLD_CONFIG, out)
    return World(WORLD_CONFIG, out, summary)


@pytest.fixture(scope="session")
def ingested(world: World, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    from features.lake import ingest_drop

    settings = make_settings(tmp_path_factory.mktemp("ingested"))
    report = ingest_drop(world.path, settings)
    return Ingested(world, settings, report)


@pytest.fixture
def new_settings(tmp_path: Path) -> Callable[[str], Settings]:
    """Factory for fresh homes under this test's tmp_path."""

    def make(name: str = "home") -> Settings:
        return make_settings(tmp_path, name)

    return make


@pytest.fixture
def drop_copy(world: World, tmp_path: Path) -> Callable[[str], Path]:
    """Copy the session drop (without its truth) so a test can damage it."""

    def make(name: str = "drop") -> Path:
        dst = tmp_path / name
        shutil.copytree(world.path, dst, ignore=shutil.ignore_patterns("_truth"))
        return dst

    return make


@pytest.fixture
def home_copy(ingested: Ingested, tmp_path: Path) -> Settings:
    """A copy of the ingested home, so a test can ingest more into it without touching the shared one."""
    dst = tmp_path / "home_copy"
    shutil.copytree(ingested.settings.home_dir, dst)
    return Settings(home=dst)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One ephemeral Prefect API for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def flow_runs_and_artifacts() -> tuple[list, list]:
    """Every flow run and artifact the test API holds (newest first)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

    async def read() -> tuple[list, list]:
        async with get_client() as client:
            # Prefect 3.8's client sends unset filters, limit and sort as null; its API, on the pinned
            # fastapi/pydantic, rejects null there (422). Every argument is therefore given explicitly.
            # (An empty deployment or work-pool filter would join on deployments and hide ad-hoc runs.)
            runs = await client.read_flow_runs(limit=200, sort=FlowRunSort.START_TIME_DESC)
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                limit=200,
                sort=ArtifactSort.CREATED_DESC,
            )
        return runs, artifacts

    return asyncio.run(read())


def run_home(run: object) -> str | None:
    """The custintel home a flow run worked on (its `settings` parameter, `Settings.to_flow`'s form)."""
    settings = (getattr(run, "parameters", None) or {}).get("settings") or {}
    return (settings.get("values") or {}).get("home")


# Cutoffs the small training config below reads (features are built once per session for them).
TRAIN_AS_OF = ["2024-09-01", "2024-11-01", "2025-02-01", "2025-03-01", "2025-06-01"]
SMALL_TRAINING_YAML = """
experiment: custintel-test
churn:
  feature_sets: [relationship@1, value@1, service@1, digital@1]
  horizon_days: 90
  split: {train_as_of: [2024-09-01, 2024-11-01], valid_as_of: [2025-02-01], test_as_of: [2025-06-01]}
  calibration: sigmoid
  lightgbm:
    max_trees: 150
    early_stopping_rounds: 20
    threads: 2
    search:
      learning_rate: {low: 0.03, high: 0.2, log: true}
      num_leaves: {low: 4, high: 16, integer: true}
  tuning: {trials: 2, timeout_seconds: 120}
propensity:
  feature_sets: [relationship@1, value@1]
  split: {train_as_of: [2024-11-01], valid_as_of: [2025-02-01], test_as_of: [2025-06-01]}
  lightgbm:
    max_trees: 100
    early_stopping_rounds: 20
    threads: 2
    search: {num_leaves: {low: 4, high: 16, integer: true}}
  tuning: {trials: 2, timeout_seconds: 120}
  uplift:
    as_of: 2025-03-01
    learner: x_learner
    lightgbm: {max_trees: 60, threads: 2, fixed: {num_leaves: 5, min_child_samples: 40, learning_rate: 0.05}}
recommendation:
  train_as_of: 2025-06-01
  valid_as_of: 2025-03-01
  search: {factors: {low: 4, high: 16, integer: true}}
  tuning: {trials: 2, timeout_seconds: 120}
"""


@pytest.fixture(scope="session")
def featured(ingested: Ingested, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session world resolved, with features and labels built at the small training config's cutoffs.

    Its settings read the small training config (written beside the home); tests that train copy the home first.
    """
    import datetime as dt

    from typer.testing import CliRunner

    from flows.cli import app
    from flows.features import PLAIN_STEPS, run_feature_build

    root = tmp_path_factory.mktemp("featured")
    home = root / "home"
    shutil.copytree(ingested.settings.home_dir, home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTINTEL_IDENTITY_U_MAX_PAIRS", "1e6")
        result = CliRunner().invoke(app, ["--home", str(home), "resolve", "--engine", "local"])
    assert result.exit_code == 0, result.output
    config = root / "training.yaml"
    config.write_text(SMALL_TRAINING_YAML, encoding="utf-8")
    settings = Settings(home=home, training_config=config)
    run_feature_build(settings, [dt.date.fromisoformat(d) for d in TRAIN_AS_OF], False, PLAIN_STEPS, lambda _: None)
    return settings


@pytest.fixture
def trainable(featured: Settings, tmp_path: Path) -> Settings:
    """A private copy of the featured home (its own MLflow store), with the small training config."""
    home = tmp_path / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
    return Settings(home=home, training_config=featured.training_config)


def start_service(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`custintel serve` on a free 127.0.0.1 port with `env` added, once ready: (process, base URL)."""
    import socket
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cli = Path(sys.executable).with_name("custintel")
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(cli), "serve", "--port", str(port)], env={**os.environ, **env}, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.5)
    process.terminate()
    pytest.fail("the service did not become ready: " + log_path.read_text()[-3000:])


@dataclass(frozen=True)
class DecisionHome:
    """A home `custintel serve` decides with: champions promoted, today's features, a policy file."""

    settings: Settings
    policy_file: Path
    known: list[str]  # customers in the online store
    no_marketing: list[str]  # of those, the ones who withdrew marketing consent


def _build_decision_base(featured: Settings, root: Path) -> Settings:
    """A copy of the featured home under `root` with the churn, propensity and uplift champions (one trial each)
    promoted, features built at 2025-06-01 and the consent snapshot `custintel serve` builds."""
    import datetime as dt

    from flows.features import PLAIN_STEPS as FEATURE_STEPS
    from flows.features import run_feature_build
    from flows.train import PLAIN_STEPS as TRAIN_STEPS
    from flows.train import run_training
    from governance import store
    from models.registry import Registry
    from serving.consent import build_consent_store
    from serving.policy import load_serving_policy

    home = root / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
    settings = Settings(home=home, training_config=featured.training_config)
    for family in ("churn", "propensity"):  # propensity's units include the offer's uplift
        run_training(settings, family, TRAIN_STEPS, lambda _: None, trials=1)
    registry = Registry(settings)
    for name in ("custintel-churn", "custintel-propensity", "custintel-uplift"):
        store.move_champion(registry, name, "1", "test")
    run_feature_build(settings, [dt.date(2025, 6, 1)], True, FEATURE_STEPS, lambda _: None)
    build_consent_store(settings, load_serving_policy(settings.serving_policy))  # as `custintel serve` does
    return settings


@pytest.fixture(scope="session")
def decision_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The home `_build_decision_base` makes, built ONCE per test run (its training is the costly part) and shared
    by every xdist worker: the first worker to ask builds it under the run's shared temp folder, holding a file
    lock; the others wait for it. Nothing may write to it: `decision_home` gives each module its own copy."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # every worker's basetemp is a folder of the run's own
        shared = shared.parent
    root = shared / "decision-base"
    with FileLock(str(shared / "decision-base.lock")):
        if not (root / "built").is_file():
            shutil.rmtree(root, ignore_errors=True)  # a build interrupted by a failure: start again
            featured = request.getfixturevalue("featured")
            settings = _build_decision_base(featured, root)
            (root / "built").write_text(str(settings.home_dir), encoding="utf-8")
    return root / "home"


def _mentions(root: Path, text: str) -> list[str]:
    """Files under `root` whose bytes contain `text` (UTF-8)."""
    needle = text.encode()
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def decision_home(featured: Settings, base: Path, root: Path, call_centre: int = 25) -> DecisionHome:
    """A private copy (under `root`) of the decision base home: the churn, propensity and uplift champions (one
    trial each) promoted, features built at 2025-06-01, and the packaged decision policy with `call_centre`
    contacts a day.

    Shared by the tests of /decide (tests/test_decisions_http.py, tests/test_experiments_http.py,
    tests/test_decide_speed.py); the HTTP ones start their own service on it with `start_service`. Each module gets
    its own copy of everything (MLflow store and artifacts included: the DSAR tests rewrite them), and the copy's
    MLflow store is rebased onto the copy: no file in it may still name the base home.
    """
    import sqlite3

    from decisions.policy import default_policy_text
    from models.registry import relocate_home_store

    home = root / "home"
    shutil.copytree(base, home)
    settings = Settings(home=home, training_config=featured.training_config)
    assert relocate_home_store(settings) > 0  # mlflow.db and the models' MLmodel files
    for name in _mentions(home, str(base)):  # the JSON records that name their home (lineage, manifests, reports)
        path = home / name
        path.write_text(path.read_text(encoding="utf-8").replace(str(base), str(home)), encoding="utf-8")
    stale = _mentions(home, str(base))
    assert not stale, f"the copy of {base} still names it in {stale}"
    policy_file = root / "policy.yaml"
    text = default_policy_text()
    assert "  call_centre: 400" in text
    policy_file.write_text(text.replace("  call_centre: 400", f"  call_centre: {call_centre}"), encoding="utf-8")
    with sqlite3.connect(home / "serving" / "consent.sqlite") as con:
        withdrawn = {r[0] for r in con.execute(
            "SELECT customer_key FROM consent WHERE purpose = 'marketing' AND status = 'withdrawn'")}  # fmt: skip
    online = sqlite3.connect(home / "features" / "online.sqlite")
    known: set[str] = set()
    for (table,) in online.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        if "customer_key" in [r[1] for r in online.execute(f'PRAGMA table_info("{table}")')]:
            known |= {r[0] for r in online.execute(f'SELECT customer_key FROM "{table}"')}
    online.close()
    return DecisionHome(settings, policy_file, sorted(known), sorted(known & withdrawn))


# The modules that cost the most wall time (from a full run's `--durations`), longest first. `make test` runs the
# modules on two xdist workers (`--dist loadfile`) in collection order (`--no-loadscope-reorder` in pyproject: xdist
# would otherwise start the modules with the most tests first and leave these few-test, long ones for the end,
# where one worker runs them while the other has nothing left). Longest first, the short ones fill in at the end.
LONGEST_MODULES = [  # module totals of the 80 slowest phases, full run of 2026-12-06 on a loaded machine (s)
    "test_train_flow.py",  # 815
    "test_monitoring_flow.py",  # 530
    "test_flows.py",  # 431 (the demo test alone 391)
    "test_serving_http.py",  # 376
    "test_decisions_gate.py",  # 297
    "test_personal_outer.py",  # 259
    "test_dsar_end_to_end.py",  # 251
    "test_decisions_http.py",  # 221, with the /decide base build (tests/conftest.py::decision_base)
    "test_governance_flow.py",  # 208
    "test_own_families.py",  # 185
    "test_models_units.py",  # 173
    "test_personal_features.py",  # 161
    "test_identity_resolve.py",  # 157
    "test_own_table_read.py",  # 142
    "test_own_full_loop.py",  # 139
    "test_experiments_http.py",  # 122
    "test_cli_console.py",  # 116
    "test_own_serving.py",  # 94
    "test_features_flow.py",  # 90
    "test_cli_resolve.py",  # 89
    "test_tuning_workers.py",  # 78
    "test_own_table_honest.py",  # 75
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the modules: the known longest first, then the other slow or integration ones, then the rest by
    their number of tests (xdist's own order); tests keep their order inside a module."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def cost(name: str) -> tuple[int, int, int]:
        short = name.rsplit("/", 1)[-1]
        known = LONGEST_MODULES.index(short) if short in LONGEST_MODULES else len(LONGEST_MODULES)
        heavy = any(i.get_closest_marker("slow") or i.get_closest_marker("integration") for i in modules[name])
        return known, 0 if heavy else 1, -len(modules[name])

    items[:] = [item for name in sorted(modules, key=cost) for item in modules[name]]
