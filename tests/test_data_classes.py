"""Data classes: every contract column and feature declares one; direct identifiers never reach logged rows.

Each enforcement point is fed a direct identifier and the written artifact is searched for it:
the MLflow run (test rows, monitoring reference, tables, the training dataset, every file and the
tracking database), the inference log's file, and a monitoring sample with Evidently's page.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from custintel.settings import Settings
from features.contracts import ColumnRule, Contract, load_contracts
from features.data_classes import (
    DATA_CLASSES,
    DataClassError,
    check_data_class,
    check_no_direct_identifiers,
    contract_classes,
    feature_classes,
    infer_data_class,
    lake_classes,
    without_direct_identifiers,
)
from features.featurestore.config import FeatureConfig, FeatureConfigError, load_feature_config
from features.featurestore.definitions import Feature, feature_sets
from features.lake import MANIFEST, LakeManifest, lake_contract
from flows.cli import app
from models.registry import Registry
from models.result import EvaluationSet, LoggedModel, TrainedModel
from models.table_types import TableTypeError, read_schema, type_columns
from models.training import own_data_classes
from monitoring import reports
from serving.champions import ServedModel
from serving.inference_log import InferenceLog, audit_entries, audit_entry
from serving.policy import load_serving_policy

EMAILS = [f"person{i}@example.org" for i in range(60)]
CONTRACT = """\
table: members
system: shop
files: members.csv
key: [member_id]
columns:
  - {name: member_id, class: direct_identifier, nullable: false}
  - {name: email, class: direct_identifier}
  - {name: postcode, class: quasi_identifier}
  - {name: visits, class: behavioural, type: int}
