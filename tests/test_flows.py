"""Prefect flows on the ephemeral API, under one session-scoped test harness."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.synthetic import WorldConfig, generate_world
from flows.cli import app
from flows.ingest import ingest_sources
from flows.resolve import resolve_identities
from tests.conftest import flow_runs_and_artifacts, run_home

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flow_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flow") / "world"
    generate_world(WorldConfig(customers=1500, seed=11, chunk_size=1000), out)
    return out


def test_ingest_flow_runs_to_completion_and_publishes_counts(
    prefect_api: None, flow_world: Path, tmp_path: Path
) -> None:
    from custintel.settings import Settings

    report = ingest_sources(str(flow_world), Settings(home=tmp_path / "home").to_flow())
    assert report.reconciles
    assert report.tables["crm_accounts"].accepted > 1000
    runs, artifacts = flow_runs_and_artifacts()
    ours = [r for r in runs if r.parameters.get("source_dir") == str(flow_world)]
    assert ours and all(r.state is not None and r.state.is_completed() for r in ours)
    keys = {a.key for a in artifacts}
    assert {"ingestion-counts", "ingestion-report"} <= keys


def test_ingest_flow_fails_with_the_contract_message(prefect_api: None, flow_world: Path, tmp_path: Path) -> None:
    from custintel.settings import Settings
    from features.lake import IngestError

    with pytest.raises(IngestError, match="no file matching"):
        ingest_sources(str(tmp_path), Settings(home=tmp_path / "home").to_flow())


def test_resolve_flow_runs_and_a_second_run_keeps_every_key(
    prefect_api: None, flow_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from custintel.settings import Settings
    from features.lake import ingest_drop

    monkeypatch.setenv("CUSTINTEL_IDENTITY_U_MAX_PAIRS", "1e6")
    home = tmp_path / "home"
    ingest_drop(flow_world, Settings(home=home))
    first = resolve_identities(Settings(home=home).to_flow())
    assert first["stats"]["customers"] > 1000
    assert first["stats"]["links_by_rule"]["probabilistic"] > 0
    second = resolve_identities(Settings(home=home).to_flow(), reuse_model=True)
    assert second["stats"]["key_events"] == {}
    assert second["stats"]["customers"] == first["stats"]["customers"]
    runs, artifacts = flow_runs_and_artifacts()
    ours = [r for r in runs if run_home(r) == str(home)]
    assert len(ours) == 2 and all(r.state is not None and r.state.is_completed() for r in ours)
    assert {"identity-records", "identity-report"} <= {a.key for a in artifacts}


def test_demo_command_runs_everything_end_to_end(prefect_api: None, tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    result = CliRunner().invoke(app, ["--home", str(home), "demo", "--customers", "1500", "--trials", "1"])
    assert result.exit_code == 0, result.output
    for name in ("custintel-churn", "custintel-propensity", "custintel-uplift", "custintel-recommendation"):
        assert f"registered {name} version 1 as @challenger" in result.output
    assert "models: MLflow runs churn " in result.output and "mlflow ui --backend-store-uri" in result.output
    assert "all counts reconcile" in result.output
    assert "where to look" in result.output
    text = " ".join(result.output.split())
    for name in ("custintel-churn", "custintel-propensity", "custintel-uplift", "custintel-recommendation"):
        assert f"{name} v1: promoted" in text or f"{name} v1: blocked" in text
        assert (home / "governance" / "cards" / name / "1" / "card.html").is_file()
    assert (home / "site" / "index.html").is_file() and "reviewers' site" in text
    path = "/churn/score" if "custintel-churn v1: promoted" in text else "/propensity/score"
    if "custintel-propensity v1: promoted" in text or path == "/churn/score":
        assert f"POST {path}" in text and "-> HTTP 200" in text and '"status": "scored"' in text
        assert f"curl -s -X POST http://127.0.0.1:3000{path}" in text
    # the drift scenario: every customer scored through the batch endpoint, then a monitoring pass with its records
    assert "9/12 traffic after the drift" in text and "customers scored and logged" in text
    # decisions: the policy through its gate, a campaign decided on two channels, outcomes fed back
    assert "promoted custintel-nba v1" in text or "blocked custintel-nba v1" in text
    assert (home / "governance" / "cards" / "custintel-nba" / "1" / "card.html").is_file()
    assert "10/12 decisions for the scored customers" in text and "first action per channel" in text
    assert "10 outcomes fed back (POST /outcomes)" in text
    assert (home / "serving" / "decisions.db").is_file()
    # measure: the world's retention-offer test analysed with CUPED, against the truth, and the attribution table
    assert "11/12 measure: the retention-offer experiment and attribution" in text
    assert "registered experiment retention-offer v1" in text and "sample ratio:" in text and "verdict:" in text
    assert "truth: true mean effect" in text and "the interval" in text
    words = " ".join(text.split())  # a long table title wraps
    assert "with a digital touch in the 30 days before them credited to those touches" in words
    assert "Markov" in text and "Shapley" in text
    reports = list((home / "experiments" / "retention-offer" / "reports").iterdir())
    assert len(reports) == 1 and (reports[0] / "report.html").is_file()
    assert (home / "site" / "experiments" / "retention-offer" / "report.html").is_file()
    assert "- experiments:" in text and "custintel experiment analyse retention-offer --source offer-test" in text
    # operations: the report and its page, rebuilt into the site
    assert "12/12 operations" in text and "operations report as of 2026-01-01:" in text and "ticket topics" in text
    assert (home / "site" / "operations.html").is_file() and "- operations: the operations page" in text
    decisions = [json.loads(x) for x in (home / "monitoring" / "decisions.jsonl").read_text().splitlines()]
    monitored = {d["family"]: d for d in decisions if d.get("kind") == "monitoring"}
    for family, entry in monitored.items():
        assert f"{entry['model']} v{entry['version']}: {entry['rows']:,} served rows -> {entry['action']}" in text
        assert Path(entry["report"]).is_file(), family
    if "custintel-churn v1: promoted" in text:  # a small world's churn model may fail the fairness gate
        churn = monitored["churn"]
        assert churn["action"] in ("retrain", "hold", "alert", "none") and churn["rows"] > 0
        # the site links the decision pages; Evidently's report needs the policy's min_rows (1,000) served rows
        pages = {p.name for p in (home / "site" / "drift").glob("*.html")}
        assert Path(churn["report"]).name in pages
        assert any(p.endswith("-evidently.html") for p in pages) == (churn["rows"] >= 1000)
    else:
        assert "churn has no @champion" in text and "churn" not in monitored
    assert "monitoring: decision page" in text
    assert "identity resolution against the truth" in result.output
    scores = json.loads((home / "reports" / "identity" / "evaluation.json").read_text())
    assert scores["deterministic+probabilistic"]["f1"] >= 0.97
    report = json.loads((home / "reports" / "ingest" / "latest.json").read_text())
    assert all(t["read"] == t["accepted"] + t["quarantined"] for t in report["tables"].values())
