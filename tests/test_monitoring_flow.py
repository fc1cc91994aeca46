"""Monitoring end to end: a world whose drift knob shifts the population after 2025-10-01, its churn model
(trained on cutoffs up to 2025-06-01, as the demo's) served over real HTTP, traffic from before and after the
drift, `custintel monitor` on Prefect's API.

Without drift nothing retrains. With drift the monitor retrains on newer cutoffs, the gate audits the
new challenger, and the running service picks up the new champion when the gate promotes it (or the
champion keeps serving when it blocks). The run history shows monitor -> train -> audit.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
from flows.train import PLAIN_STEPS as TRAIN_STEPS
from flows.train import run_training
from governance import store
from models.registry import Registry
from tests.conftest import SMALL_TRAINING_YAML, start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "monitor-test-key"
NAME = "custintel-churn"
DRIFT_DATE = dt.date(2025, 10, 1)  # after the champion's newest cutoff and its labels (2025-06-01 + 90 days)
# serving cutoffs either side of the drift: a month after the newest training cutoff (its labels are in the
# data, before the drift), and two months into the drift
BEFORE, AFTER = dt.date(2025, 7, 1), dt.date(2025, 12, 1)
CHURN_CUTOFFS = [dt.date(2024, 9, 1), dt.date(2024, 11, 1), dt.date(2025, 2, 1), dt.date(2025, 6, 1)]


@dataclass
class Served:
    """The drifted world's home, its monitoring policy, and the running service."""

    settings: Settings
    policy: Path
    url: str
    process: subprocess.Popen[bytes]

    def traffic(self, as_of: dt.date) -> int:
        """Materialise the online store at `as_of` and score every customer in it through the batch endpoint."""
        run_feature_build(self.settings, [as_of], True, FEATURE_STEPS, lambda _: None)
        with sqlite3.connect(self.settings.features_dir / "online.sqlite") as con:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            keys: set[str] = set()
            for table in tables:
                if "customer_key" in [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]:
                    keys |= {r[0] for r in con.execute(f'SELECT customer_key FROM "{table}"')}
        ordered, scored = sorted(keys), 0
        for i in range(0, len(ordered), 1000):
            body = {"customers": [{"customer_key": k} for k in ordered[i : i + 1000]]}
            answer = httpx.post(self.url + "/churn/score/batch", json=body, headers={"X-API-Key": KEY}, timeout=120)
            assert answer.status_code == 200, answer.text
            scored += sum(r["status"] == "scored" for r in answer.json()["results"])
        return scored

    def monitor(self, *args: str) -> tuple[int, str]:
        env = {
            "CUSTINTEL_MONITORING_POLICY": str(self.policy),
            "CUSTINTEL_TRAINING_CONFIG": str(self.settings.training_config),
        }
        result = CliRunner().invoke(app, ["--home", str(self.settings.home_dir), "monitor", *args], env=env)
        return result.exit_code, result.output

    def served_version(self) -> str:
        models = httpx.get(self.url + "/models", headers={"X-API-Key": KEY}, timeout=10).json()
        return next(str(m["version"]) for m in models["models"] if m["name"] == NAME)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("drifted")
    world = root / "drop"
    generate_world(
        WorldConfig(customers=2500, chunk_size=1000, seed=5, drift_date=DRIFT_DATE, drift_strength=2.0), world
    )
    config = root / "training.yaml"
    config.write_text(SMALL_TRAINING_YAML, encoding="utf-8")
    settings = Settings(home=root / "home", training_config=config)
    ingest_drop(world, settings)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTINTEL_IDENTITY_U_MAX_PAIRS", "1e6")
        result = CliRunner().invoke(app, ["--home", str(settings.home_dir), "resolve", "--engine", "local"])
    assert result.exit_code == 0, result.output
    run_feature_build(settings, CHURN_CUTOFFS, False, FEATURE_STEPS, lambda _: None)
    run_training(settings, "churn", TRAIN_STEPS, lambda _: None, trials=1)
    store.move_champion(Registry(settings), NAME, "1", "the first champion of the monitoring test")
    # A smaller world than production: judge drift from 300 served rows.
    policy = yaml.safe_load((Path(__file__).parents[1] / "monitoring" / "policy.yaml").read_text())
    policy["drift"]["min_rows"] = 300
    policy["families"]["churn"]["triggers"]["performance"]["min_labelled"] = 300
    policy_path = root / "monitoring.yaml"
    policy_path.write_text(yaml.safe_dump(policy))

    env = {"CUSTINTEL_HOME": str(settings.home_dir), "CUSTINTEL_SERVING_API_KEYS": KEY,
           "CUSTINTEL_SERVING_POLL_SECONDS": "1", "CUSTINTEL_TRAINING_CONFIG": str(config)}  # fmt: skip
    process, url = start_service(env, root / "serve.log")
    try:
        yield Served(settings, policy_path, url, process)
    finally:
        process.terminate()
        process.wait(30)