"""


# ---------------------------------------------------------------- declaring classes


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda t: t.replace("{name: postcode, class: quasi_identifier}", "{name: postcode}"),
         ["members", "postcode", "declares no data class", "quasi_identifier"]),
        (lambda t: t.replace("class: behavioural", "class: behavioral"),
         ["members", "visits", "unknown data class 'behavioral'", "direct_identifier, quasi_identifier"]),
    ],
    ids=["missing", "unknown"],
)  # fmt: skip
def test_a_contract_column_without_a_known_class_is_refused_naming_table_and_column(
    tmp_path: Path, edit: object, needles: list[str]
) -> None:
    (tmp_path / "members.yaml").write_text(edit(CONTRACT))  # type: ignore[operator]
    with pytest.raises(ValueError) as err:
        load_contracts(tmp_path)
    assert "members.yaml" in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_ingest_with_an_unclassed_column_fails_in_one_line_and_lands_nothing(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "members.yaml").write_text(CONTRACT.replace(", class: quasi_identifier", ""))
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "members.csv").write_text("member_id,email,postcode,visits\nM1,a@example.org,10001,3\n")
    (drop / "manifest.json").write_text('{"export_date": "2025-01-31"}')
    home = tmp_path / "home"
    args = ["--home", str(home), "ingest", "--source", str(drop), "--contracts", str(tmp_path / "contracts"),
            "--engine", "local"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "members.yaml: members: column postcode: declares no data class" in lines[0]
    assert not (home / "lake").exists()


def test_classes_are_read_from_class_or_data_class_and_listed_per_column(tmp_path: Path) -> None:
    (tmp_path / "members.yaml").write_text(CONTRACT)
    contract = load_contracts(tmp_path).get("members")
    assert contract_classes(contract) == {"member_id": "direct_identifier", "email": "direct_identifier",
                                          "postcode": "quasi_identifier", "visits": "behavioural"}  # fmt: skip
    # The manifest remembers contracts by field name: they read back the same.
    assert Contract.model_validate(contract.model_dump(mode="json")) == contract
    with pytest.raises(ValueError, match="column x: declares no data class"):
        ColumnRule.model_validate({"name": "x"})


def test_the_shipped_contracts_class_every_column_as_a_privacy_reviewer_would() -> None:
    classes = {c.table: contract_classes(c) for c in load_contracts().contracts}
    assert all(v in DATA_CLASSES for cols in classes.values() for v in cols.values())
    crm = classes["crm_accounts"]
    for column in ("crm_id", "first_name", "last_name", "email", "phone", "address_line"):
        assert crm[column] == "direct_identifier", column
    for column in ("birth_date", "postcode", "gender", "city", "state", "region"):
        assert crm[column] == "quasi_identifier", column
    assert crm["segment"] == "inferred" and crm["created_at"] == "behavioural"
    assert classes["northwind_customers"]["full_name"] == "direct_identifier"
    assert classes["support_tickets"]["description"] == "direct_identifier"  # free text may name the person
    assert classes["billing_transactions"]["amount"] == "behavioural"


def test_lake_classes_come_from_the_remembered_contract_and_fill_a_legacy_one_from_the_shipped(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home")
    assert lake_classes(settings)["crm_accounts"]["email"] == "direct_identifier"  # nothing landed: shipped ones
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "members.yaml").write_text(CONTRACT)
    members = load_contracts(tmp_path / "c").get("members").model_dump(mode="json")
    crm = load_contracts().get("crm_accounts").model_dump(mode="json")
    legacy = {**crm, "columns": [{k: v for k, v in c.items() if k != "data_class"} for c in crm["columns"]]}
    settings.lake_dir.mkdir(parents=True)
    (settings.lake_dir / MANIFEST).write_text(
        LakeManifest(contracts={"members": members, "crm_accounts": legacy}).to_json()
    )
    found = lake_classes(settings)
    assert found["members"] == {"member_id": "direct_identifier", "email": "direct_identifier",
                                "postcode": "quasi_identifier", "visits": "behavioural"}  # fmt: skip
    assert found["crm_accounts"] == contract_classes(load_contracts().get("crm_accounts"))
    # A legacy column the shipped contract does not know stays unclassed: named, not guessed.
    legacy["columns"].append({"name": "loyalty_tier"})
    (settings.lake_dir / MANIFEST).write_text(LakeManifest(contracts={"crm_accounts": legacy}).to_json())
    with pytest.raises(ValueError, match="loyalty_tier: declares no data class"):
        lake_contract(settings, "crm_accounts")


def test_every_feature_declares_a_class_and_the_config_may_reclassify_by_name() -> None:
    with pytest.raises(DataClassError, match="feature tenure: declares no data class"):
        Feature("tenure", "", "")
    with pytest.raises(DataClassError, match="feature tenure: unknown data class 'personal'"):
        Feature("tenure", "", "", data_class="personal")
    config = load_feature_config()
    classes = feature_classes(config)
    every = {f.name for fs in feature_sets(config) for f in fs.features}
    assert every <= set(classes) and set(classes.values()) <= set(DATA_CLASSES)
    assert (classes["region"], classes["gender"], classes["segment"], classes["tickets_90d"]) == (
        "quasi_identifier", "quasi_identifier", "inferred", "behavioural",
    )  # fmt: skip
    data = config.model_dump()
    changed = FeatureConfig.model_validate({**data, "classes": {"region": "sensitive"}})
    assert feature_classes(changed)["region"] == "sensitive"
    region = next(f for fs in feature_sets(changed) for f in fs.features if f.name == "region")
    assert region.data_class == "sensitive"
    with pytest.raises(ValueError, match="classes: feature region: unknown data class 'secret'"):
        FeatureConfig.model_validate({**data, "classes": {"region": "secret"}})
    with pytest.raises(FeatureConfigError, match="classes: no feature is called regoin"):
        feature_sets(FeatureConfig.model_validate({**data, "classes": {"regoin": "sensitive"}}))


def test_the_offline_manifest_records_each_features_class_as_built(tmp_path: Path) -> None:
    import datetime as dt

    import pyarrow as pa

    from features.featurestore.offline import read_manifest
    from features.featurestore.store import offline_root, write_offline

    settings = Settings(home=tmp_path / "home")
    table = pa.table({"customer_key": ["K1"], "as_of": [dt.date(2025, 3, 1)], "region": ["West"], "tenure_days": [3.0]})
    write_offline(settings, "relationship@1", {}, "d1", table, {"2025-03-01": {"rows": 1}})
    manifest = read_manifest(offline_root(settings), "relationship@1")
    assert manifest is not None
    assert manifest["data_classes"] == {"region": "quasi_identifier", "tenure_days": "behavioural"}


def test_check_data_class_names_the_place_and_the_allowed_values() -> None:
    assert check_data_class("inferred", "x") == "inferred"
    with pytest.raises(DataClassError, match=r"column email: unknown data class 'pii'; use one of direct_identifier"):
        check_data_class("pii", "column email")


def test_features_status_lists_the_features_per_class(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "features", "status"])
    assert result.exit_code == 0, result.output
    assert "Features by data class" in result.output
    line = next(x for x in result.output.splitlines() if "quasi_identifier" in x)
    assert "region" in line and "age_band" in line


# ---------------------------------------------------------------- own tables


def _own_frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "customer_id": [f"C{i:04d}" for i in range(n)],
        # Shared (family) emails and names: not all distinct, so only their class keeps them from being categories.
        "email": [EMAILS[i % 10] for i in range(n)],
        "full_name": [f"Name{i % 12}" for i in range(n)],
        "age": rng.integers(18, 90, n).astype(str),
        "zip": rng.choice(["10001", "94110", "60601"], n),
        "PhoneService": rng.choice(["Yes", "No"], n),
        "tenure": rng.integers(1, 72, n).astype(str),
        "plan": rng.choice(["basic", "plus"], n),
        "churned": rng.choice(["yes", "no"], n),
    })  # fmt: skip


def test_own_table_columns_get_classes_by_name_and_type_and_direct_identifiers_are_no_features() -> None:
    typed = type_columns(_own_frame(), {"customer_id": "id", "churned": "label"}, "t.csv")
    classes = typed.data_classes
    assert classes["email"] == classes["full_name"] == classes["customer_id"] == "direct_identifier"
    assert classes["age"] == classes["zip"] == "quasi_identifier"
    assert classes["tenure"] == classes["PhoneService"] == classes["plan"] == "behavioural"  # a yes/no says whether
    features = {*typed.numeric, *typed.categorical}
    assert "email" not in features and "full_name" not in features
    assert {"age", "zip", "tenure", "plan", "PhoneService"} <= features
    rows = {r["column"]: r for r in typed.describe()}
    assert rows["email"]["role"] == "dropped" and "direct identifier" in rows["email"]["note"]
    assert rows["age"]["class"] == "quasi_identifier"
    assert infer_data_class("ethnicity", "categorical") == "sensitive"
    assert infer_data_class("credit_score", "numeric") == "inferred"


def test_a_schema_file_sets_classes_and_an_unknown_class_names_the_column(tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text("plan: {type: categorical, class: sensitive}\ntenure: direct_identifier\nage: numeric\n")
    types, classes = read_schema(schema)
    assert types == {"plan": "categorical", "age": "numeric"}
    assert classes == {"plan": "sensitive", "tenure": "direct_identifier"}
    typed = type_columns(_own_frame(), {"customer_id": "id", "churned": "label"}, "t.csv", types,
                         classes=classes)  # fmt: skip
    assert typed.data_classes["plan"] == "sensitive" and "plan" in typed.categorical
    assert "tenure" not in typed.numeric and "--schema" in typed.dropped["tenure"]
    schema.write_text("plan: {class: secret}\n")
    with pytest.raises(TableTypeError, match="column 'plan' has unknown data class 'secret'; use one of direct_"):
        read_schema(schema)


def test_the_run_lineage_records_an_own_tables_classes_without_its_subject_key() -> None:
    from models.own_tables import OwnTable

    typed = type_columns(_own_frame(), {"customer_id": "id", "churned": "label"}, "t.csv")
    trained = TrainedModel("churn", [], {}, {}, info={"schema": typed.describe()})
    record = own_data_classes(OwnTable(Path("t.csv"), "customer_id", "churned"), trained)
    assert record["subject_key"] == "customer_id" and "customer_id" not in record["data_classes"]
    assert record["data_classes"]["email"] == "direct_identifier"


# ---------------------------------------------------------------- enforcement


def test_strip_and_guard() -> None:
    frame = pd.DataFrame({"customer_key": ["K1"], "email": ["a@b.c"], "x": [1.0]})
    classes = {"email": "direct_identifier", "x": "behavioural"}
    assert list(without_direct_identifiers(frame, classes).columns) == ["customer_key", "x"]
    with pytest.raises(DataClassError, match="inference log: column\\(s\\) email are direct identifiers"):
        check_no_direct_identifiers(frame, classes, "inference log")
    check_no_direct_identifiers(frame[["customer_key", "x"]], classes, "inference log")


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.sampled_from([*DATA_CLASSES, None]), max_size=8))
def test_stripping_never_leaks_a_direct_identifier_and_keeps_everything_else_in_order(
    classed: dict[str, str | None],
) -> None:
    frame = pd.DataFrame({name: [1] for name in classed})
    classes = {name: c for name, c in classed.items() if c is not None}
    kept = without_direct_identifiers(frame, classes)
    assert list(kept.columns) == [n for n in classed if classes.get(n) != "direct_identifier"]
    check_no_direct_identifiers(kept, classes, "anywhere")


def _trained_with_emails(n: int = 60) -> TrainedModel:
    rng = np.random.default_rng(1)
    rows = pd.DataFrame({"customer_key": [f"K{i}" for i in range(n)], "email": EMAILS[:n],
                         "x1": rng.normal(size=n), "x2": rng.normal(size=n)})  # fmt: skip
    rows["label"] = (rows["x1"] + rng.normal(size=n) > 0).astype(int)
    model = LogisticRegression().fit(rows[["x1", "x2"]], rows["label"])
    return TrainedModel(
        "churn",
        [LoggedModel("model", model, "sklearn", rows[["x1", "x2"]].head(3), registered_model="classes-churn")],
        params={}, metrics={"test_auc": 0.7},
        tables={"scored": rows.assign(score=model.predict_proba(rows[["x1", "x2"]])[:, 1])},
        training_frame=rows,
        evaluation_set=EvaluationSet(rows, "classifier", ["x1", "x2"], "label"),
        reference=rows[["customer_key", "email", "x1", "x2"]],
        data_classes={"email": "direct_identifier", "x1": "behavioural", "x2": "behavioural"},
    )  # fmt: skip


def test_mlflow_logged_rows_hold_no_direct_identifier(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    registry = Registry(settings)
    trained = _trained_with_emails()
    record = registry.log_training_run(trained, registry.ensure_experiment("classes"), {},
                                       {"data_classes": {"x1": "behavioural"}}, "rows.parquet")  # fmt: skip
    run_id = record.run_id
    evaluation = registry.read_evaluation_set(run_id)
    reference = registry.read_reference(run_id)
    assert evaluation is not None and reference is not None
    assert list(evaluation.frame.columns) == ["customer_key", "x1", "x2", "label"]  # the subject key stays
    assert list(reference.columns) == ["customer_key", "x1", "x2"]
    run = registry.client.get_run(run_id)
    schema = json.loads(run.inputs.dataset_inputs[0].dataset.schema)
    assert "email" not in json.dumps(schema) and "x1" in json.dumps(schema)
    table = registry.client.download_artifacts(run_id, "tables/scored.csv", str(tmp_path))
    assert "email" not in Path(table).read_text().splitlines()[0]
    # No email anywhere: every artifact (input example, model, tables, samples) and the tracking database.
    leaked = [str(p) for p in settings.home_dir.rglob("*") if p.is_file() and b"@example.org" in p.read_bytes()]
    assert leaked == []
    # A model reading a direct identifier is refused before its run starts.
    trained.data_classes = {"x2": "direct_identifier"}
    runs = len(registry.client.search_runs([record.experiment_id]))
    with pytest.raises(DataClassError, match="churn model model inputs: column\\(s\\) x2 are direct identifiers"):
        registry.log_training_run(trained, record.experiment_id, {}, {}, "rows.parquet")
    assert len(registry.client.search_runs([record.experiment_id])) == runs


def test_the_inference_log_keeps_no_direct_identifier(tmp_path: Path) -> None:
    policy = load_serving_policy()
    policy.audit.log_inputs = True
    model = ServedModel("churn", "m", "1", None, ["x1", "email"], None, None, "now",
                        data_classes={"email": "direct_identifier"})  # fmt: skip
    log = InferenceLog(tmp_path / "log", "hash", "salt", flush_seconds=0.01)
    row = {"x1": 0.5, "email": EMAILS[0], "as_of": "2025-01-01"}
    one = audit_entry(policy, log, "caller", "/churn", model, "K1", {"score": 0.1}, False, False, row)
    many = audit_entries(policy, log, "caller", "/churn/batch", model, ["K2"], [{"score": 0.2}], [False], [row],
                         ready=[json.dumps({"x1": 0.5, "email": EMAILS[1]})])  # fmt: skip
    log.record(one)
    log.record_many(many)
    time.sleep(0.05)
    log.close()
    written = "".join(p.read_text() for p in (tmp_path / "log").glob("*.jsonl"))
    lines = [json.loads(x) for x in written.splitlines()]
    assert len(lines) == 2 and all(entry["inputs"] == {"x1": 0.5} for entry in lines)
    assert "@example.org" not in written


def test_monitoring_samples_and_evidently_pages_hold_no_direct_identifier(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"email": EMAILS, "x1": rng.normal(size=60)})
    classes = {"email": "direct_identifier"}
    reference = reports.sample_rows(frame, 40, classes)
    current = reports.sample_rows(frame.assign(x1=frame["x1"] + 1), 40, classes)
    assert list(reference.columns) == list(current.columns) == ["x1"] and len(reference) == 40
    snapshot = reports.evidently_drift(reference, current, {"x1": "num"}, {"x1": ("auto", None)}, 0.5, False)
    snapshot.save_html(str(tmp_path / "drift.html"))
    snapshot.save_json(str(tmp_path / "drift.json"))
    assert not [p for p in tmp_path.iterdir() if b"@example.org" in p.read_bytes()]
