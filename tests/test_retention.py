"""Retention: a home with dated data in every store; a pass as of a date removes exactly what is due.

The stores are filled through their own writers where there is one (ingestion for the lake and the
quarantine, the offline store's writer, the inference log's writer for today's file, Evidently's
workspace, a registered model version with its lineage in MLflow), with dates chosen around the
as-of date so that every store has items just due, items kept, and items kept for a reason.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import yaml

from custintel.settings import Settings
from tests.conftest import tree_digest

AS_OF = "2026-01-01"
# Days per store for the test home's policy (as of 2026-01-01, `before` in the comments).
POLICY = {
    "stores": {
        "inference_log": {"max_age_days": 90, "classes": {"behavioural": 30}},  # 2025-10-03; inputs 2025-12-02
        "quarantine": {"max_age_days": 30},  # 2025-12-02
        "lake": {"max_age_days": 300},  # 2025-03-07
        "monitoring_reports": {"max_age_days": 180},  # 2025-07-05
        "evidently_workspace": {"max_age_days": 180},
        "mlflow_monitoring_reports": {"max_age_days": 180},
        "offline_features": {"max_age_days": 365},  # 2025-01-01
        "identity_reports": {"max_age_days": 180},
        "dsar_exports": {"max_age_days": 30},
        "decision_log": {"max_age_days": 365},
        "batch_scores": {"max_age_days": 90},  # no scores in this home: tests/test_scores_retention.py fills them
    }
}
DROPS = ["2025-01-10", "2025-06-01", "2025-12-15"]
CUTOFFS = ["2024-03-01", "2024-06-01", "2024-09-01", "2025-12-01"]


def _class(kind: str) -> str:
    """A contract column's data class, once contracts declare them (a column without one is refused there)."""
    from features.contracts import ColumnRule

    return f", class: {kind}" if "data_class" in ColumnRule.model_fields else ""


def _contracts(folder: Path) -> Path:
    folder.mkdir(parents=True)
    b, d = _class("behavioural"), _class("direct_identifier")
    (folder / "visits.yaml").write_text(
        "contracts:\n"
        "  - {table: visits, system: web, files: 'visits*.csv', key: [visit_id], columns: [\n"
        f"      {{name: visit_id, nullable: false{d}}}, {{name: customer_id, nullable: false{d}}},\n"
        f"      {{name: pages, type: int, nullable: false{b}}}]}}\n"
        "  - {table: profiles, system: crm, files: 'profiles*.csv', required: false, columns: [\n"
        f"      {{name: customer_id, nullable: false{d}}}, {{name: email{d}}}]}}\n",
        encoding="utf-8",
    )
    return folder


def _ingest(settings: Settings, root: Path) -> None:
    from features.contracts import load_contracts
    from features.lake import ingest_drop

    contracts = load_contracts(_contracts(root / "contracts"))
    for i, day in enumerate(DROPS):
        drop = root / f"drop{i}"
        drop.mkdir()
        rows = [f"V{i}{n},C{n},{n}" for n in range(5)] + [f"V{i}9,C9,many"]  # the last is quarantined
        (drop / "visits.csv").write_text("visit_id,customer_id,pages\n" + "\n".join(rows) + "\n", encoding="utf-8")
        if i == 0:  # profiles come in the first drop only: that drop stays the table's latest
            (drop / "profiles.csv").write_text("customer_id,email\nC1,a@example.com\n", encoding="utf-8")
        ingest_drop(drop, settings, contracts, export_date=dt.date.fromisoformat(day))