def _decisions(settings: Settings) -> list[dict]:
    path = settings.monitoring_dir / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_without_drift_nothing_retrains(served: Served, prefect_api: None) -> None:
    start = dt.datetime.now(dt.UTC).isoformat()
    assert served.traffic(BEFORE) >= 300
    code, output = served.monitor("--family", "churn", "--start", start)
    assert code == 0, output
    entries = [e for e in _decisions(served.settings) if e.get("kind") == "monitoring"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["action"] == "none", entry
    assert entry["rows"] >= 300
    assert {c["trigger"] for c in entry["checks"]} >= {"drifted_share", "key_feature_drift", "prediction_drift"}
    # labels have arrived for the served cutoff (2025-07-01 + 90 days is inside the data): performance is judged
    perf = next(c for c in entry["checks"] if c["trigger"] == "performance")
    assert perf["value"] is not None and "labelled rows against" in perf["detail"], perf
    assert not [e for e in _decisions(served.settings) if e.get("kind") == "retrain"]
    # the reports: our decision page and JSON, Evidently's HTML and JSON, all parse; the workspace holds the run
    page = Path(entry["report"])
    summary = json.loads(page.with_suffix(".json").read_text())
    assert summary["decision"]["action"] == "none" and summary["drift"]["columns_tested"] > 40
    assert summary["performance"]["labelled"] >= 300 and len(summary["performance"]["calibration"]) == 10
    assert page.with_name(page.stem + "-performance.html").is_file()
    evidently_json = page.with_name(page.stem + "-evidently.json")
    assert json.loads(evidently_json.read_text())["metrics"]
    assert "<html" in page.with_name(page.stem + "-evidently.html").read_text()[:2000].lower()
    assert (served.settings.monitoring_dir / "workspace").is_dir() and summary["workspace_runs"]
    # logged beside the model version in MLflow
    registry = Registry(served.settings)
    version = registry.version(NAME, "1")
    logged = [a.path for a in registry.client.list_artifacts(version.run_id, f"monitoring/{summary['stamp']}")]
    assert any(p.endswith("-evidently.html") for p in logged)
    assert version.tags["custintel.monitoring.last"].startswith(summary["stamp"] + ": none")


def test_monitor_run_alone_from_another_directory_reads_the_home_registry(
    served: Served, prefect_api: None, tmp_path: Path
) -> None:
    """`custintel --home H monitor` as a scheduler runs it: a new process, another working directory, only H named.

    It must judge the served champion of H's registry (not a registry in the working directory), and write
    nothing outside H (Prefect's own state goes to the PREFECT_HOME the environment names).
    """
    import os
    import sys

    from prefect.settings import PREFECT_API_URL

    if not list(served.settings.inference_log_dir.glob("*.jsonl")):
        assert served.traffic(BEFORE) >= 300
    elsewhere, prefect_home = tmp_path / "elsewhere", tmp_path / "prefect-home"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTINTEL_", "MLFLOW_"))}
    env.update({
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),  # the test's Prefect server, as a scheduler's would be
        "CUSTINTEL_MONITORING_POLICY": str(served.policy),
        "CUSTINTEL_TRAINING_CONFIG": str(served.settings.training_config),
    })  # fmt: skip
    before = len(_decisions(served.settings))
    cli = Path(sys.executable).with_name("custintel")
    done = subprocess.run(
        [str(cli), "--home", str(served.settings.home_dir), "monitor", "--family", "churn", "--no-retrain"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode in (0, 3), done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert "nothing to monitor" not in out and f"{NAME} v1:" in out, out
    entries = _decisions(served.settings)[before:]
    assert [e["family"] for e in entries if e.get("kind") == "monitoring"] == ["churn"], entries
    assert entries[-1]["rows"] > 0 and entries[-1]["action"] != "retrain"
    assert list(elsewhere.iterdir()) == []  # no mlflow.db, mlruns or anything else in the working directory
    assert {p.name for p in tmp_path.iterdir()} <= {"elsewhere", "prefect-home"}


def test_drift_retrains_audits_and_the_service_picks_up_the_outcome(served: Served, prefect_api: None) -> None:
    start = dt.datetime.now(dt.UTC).isoformat()
    assert served.traffic(AFTER) >= 300
    code, output = served.monitor("--family", "churn", "--start", start, "--trials", "1")
    assert code == 0, output
    entry = [e for e in _decisions(served.settings) if e.get("kind") == "monitoring"][-1]
    assert entry["action"] == "retrain", entry
    fired = set(entry["fired"])
    assert fired & {"drifted_share", "key_feature_drift", "prediction_drift"}, entry
    assert entry["new_labelled_months"] >= 1
    retrain = [e for e in _decisions(served.settings) if e.get("kind") == "retrain"][-1]
    assert retrain["outcome"].startswith("trained custintel-churn v2"), retrain
    gate = retrain["gate"][0]
    assert gate["version"] == "2" and gate["result"] in ("promoted", "blocked")
    registry = Registry(served.settings)
    champion = registry.alias_version(NAME, "champion")
    deadline = time.monotonic() + 30
    if gate["result"] == "promoted":
        assert champion == "2"
        while served.served_version() != "2" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served.served_version() == "2"
    else:
        assert gate["reasons"] and champion == "1" and served.served_version() == "1"
        assert registry.alias_version(NAME, "challenger") == "2"
    # the retrained model read newer cutoffs: its lineage moved by the new labelled months
    run_id = registry.version(NAME, "2").run_id
    assert run_id is not None
    first = registry.read_run_json(str(registry.version(NAME, "1").run_id), "lineage/lineage.json")["as_of"]
    moved = registry.read_run_json(run_id, "lineage/lineage.json")["as_of"]
    assert max(moved) > max(first), (first, moved)
    # a second pass within min_interval_hours does not retrain again
    code, output = served.monitor("--family", "churn", "--start", start, "--trials", "1")
    assert code == 0, output
    again = [e for e in _decisions(served.settings) if e.get("kind") == "monitoring"][-1]
    assert again["action"] in ("hold", "none"), again
    if again["action"] == "hold":
        assert "min_interval_hours" in again["why"]
    _assert_chain(retrain)


def _assert_chain(retrain: dict) -> None:
    """The run history holds monitor -> train_model and monitor -> audit_and_promote as deployment runs."""
    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    parent = UUID(retrain["monitor_flow_run_id"])

    async def children() -> list[tuple[str, str | None, str]]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=50,
            )
            out = []
            for run in runs:
                flow = await client.read_flow(run.flow_id)
                out.append((flow.name, str(run.deployment_id) if run.deployment_id else None, run.state.type.value))
            return out

    found = asyncio.run(children())
    names = [name for name, _, _ in found]
    assert names == ["train_model", "audit_and_promote"], found
    assert all(deployment is not None and state == "COMPLETED" for _, deployment, state in found), found
    assert str(retrain["train_flow_run_id"])


def test_the_reports_render_on_the_reviewers_site_in_headless_chromium(
    served: Served, prefect_api: None, tmp_path: Path
) -> None:
    """The site links every monitoring report; our decision page and Evidently's report render with a clean console."""
    from governance.site import build_site
    from tests.test_report_site import _serving, chromium

    if not list((served.settings.reports_dir / "monitoring").glob("*.html")):
        code, output = served.monitor("--family", "churn", "--no-retrain")
        assert code == 0, output
    site = build_site(served.settings).parent
    with _serving(site) as base, chromium(tmp_path) as driver:
        driver.get(base + "index.html")
        links = driver.execute_script(
            "return Array.from(document.querySelectorAll('#drift ~ table a[href]')).map(a => a.href);"
        )
        decision = [u for u in links if not u.endswith(("-evidently.html", "-performance.html"))]
        evidently = [u for u in links if u.endswith("-evidently.html")]
        assert decision and evidently, links
        driver.get(decision[0])
        text = driver.find_element("tag name", "body").text
        assert "Decision:" in text and "Triggers" in text and "Columns" in text
        driver.get(evidently[0])
        deadline = time.monotonic() + 30
        while "drift" not in driver.find_element("tag name", "body").text.lower() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "drift" in driver.find_element("tag name", "body").text.lower()
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def test_a_schema_break_in_the_window_alerts_and_does_not_retrain(served: Served, prefect_api: None) -> None:
    """Served rows whose inputs lost columns and gained nulls: an alert naming them, exit status 3, no retrain."""
    version = Registry(served.settings).alias_version(NAME, "champion")
    log_dir = served.settings.inference_log_dir
    template = next(
        json.loads(line)
        for path in sorted(log_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if '"inputs"' in line
    )
    start = dt.datetime.now(dt.UTC)
    broken = []
    for i in range(400):
        inputs = {k: v for k, v in template["inputs"].items() if k not in ("sessions_30d", "tickets_90d")}
        inputs["nps_last"] = None
        broken.append({**template, "at": start.timestamp() + 1 + i / 1000, "version": version, "inputs": inputs})
    with (log_dir / f"{start:%Y-%m-%d}.jsonl").open("a") as fh:
        fh.write("".join(json.dumps(e) + "\n" for e in broken))
    retrains_before = len([e for e in _decisions(served.settings) if e.get("kind") == "retrain"])
    code, output = served.monitor("--family", "churn", "--start", start.isoformat(), "--end",
                                  (start + dt.timedelta(minutes=5)).isoformat())  # fmt: skip
    assert code == 3, output
    entry = [e for e in _decisions(served.settings) if e.get("kind") == "monitoring"][-1]
    assert entry["action"] == "alert" and entry["rows"] == 400, entry
    checks = {(a["check"], a["column"]) for a in entry["alerts"]}
    assert ("schema", None) in checks and ("null_spike", "nps_last") in checks, checks
    assert "sessions_30d" in entry["why"] and "ALERT" in output
    assert len([e for e in _decisions(served.settings) if e.get("kind") == "retrain"]) == retrains_before
