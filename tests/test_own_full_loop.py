"""The full loop on one's own tables, through the real command line: a transactions-only retailer.

A user with one CSV of purchase lines (ids only: no names, no accounts, no catalogue) writes
a contract, an identity config and a features config (`examples/retailer`, copied into a
folder of their own) and runs `custintel ingest`, `resolve` and `features` from another
working directory. Every figure the platform reports is reconciled against the file itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tests.retailer import RETAILER_EXAMPLE, RetailerDrop, write_retailer_drop

CLI = Path(sys.executable).with_name("custintel")
CUTOFFS = ("2011-03-01", "2011-06-01", "2011-09-01")


@dataclass(frozen=True)
class Loop:
    """One retailer taken through ingest, resolve and features; where everything is."""

    drop: RetailerDrop
    home: Path
    env: dict[str, str]
    workdir: Path
    outputs: dict[str, str]  # command -> its console output


def run_cli(loop_env: dict[str, str], workdir: Path, *args: str, timeout: float = 300) -> str:
    """Run `custintel ARGS` as the user would; fail with its output unless it succeeds without a traceback."""
    done = subprocess.run(
        [str(CLI), *args], cwd=workdir, env=loop_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"custintel {' '.join(args)} exited {done.returncode}:\n{output}"
    assert "Traceback" not in output, output
    return output


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Loop:
    root = tmp_path_factory.mktemp("retailer")
    drop = write_retailer_drop(root / "drop")
    configs = root / "my-configs"  # the user's own copies, outside the repository
    shutil.copytree(RETAILER_EXAMPLE, configs)
    workdir = root / "somewhere-else"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTINTEL_", "PREFECT_"))}
    env |= {
        "CUSTINTEL_HOME": str(root / "home"),
        "CUSTINTEL_IDENTITY_CONFIG": str(configs / "identity.yaml"),
        "CUSTINTEL_FEATURES_CONFIG": str(configs / "features.yaml"),
        "PREFECT_HOME": str(root / "prefect"),
        "COLUMNS": "200",
    }
    outputs = {
        "ingest": run_cli(
            env,
            workdir,
            "ingest",
            "--source",
            str(root / "drop"),
            "--contracts",
            str(configs / "contracts"),
            "--engine",
            "local",
        ),  # fmt: skip
        "resolve": run_cli(env, workdir, "resolve", "--engine", "local"),
        "features": run_cli(env, workdir, "features", *(f"--as-of={d}" for d in CUTOFFS), "--engine", "local"),
    }
    return Loop(drop, root / "home", env, workdir, outputs)


def _lines(drop: RetailerDrop) -> pd.DataFrame:
    """The accepted lines, read straight from the CSV: a customer id and a price of at least 0."""
    raw = pd.read_csv(drop.path, dtype=str, keep_default_na=False)
    lines = raw[(raw["Customer ID"] != "") & (raw["Price"].astype(float) >= 0)].copy()
    lines["time"] = pd.to_datetime(lines["InvoiceDate"])
    lines["amount"] = lines["Price"].astype(float) * lines["Quantity"].astype(int)
    return lines


def _offline(home: Path, set_name: str) -> pd.DataFrame:
    files = str(home / "features" / "offline" / set_name / "v1" / "as_of=*" / "data.parquet")
    with duckdb.connect() as con:
        return con.sql(f"SELECT * FROM read_parquet('{files}')").df()


def test_every_row_is_landed_or_quarantined_with_its_reason(loop: Loop) -> None:
    report = json.loads((loop.home / "reports" / "ingest" / "latest.json").read_text())
    t = report["tables"]["retail_lines"]
    assert t["read"] == loop.drop.rows
    assert t["accepted"] + t["quarantined"] == t["read"]
    assert t["reasons"] == {"customer_id: missing": loop.drop.guest_rows, "price: below_minimum": 2}
    assert t["quarantined"] == loop.drop.guest_rows + loop.drop.bad_debt_rows
    assert "all counts reconcile" in loop.outputs["ingest"]


def test_each_customer_id_becomes_one_customer_without_matching(loop: Loop) -> None:
    crosswalk = pd.read_parquet(loop.home / "identity" / "crosswalk.parquet")
    ids = set(_lines(loop.drop)["Customer ID"])
    assert len(ids) == loop.drop.customers
    assert set(crosswalk["record_key"]) == {f"retail_lines:{i}" for i in ids}
    assert crosswalk["customer_key"].nunique() == len(crosswalk) == loop.drop.customers
    run = json.loads((loop.home / "identity" / "run.json").read_text())
    assert run["options"]["probabilistic"] is False and run["stats"]["mode"] == "ids_only"
    assert "mode ids_only" in loop.outputs["resolve"]


def test_the_feature_store_has_a_row_per_customer_known_at_each_cutoff(loop: Loop) -> None:
    first = _lines(loop.drop).groupby("Customer ID")["time"].min()
    value, labels = _offline(loop.home, "value"), _offline(loop.home, "labels")
    purchase_labels = _offline(loop.home, "purchase_labels")
    products = _lines(loop.drop)["StockCode"].nunique()
    for day in CUTOFFS:
        known = int((first < pd.Timestamp(day)).sum())
        assert known > 0
        at = pd.Timestamp(day)
        assert (value["as_of"] == at).sum() == known
        assert (labels["as_of"] == at).sum() == known
        assert labels.loc[labels["as_of"] == at, "buys_any_90d"].notna().all()  # 90 days fit before the export
        assert (purchase_labels["as_of"] == at).sum() == known * products  # every customer x stock code


def test_purchase_features_and_labels_reconcile_with_the_file(loop: Loop) -> None:
    lines = _lines(loop.drop)
    crosswalk = pd.read_parquet(loop.home / "identity" / "crosswalk.parquet")
    key = dict(zip(crosswalk["record_key"].str.removeprefix("retail_lines:"), crosswalk["customer_key"], strict=True))
    lines["customer_key"] = lines["Customer ID"].map(key)
    cutoff = pd.Timestamp(CUTOFFS[-1])
    before = lines[lines["time"] < cutoff]
    bought = before[before["amount"] >= 0]
    last90 = bought[bought["time"] >= cutoff - pd.Timedelta(days=90)]
    returns365 = before[(before["amount"] < 0) & (before["time"] >= cutoff - pd.Timedelta(days=365))]
    after = lines[(lines["time"] >= cutoff) & (lines["time"] < cutoff + pd.Timedelta(days=90)) & (lines["amount"] >= 0)]
    expected = pd.DataFrame(
        {
            "frequency_90d": last90.groupby("customer_key").size(),
            "monetary_90d": last90.groupby("customer_key")["amount"].sum(),
            "recency_days": (cutoff - bought.groupby("customer_key")["time"].max()).dt.total_seconds() / 86400,
            "refunds_365d": returns365.groupby("customer_key").size(),
        }
    ).reindex(before["customer_key"].unique())
    expected = expected.fillna({"frequency_90d": 0, "monetary_90d": 0.0, "refunds_365d": 0})
    value = _offline(loop.home, "value").set_index("customer_key")
    value = value[value["as_of"] == cutoff].reindex(expected.index)
    for column in ("frequency_90d", "monetary_90d", "recency_days", "refunds_365d"):
        pd.testing.assert_series_equal(value[column].astype(float), expected[column].astype(float), check_names=False)
    assert (value["refunds_365d"] > 0).any() and (value["frequency_90d"] > 0).any()
    labels = _offline(loop.home, "labels").set_index("customer_key")
    labels = labels[labels["as_of"] == cutoff].reindex(expected.index)
    assert labels["buys_any_90d"].astype(bool).to_dict() == {k: k in set(after["customer_key"]) for k in expected.index}
    assert 0 < labels["buys_any_90d"].mean() < 1  # some come back, some do not
    # non-contractual churn (the user's labels config): no purchase within 90 days of the cutoff
    assert (labels["churn_90d"].astype(bool) == ~labels["buys_any_90d"].astype(bool)).all()


def test_the_manifest_names_every_dropped_feature_and_why(loop: Loop) -> None:
    manifest = json.loads((loop.home / "features" / "manifest.json").read_text())
    assert manifest["inputs"]["derived_sources"].keys() == {"accounts", "products"}
    relationship = manifest["sets"]["relationship@1"]["dropped_features"]
    assert relationship["open_accounts"].startswith("needs accounts.closed_at: accounts are derived")
    assert relationship["plan"].startswith("needs transactions.kind: no table maps it")
    assert relationship["segment"].startswith("needs source profiles")
    assert manifest["sets"]["value@1"]["dropped_features"]["discount_share_365d"] == (
        "reads dropped feature discount_amount_365d"
    )
    assert manifest["sets"]["service@1"]["skipped"].startswith("needs absent source(s)")
    # no golden record has a birth date or a gender: each collapses, is dropped with a warning, and the set is not kept
    attributes = manifest["sets"]["attributes@1"]
    assert attributes["skipped"] == "every feature was dropped"
    assert attributes["dropped_features"]["gender"].startswith("collapsed, every one of")
    assert "WARNING attributes@1: dropped age_years, age_band, gender: collapsed" in loop.outputs["features"]
    assert not (loop.home / "features" / "offline" / "attributes").exists()
    kept = set(_offline(loop.home, "relationship").columns)
    assert "tenure_days" in kept and not kept & {"open_accounts", "plan", "segment"}


@pytest.mark.integration
@pytest.mark.slow
def test_the_serving_build_under_prefect_is_looked_up_by_customer_key(loop: Loop) -> None:
    """The serving build (no --as-of: as of the export date) as the Prefect flow, then an online lookup."""
    output = run_cli(loop.env, loop.workdir, "features")
    assert "online (sqlite): value@1 as of 2011-12-10" in output
    customer_key = str(pd.read_parquet(loop.home / "identity" / "crosswalk.parquet")["customer_key"].iloc[0])
    found = json.loads(run_cli(loop.env, loop.workdir, "features", "lookup", customer_key))
    assert found["value@1"]["as_of"] == "2011-12-10" and found["value@1"]["recency_days"] >= 0


@pytest.mark.integration
@pytest.mark.slow
def test_non_contractual_churn_is_trained_promoted_and_served_by_customer_key(loop: Loop, tmp_path: Path) -> None:
    """The rest of the loop: train the retailer's churn (its own training config), promote it, serve it by key."""
    import httpx

    from tests.conftest import start_service

    env = {
        **loop.env,
        "CUSTINTEL_TRAINING_CONFIG": str(RETAILER_EXAMPLE / "training.yaml"),
        "CUSTINTEL_GOVERNANCE_POLICY": str(RETAILER_EXAMPLE / "policy.yaml"),
    }
    trained = run_cli(env, loop.workdir, "train", "churn", "--engine", "local", "--trials", "3")
    assert "registered retailer-churn version 1 as @challenger" in trained, trained
    from custintel.settings import Settings
    from models.registry import Registry

    settings = Settings(home=loop.home, training_config=RETAILER_EXAMPLE / "training.yaml")
    registry = Registry(settings)
    run_id = registry.version("retailer-churn", "1").run_id
    assert run_id is not None
    run = registry.client.get_run(run_id).data
    assert run.params["label_definition"] == "no purchase within 90 days of the cutoff (non-contractual)"
    assert 0.5 < run.metrics["baseline_bgnbd_test_auc"] <= 1  # the probability-alive baseline, beside the model
    assert run.metrics["test_auc"] > 0.6
    # no golden record carries a protected attribute: nothing can be audited, which a named approver may waive
    promoted = run_cli(env, loop.workdir, "promote", "churn", "--engine", "local", "--approver", "Retail Lead",
                       "--reason", "no protected attribute is held for this retailer's customers")  # fmt: skip
    assert "retailer-churn v1: waived  champion none -> 1" in promoted, promoted
    run_cli(env, loop.workdir, "features", "--engine", "local")  # the serving build: online as of the export
    service_env = {k: v for k, v in env.items() if k.startswith(("CUSTINTEL_", "PREFECT_"))}
    service_env["CUSTINTEL_SERVING_API_KEYS"] = "retail-key"
    process, url = start_service(service_env, tmp_path / "serve.log")
    try:
        keys = pd.read_parquet(loop.home / "identity" / "crosswalk.parquet")["customer_key"].astype(str)
        answer = httpx.post(url + "/churn/score", json={"customer_key": keys.iloc[0]},
                            headers={"Authorization": "Bearer retail-key"}, timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "scored" and 0 <= body["score"] <= 1, body
        assert body["model"]["name"] == "retailer-churn" and body["model"]["version"] == "1"
    finally:
        process.terminate()
        process.wait(30)