def _inference_log(settings: Settings) -> None:
    from serving.inference_log import InferenceLog, day_file

    folder = settings.inference_log_dir
    folder.mkdir(parents=True)
    for day in ("2025-09-01", "2025-11-01", "2025-12-20"):
        entries = [
            {"at": 1.0, "caller": "anonymous", "endpoint": "churn", "model": "m", "version": "1",
             "customer": f"h{n}", "answer": {"score": 0.5}, "as_of": day, "inputs": {"tenure": n}}
            for n in range(3)
        ]  # fmt: skip
        day_file(folder, dt.date.fromisoformat(day)).write_bytes(b"\n".join(map(orjson.dumps, entries)) + b"\n")
    log = InferenceLog(folder, "hash", "salt", flush_seconds=0.01)  # today's file, by the service's own writer
    log.record({"at": 2.0, "caller": "anonymous", "endpoint": "churn", "customer": "h9", "inputs": {"tenure": 1}})
    log.close()


def _monitoring(settings: Settings) -> None:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    from monitoring.reports import add_to_workspace, stamp

    folder = settings.reports_dir / "monitoring"
    folder.mkdir(parents=True)
    definition = DataDefinition(numerical_columns=["tenure"])
    frame = pd.DataFrame({"tenure": [1.0, 2.0, 3.0, 4.0] * 5})
    for day in ("2025-05-01", "2025-10-01"):
        at = dt.datetime.fromisoformat(f"{day}T03:00:00")
        stem = f"custintel-churn-v1-{stamp(at)}"
        for suffix in (".html", ".json", "-evidently.html", "-evidently.json"):
            (folder / f"{stem}{suffix}").write_text("{}", encoding="utf-8")
        snapshot = Report([ValueDrift(column="tenure")]).run(
            Dataset.from_pandas(frame, data_definition=definition),
            Dataset.from_pandas(frame, data_definition=definition),
            timestamp=at,
        )
        add_to_workspace(settings.monitoring_dir / "workspace", "custintel-churn", snapshot, f"v1 {stem}")
    (folder / "notes.txt").write_text("not a report", encoding="utf-8")


def _offline(settings: Settings) -> None:
    from features.featurestore.offline import write_partitions
    from features.featurestore.store import offline_root

    days = [dt.date.fromisoformat(d) for d in CUTOFFS]
    for key in ("relationship@1", "labels@1"):
        table = pa.table({"customer_key": [f"CK{i}" for i in range(len(days))], "as_of": days, "x": [1.0] * 4})
        stats = {d: {"rows": 1} for d in CUTOFFS}
        write_partitions(offline_root(settings), key, {"x": "1"}, "digest", table, stats)


def _registry(settings: Settings) -> None:
    """custintel-churn v1 (@champion) trained on 2024-06-01; v2, archived, on 2024-03-01."""
    from models.registry import Registry

    client = Registry(settings).client
    experiment = client.create_experiment("retention-test", artifact_location=settings.artifacts_dir.as_uri())
    client.create_registered_model("custintel-churn")
    for cutoff in ("2024-06-01", "2024-03-01"):
        run = client.create_run(experiment)
        lineage = {"as_of": [cutoff], "feature_sets": {"relationship@1": {"partitions": {cutoff: {"rows": 1}}}}}
        client.log_dict(run.info.run_id, lineage, "lineage/lineage.json")
        client.create_model_version("custintel-churn", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("custintel-churn", "champion", "1")
    run_id = client.get_model_version("custintel-churn", "1").run_id
    pages = settings.home_dir / "pages"
    for stamp in ("20250501T030000Z", "20251001T030000Z"):  # as monitoring logs its pages to the champion's run
        (pages / stamp).mkdir(parents=True)
        (pages / stamp / f"custintel-churn-v1-{stamp}.html").write_text("<p>samples</p>", encoding="utf-8")
        client.log_artifacts(run_id, str(pages / stamp), f"monitoring/{stamp}")
    (pages / "reference.parquet").write_bytes(b"PAR1")
    client.log_artifact(run_id, str(pages / "reference.parquet"), "monitoring")
    shutil.rmtree(pages)


def _identity_and_dsar(settings: Settings) -> None:
    folder = settings.reports_dir / "identity"
    folder.mkdir(parents=True)
    for run_id in ("20250301T101010123456Z", "20250401T101010123456Z"):
        (folder / f"{run_id}.json").write_text(json.dumps({"run_id": run_id}), encoding="utf-8")
    (folder / "evaluation.json").write_text("{}", encoding="utf-8")
    dsar = settings.governance_dir / "dsar"  # as `custintel dsar export` writes its bundles
    for name, written in (("export-old", "2025-11-01T09:00:00+00:00"), ("export-new", "2025-12-20T09:00:00+00:00")):
        (dsar / name / "export").mkdir(parents=True)
        (dsar / name / "export" / "bundle.json").write_text(json.dumps({"written_at": written}), encoding="utf-8")
        (dsar / name / "export" / "crm.csv").write_text("customer_id\nC1\n", encoding="utf-8")
    (dsar / "export-undated" / "export").mkdir(parents=True)
    (dsar / "export-undated" / "export" / "bundle.json").write_text("{}", encoding="utf-8")
    (dsar / "erase-1").mkdir()  # an erasure journal: no bundle, never expired
    (dsar / "erase-1" / "journal.json").write_text(json.dumps({"written_at": "2024-01-01T00:00:00"}), "utf-8")


def _policy_file(path: Path, retention: dict[str, Any] | None) -> Path:
    from importlib import resources

    policy = yaml.safe_load(resources.files("governance").joinpath("policy.yaml").read_text(encoding="utf-8"))
    if retention is None:
        policy.pop("retention", None)
    else:
        policy["retention"] = retention
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A home with dated data in every store (built once; tests work on copies)."""
    root = tmp_path_factory.mktemp("retention")
    policy = _policy_file(root / "policy.yaml", POLICY)
    settings = Settings(home=root / "home", governance_policy=policy)
    _ingest(settings, root)
    _inference_log(settings)
    _monitoring(settings)
    _offline(settings)
    _registry(settings)
    _identity_and_dsar(settings)
    from governance.site import build_site

    build_site(settings)  # copies the monitoring pages
    return settings


@pytest.fixture
def home(template: Settings, tmp_path: Path) -> Settings:
    from models.registry import relocate_home_store

    shutil.copytree(template.home_dir, tmp_path / "home")
    settings = Settings(home=tmp_path / "home", governance_policy=template.governance_policy)
    assert relocate_home_store(settings) > 0  # the copy's MLflow store points into the copy (as any command does)
    return settings


def _removed(report: dict[str, Any], store: str) -> list[str]:
    return [i["place"] for i in report["stores"][store]["removed"]]


def _kept(report: dict[str, Any], store: str) -> dict[str, str]:
    return {i["place"]: i.get("due") or i.get("reason", "") for i in report["stores"][store]["kept"]}


def test_the_policy_is_checked_naming_the_key(tmp_path: Path) -> None:
    from governance.policy import PolicyError, load_policy

    shipped = load_policy().retention
    assert shipped is not None and set(shipped.stores) == {
        "inference_log", "quarantine", "lake", "monitoring_reports", "evidently_workspace", "offline_features",
        "identity_reports", "dsar_exports", "mlflow_monitoring_reports", "decision_log", "batch_scores",
    }  # fmt: skip
    bad = {
        "stores.bogus: unknown store": {"stores": {"bogus": {"max_age_days": 3}}},
        "stores.lake.max_age_days: -1 days: an age cannot be negative": {"stores": {"lake": {"max_age_days": -1}}},
        "stores.quarantine.classes.secret: unknown data class": {"stores": {"quarantine": {"classes": {"secret": 1}}}},
        "stores.identity_reports.classes.behavioural: this store holds no behavioural data": {
            "stores": {"identity_reports": {"classes": {"behavioural": 10}}}
        },
        "classes.sensitive: -5 days": {"classes": {"sensitive": -5}},
        "retention.stores.lake.maximum_age: Extra inputs are not permitted": {"stores": {"lake": {"maximum_age": 3}}},
    }
    for i, (message, retention) in enumerate(bad.items()):
        with pytest.raises(PolicyError) as caught:
            load_policy(_policy_file(tmp_path / f"p{i}.yaml", retention))
        assert message in str(caught.value), str(caught.value)
    # A class age shortens every store holding the class; the inference log strips that class's fields instead.
    policy = load_policy(
        _policy_file(
            tmp_path / "ok.yaml",
            {
                "classes": {"behavioural": 20},
                "stores": {
                    "lake": {"max_age_days": 99},
                    "inference_log": {"max_age_days": 90},
                    "identity_reports": {"max_age_days": 50},
                },
            },
        )  # fmt: skip
    ).retention
    assert policy is not None
    assert (policy.max_age("lake"), policy.max_age("inference_log"), policy.max_age("identity_reports")) == (20, 90, 50)
    assert policy.strip_before("inference_log", dt.date(2026, 1, 21)) == {"behavioural": dt.date(2026, 1, 1)}
    assert policy.max_age("dsar_exports") == 20 and policy.max_age("evidently_workspace") == 20


def test_a_pass_removes_exactly_what_is_due_and_a_dry_run_nothing(home: Settings, prefect_api: None) -> None:
    from features.lake import read_lake_table, read_manifest
    from flows.retention import retention_apply
    from governance.trail import read_entries, trail_path, verify

    before = tree_digest(home.home_dir)
    dry = retention_apply(home.to_flow(), AS_OF, dry_run=True)
    assert tree_digest(home.home_dir) == before  # nothing changed, nothing written (no report, no trail entry)
    report = retention_apply(home.to_flow(), AS_OF)
    assert {s: _removed(dry, s) for s in dry["stores"]} == {s: _removed(report, s) for s in report["stores"]}
    assert report["skipped"] == {}

    # Inference log: the 90-day-old day goes; inputs leave entries older than 30 days; the rest stays.
    log = home.inference_log_dir
    assert _removed(report, "inference_log") == ["2025-09-01.jsonl"]
    assert sorted(p.name for p in log.glob("*.jsonl"))[:2] == ["2025-11-01.jsonl", "2025-12-20.jsonl"]
    assert [i["place"] for i in report["stores"]["inference_log"]["trimmed"]] == ["2025-11-01.jsonl"]
    trimmed = [orjson.loads(line) for line in (log / "2025-11-01.jsonl").read_bytes().splitlines()]
    assert [sorted(e) for e in trimmed] == [["answer", "as_of", "at", "caller", "customer", "endpoint", "model",
                                             "version"]] * 3  # fmt: skip
    assert all("inputs" in orjson.loads(x) for x in (log / "2025-12-20.jsonl").read_bytes().splitlines())
    assert _kept(report, "inference_log")["2025-11-01.jsonl"] == "2026-01-31"  # due the day it is 91 days old

    # Lake: visits' first drop goes with its quarantine; profiles' only drop is old but the latest: it stays.
    manifest = read_manifest(home)
    visits = [p.drop_id[:8] for p in manifest.tables["visits"]]
    assert visits == ["20250601", "20251215"] and [p.drop_id[:8] for p in manifest.tables["profiles"]] == ["20250110"]
    assert len(_removed(report, "lake")) == 2  # the partition and its quarantine
    assert "the latest drop of profiles" in " ".join(_kept(report, "lake").values())
    assert sorted(p.name[5:13] for p in (home.lake_dir / "visits").iterdir()) == ["20250601", "20251215"]
    assert sorted(read_lake_table(home, "visits")["visit_id"]) == [f"V{i}{n}" for i in (1, 2) for n in range(5)]
    assert read_lake_table(home, "profiles")["email"].tolist() == ["a@example.com"]
    # Quarantine: older than 30 days goes (the June drop's); December's stays; accepted rows untouched.
    assert [p.quarantine is not None for p in manifest.tables["visits"]] == [False, True]
    assert sorted(p.name[5:13] for p in (home.quarantine_dir / "visits").iterdir()) == ["20251215"]
    rejected = {i["place"].partition("-")[0]: i["count"] for i in report["stores"]["quarantine"]["removed"]}
    assert rejected == {"quarantine/visits/drop=20250601": 1, "quarantine/profiles/drop=20250110": 0}

    # Monitoring: the May pass's four files and its workspace snapshot go; October's stay; other files stay.
    folder = home.reports_dir / "monitoring"
    assert _removed(report, "monitoring_reports") == ["custintel-churn-v1-20250501T030000Z"]
    assert sorted(p.name for p in folder.iterdir())[0] == "custintel-churn-v1-20251001T030000Z-evidently.html"
    assert len(list(folder.iterdir())) == 5 and (folder / "notes.txt").is_file()
    assert [p.endswith("20250501T030000Z") for p in _removed(report, "evidently_workspace")] == [True]
    assert [p.endswith("20251001T030000Z") for p in _kept(report, "evidently_workspace")] == [True]
    from evidently.ui.workspace import Workspace

    assert report["site_rebuilt"] and sorted(p.name for p in (home.site_dir / "drift").iterdir()) == [
        "custintel-churn-v1-20251001T030000Z-evidently.html", "custintel-churn-v1-20251001T030000Z.html"]  # fmt: skip
    workspace = Workspace(str(home.monitoring_dir / "workspace"))
    assert [len(workspace.list_runs(p.id)) for p in workspace.list_projects()] == [1]

    # MLflow: the May pages logged to the champion's run go; October's and the run's training reference stay.
    from models.registry import Registry

    registry = Registry(home)
    run_id = registry.version("custintel-churn", "1").run_id
    assert run_id and registry.artifact_folders(run_id, "monitoring") == ["monitoring/20251001T030000Z"]
    assert [f.path for f in registry.client.list_artifacts(run_id, "monitoring") if not f.is_dir] == [
        "monitoring/reference.parquet"]  # fmt: skip
    assert [p.rsplit(": ", 1)[1] for p in _removed(report, "mlflow_monitoring_reports")] == [
        "monitoring/20250501T030000Z"]  # fmt: skip

    # Offline: cutoffs over a year old go, except the @champion's (the archived version protects nothing).
    for key in ("relationship", "labels"):
        version = home.features_dir / "offline" / key / "v1"
        assert sorted(p.name for p in version.glob("as_of=*")) == ["as_of=2024-06-01", "as_of=2025-12-01"]
        assert sorted(json.loads((version / "manifest.json").read_text())["partitions"]) == ["2024-06-01", "2025-12-01"]
    assert "live model" in _kept(report, "offline_features")["relationship/v1/as_of=2024-06-01"]

    # Identity run reports: the older goes, the newest stays though due; DSAR: the old bundle only.
    assert _removed(report, "identity_reports") == ["20250301T101010123456Z.json"]
    assert sorted(p.name for p in (home.reports_dir / "identity").iterdir()) == [
        "20250401T101010123456Z.json", "evaluation.json"]  # fmt: skip
    assert _removed(report, "dsar_exports") == ["export-old/export"]
    assert sorted(p.name for p in (home.governance_dir / "dsar").iterdir()) == ["erase-1", "export-new",
                                                                                 "export-undated"]  # fmt: skip
    assert "no date" in _kept(report, "dsar_exports")["export-undated/export"]

    # The report on disk, the audit trail's entry with the counts; a second pass finds nothing due.
    assert json.loads(Path(report["report"]).read_text())["counts"] == report["counts"]
    entry = read_entries(trail_path(home))[-1]
    assert entry["action"] == "retention_apply" and entry["details"]["counts"]["lake"]["removed"] == 2
    assert entry["details"]["counts"]["inference_log"] == {"removed": 1, "removed_count": 3, "trimmed": 1, "kept": 3}
    assert verify(trail_path(home)).ok
    again = retention_apply(home.to_flow(), AS_OF)
    assert all(not s["removed"] and not s["trimmed"] for s in again["stores"].values()), again["counts"]


def test_an_unreachable_registry_skips_the_stores_it_guards(
    home: Settings, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the registry the live models' cutoffs are unknown: the offline store is left whole, the rest goes on."""
    from flows.retention import retention_apply

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    offline = tree_digest(home.features_dir)
    cut_off = home.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    report = retention_apply(cut_off.to_flow(), AS_OF)
    assert sorted(report["skipped"]) == ["mlflow_monitoring_reports", "offline_features"]
    assert all("could not be read" in why for why in report["skipped"].values())
    assert tree_digest(home.features_dir) == offline
    assert _removed(report, "inference_log") == ["2025-09-01.jsonl"] and report["counts"]["lake"]["removed"] == 2
    # The site (built from the registry) cannot be rebuilt: the removed pages' copies leave it all the same.
    assert report["site_rebuilt"] is False and "cannot reach the MLflow tracking store" in report["site_error"]
    assert sorted(p.name for p in (home.site_dir / "drift").iterdir()) == [
        "custintel-churn-v1-20251001T030000Z-evidently.html", "custintel-churn-v1-20251001T030000Z.html"]  # fmt: skip


def test_an_offline_pass_killed_between_manifest_and_folders_is_finished_by_the_next(tmp_path: Path) -> None:
    from features.featurestore.offline import available_as_of, read_manifest
    from features.featurestore.store import offline_root
    from features.retention import expire_offline

    settings = Settings(home=tmp_path / "home")
    _offline(settings)
    root = offline_root(settings)
    manifest_path = root / "labels" / "v1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["partitions"]["2024-03-01"]  # the manifest was rewritten, then the pass was killed
    manifest_path.write_text(json.dumps(manifest))
    expiry = expire_offline(settings, dt.date(2024, 6, 1))
    assert sorted(i.place for i in expiry.removed) == ["labels/v1/as_of=2024-03-01", "relationship/v1/as_of=2024-03-01"]
    for key in ("labels@1", "relationship@1"):
        assert available_as_of(root, key)[0] == dt.date(2024, 6, 1)
        assert sorted((read_manifest(root, key) or {})["partitions"]) == CUTOFFS[1:]


def test_the_inference_log_never_touches_the_day_being_written(tmp_path: Path) -> None:
    from serving.inference_log import day_file, expire

    folder = tmp_path / "inference"
    folder.mkdir()
    today = dt.date(2026, 3, 1)
    for day in (today - dt.timedelta(days=1), today):
        day_file(folder, day).write_bytes(orjson.dumps({"at": 1.0, "inputs": {"x": 1}}) + b"\n")
    expiry = expire(folder, today + dt.timedelta(days=5), {"inputs": today + dt.timedelta(days=5)}, today=today)
    assert [i.place for i in expiry.removed] == ["2026-02-28.jsonl"]
    kept = [(i.place, i.reason) for i in expiry.kept]
    assert kept == [("2026-03-01.jsonl", "the service is writing this day's file")]
    assert day_file(folder, today).read_bytes() == orjson.dumps({"at": 1.0, "inputs": {"x": 1}}) + b"\n"


def test_the_cli_from_another_directory(
    home: Settings, prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`custintel --home H retention apply` as a scheduler runs it, from another working directory."""
    from typer.testing import CliRunner

    from flows.cli import app

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("CUSTINTEL_GOVERNANCE_POLICY", str(home.governance_policy))
    runner, args = CliRunner(), ["--home", str(home.home_dir), "retention", "apply"]
    before = tree_digest(home.home_dir)
    dry = runner.invoke(app, [*args, "--dry-run", "--as-of", AS_OF])
    assert dry.exit_code == 0, dry.output
    out = " ".join(dry.output.split())
    assert "dry run: nothing changed" in out and "would remove 2025-09-01.jsonl (dated 2025-09-01)" in out
    assert "kept lake/profiles/drop=20250110" in out and "the latest drop of profiles" in out
    assert tree_digest(home.home_dir) == before

    bad = runner.invoke(app, [*args, "--as-of", "2026-13-01"])
    assert bad.exit_code == 1 and bad.output.strip() == "error: --as-of: '2026-13-01' is not a date (YYYY-MM-DD)"
    bad_policy = _policy_file(tmp_path / "bad.yaml", {"stores": {"inference_log": {"max_age_days": -3}}})
    monkeypatch.setenv("CUSTINTEL_GOVERNANCE_POLICY", str(bad_policy))
    refused = runner.invoke(app, [*args, "--as-of", AS_OF])
    assert refused.exit_code == 1, refused.output
    assert "stores.inference_log.max_age_days: -3 days: an age cannot be negative" in " ".join(refused.output.split())
    assert refused.output.startswith("error: ") and "Traceback" not in refused.output
    assert tree_digest(home.home_dir) == before

    monkeypatch.setenv("CUSTINTEL_GOVERNANCE_POLICY", str(_policy_file(tmp_path / "none.yaml", None)))
    untouched = runner.invoke(app, [*args, "--as-of", AS_OF])
    assert untouched.exit_code == 0, untouched.output
    assert "lake: skipped: the governance policy has no retention section: everything kept" in untouched.output
    assert {k: v for k, v in tree_digest(home.home_dir).items() if "governance/audit_trail" not in k
            and "reports/retention" not in k} == before  # fmt: skip

    # A folder the lake manifest does not name (a pass killed after its commit) goes with the next pass.
    stray = home.lake_dir / "visits" / "drop=20240101-0123456789abcdef"
    stray.mkdir()
    monkeypatch.setenv("CUSTINTEL_GOVERNANCE_POLICY", str(home.governance_policy))
    done = runner.invoke(app, [*args, "--as-of", AS_OF, "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["counts"]["dsar_exports"]["removed"] == 1 and Path(report["report"]).is_relative_to(home.home_dir)
    assert report["counts"]["lake"]["removed"] == 2 and not (home.inference_log_dir / "2025-09-01.jsonl").exists()
    assert report["counts"]["mlflow_monitoring_reports"]["removed"] == 1  # this copy's own MLflow artifacts
    assert list(elsewhere.iterdir()) == [] and not stray.exists()
    assert report["stores"]["lake"]["notes"] == []  # removed in the pass's own commit


def test_schedule_creates_a_cron_deployment_or_prints_the_commands(
    home: Settings, prefect_api: None, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    made = runner.invoke(app, ["--home", str(home.home_dir), "retention", "schedule", "--cron", "0 3 * * *"])
    assert made.exit_code == 0, made.output
    assert "deployment retention-apply/custintel" in made.output
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retention-apply/custintel")
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]  # type: ignore[union-attr]
    assert deployment.parameters["settings"]["values"]["home"] == str(home.home_dir)

    bad = runner.invoke(app, ["--home", str(home.home_dir), "retention", "schedule", "--cron", "every day"])
    assert bad.exit_code == 1 and "--cron: Invalid cron string" in bad.output
    both = runner.invoke(app, ["retention", "schedule", "--cron", "0 3 * * *", "--pool", "p", "--serve"])
    assert both.exit_code == 1 and "choose one" in both.output

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        printed = runner.invoke(app, ["--home", str(home.home_dir), "retention", "schedule", "--cron", "0 3 * * *"])
    assert printed.exit_code == 0, printed.output
    assert "no Prefect server is configured" in printed.output
    assert "prefect --no-prompt deploy flows/retention.py:retention_apply --name custintel --cron '0 3 * * *'" in (
        printed.output
    )
