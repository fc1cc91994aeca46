"""A user's own table, honestly: leaking columns excluded (or kept, recorded), label windows across stages refused,
baselines fitted and compared in every run, only what was used logged, and a contact capacity sized to the table."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import flows.train  # noqa: F401  (Prefect binds its log handlers to the streams of its first import: not CliRunner's)
from flows.cli import app
from models.churn import contact_capacity
from models.config import LeakageConfig
from models.leakage import check_label_windows, find_leaks, guard_table, single_feature_auc
from models.own_tables import TrainingInputError
from models.splits import LabelledTable, stage_at_random, stage_by_time


def telco(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """A telecom-shaped snapshot table: churn falls with tenure and contract; total charges = tenure x monthly."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n).astype(float)
    monthly = rng.uniform(20, 110, n).round(2)
    contract = rng.choice(["month", "year", "two_year"], n, p=[0.5, 0.3, 0.2])
    logit = 0.8 - 0.05 * tenure + 0.015 * (monthly - 60) + np.where(contract == "month", 0.9, -0.9)
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "customer": [f"C{i:05d}" for i in range(n)],
            "tenure": tenure,
            "MonthlyCharges": monthly,
            "TotalCharges": (tenure * monthly * rng.uniform(0.98, 1.02, n)).round(2),
            "contract": contract,
            "noise": rng.normal(size=n),
            "churned": np.where(churned, "Yes", "No"),
        }
    )


def table_of(frame: pd.DataFrame, label: str = "churned", duration: str | None = None) -> LabelledTable:
    labels = frame[label].map({"Yes": True, "No": False}) if frame[label].dtype == object else frame[label]
    frame = frame.assign(**{label: labels})
    return LabelledTable(frame, "customer", label, stage_at_random(frame[label], 0), duration=duration,
                         event=label if duration else None, lineage="mine.csv")  # fmt: skip


# ---------------------------------------------------------------- the leak guard on small frames


def test_honest_columns_pass_and_a_copy_of_the_label_does_not() -> None:
    frame = telco()
    frame["churn_flag"] = frame["churned"]  # the label again, as text
    frame["status_code"] = np.where(frame["churned"] == "Yes", 1, 0)  # the label as a number
    y = (frame["churned"] == "Yes").to_numpy()
    leaks = find_leaks(frame.assign(churned=y), [c for c in frame.columns if c not in ("customer", "churned")],
                       "churned", None, LeakageConfig())  # fmt: skip
    assert [(leak.column, leak.target, leak.measure) for leak in leaks] == [
        ("churn_flag", "label", "AUC"),
        ("status_code", "label", "AUC"),
    ]
    assert all(leak.value == pytest.approx(1.0) for leak in leaks)
    # an id unique to each row carries no signal under the cross-fitted encoding
    assert single_feature_auc(frame["customer"], y) == pytest.approx(0.5, abs=0.02)


def test_a_near_monotone_function_of_the_label_is_caught_in_either_direction() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(800) < 0.3
    days_since_cancel = np.where(y, rng.uniform(0, 5, 800), rng.uniform(6, 400, 800))  # lower for churners
    assert single_feature_auc(pd.Series(days_since_cancel), y) == pytest.approx(1.0)
    blurred = pd.Series(np.where(y, 1.0, 0.0) + rng.normal(0, 0.05, 800))
    assert single_feature_auc(blurred, y) > 0.98
    honest = pd.Series(np.where(y, 1.0, 0.0) + rng.normal(0, 1.0, 800))
    assert 0.6 < single_feature_auc(honest, y) < 0.9


def test_total_charges_is_excluded_with_the_duration_not_monthly_charges() -> None:
    frame = telco()
    table = table_of(frame, duration="tenure")
    guarded, report = guard_table(table, LeakageConfig())
    (leak,) = report.excluded
    assert leak.column == "TotalCharges" and leak.target == "duration" and leak.via == "TotalCharges / MonthlyCharges"
    assert leak.value > 0.99
    assert leak.describe().startswith("TotalCharges: |Spearman| ") and "with duration tenure" in leak.describe()
    assert "TotalCharges" in guarded.excluded and "MonthlyCharges" not in guarded.excluded
    # without --duration the same column is only a correlate of the label: kept
    assert not guard_table(table_of(frame), LeakageConfig())[1].excluded


def test_keep_overrides_the_guard_and_is_recorded() -> None:
    table = table_of(telco(), duration="tenure")
    guarded, report = guard_table(table, LeakageConfig(), keep=["TotalCharges"])
    assert not report.excluded and [k.column for k in report.kept] == ["TotalCharges"]
    assert "TotalCharges" not in guarded.excluded
    assert report.as_dict()["kept"][0]["column"] == "TotalCharges"
    with pytest.raises(TrainingInputError, match=r"--keep column\(s\) \['Total'\] are not in the table"):
        guard_table(table, LeakageConfig(), keep=["Total"])


def test_thresholds_come_from_the_config() -> None:
    table = table_of(telco(), duration="tenure")
    assert not guard_table(table, LeakageConfig(duration_spearman=1.0))[1].excluded


def _snapshots(months: int = 10, per_month: int = 50) -> LabelledTable:
    days = pd.date_range("2024-01-01", periods=months, freq="MS").repeat(per_month)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"customer": np.arange(len(days)) % per_month, "snapshot": days,
                          "x": rng.normal(size=len(days)), "churned": rng.random(len(days)) < 0.3})  # fmt: skip
    return LabelledTable(frame, "customer", "churned", stage_by_time(frame["snapshot"]), snapshot="snapshot",
                         lineage="snaps.csv")  # fmt: skip


def test_label_windows_crossing_the_next_stage_are_refused_with_counts_and_dates() -> None:
    table = _snapshots()
    with pytest.raises(TrainingInputError) as refused:
        check_label_windows(table, 90)
    message = str(refused.value)
    assert message.startswith("snaps.csv: --split-by snapshot with --horizon 90: ")
    assert "100 train rows (snapshots 2024-05-01 to 2024-06-01)" in message
    assert "past the first valid snapshot 2024-07-01" in message and "first test snapshot" in message
    check_label_windows(table, 28)  # a month apart, a 28-day label: no window crosses


def test_a_time_split_without_a_horizon_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from models.leakage import guard_own_table

    with caplog.at_level("WARNING", logger="custintel.models"):
        guard_own_table(_snapshots(), LeakageConfig(), (), None)
    assert "--split-by snapshot without --horizon" in caplog.text


def test_the_capacity_is_a_share_of_the_scored_customers_unless_given() -> None:
    assert contact_capacity(None, 0.05, 1000) == (50, contact_capacity(None, 0.05, 1000)[1])
    assert "5.0% of the 1,000 customers scored" in contact_capacity(None, 0.05, 1000)[1]
    assert contact_capacity(None, 0.05, 3)[0] == 1
    assert contact_capacity(500, 0.05, 1000)[0] == 500


def test_the_card_says_the_runs_horizon_and_the_gate_says_how_to_waive() -> None:
    from governance.cards import intended_use_for
    from governance.gate import waiver_hint
    from governance.policy import load_policy
    from governance.promotion import label_lines, source_lines

    text = load_policy(None).family("churn").intended_use
    assert "next 90 days" in text
    lines = label_lines({"label": {"column": "churned", "horizon_days": 182, "definition": "column 'churned'"}})
    assert lines == {"label": "column 'churned'", "label horizon": "182 days"}
    assert label_lines({"sha256": "ab12", "label": {"column": "churned"}})["file sha256"] == "ab12"
    own = source_lines({"source": "/data/telco.csv", "split": {"method": "at random", "seed": 0,
                                                                 "sizes": {"test": 240, "train": 720}}})  # fmt: skip
    assert own == {"source file": "/data/telco.csv", "split": "at random (seed 0; rows: test 240, train 720)"}
    store = source_lines({"feature_sets": {"value@1": {"digest": "d1"}}, "as_of": ["2025-06-01"]})
    assert store == {"feature sets": "value@1 (digest d1)", "cutoffs (as of)": "2025-06-01"}
    card = intended_use_for(text, lines["label horizon"])
    assert "within 182 days" in card and "90 days" not in card
    assert "horizon was not given" in intended_use_for(text, "not given")
    rules = load_policy(None).family("churn")
    assert "--approver NAME --reason TEXT" in waiver_hint(rules, 300)
    blocked = waiver_hint(rules.model_copy(update={"on_failure": "block"}), 300)
    assert "on_failure: waiver" in blocked and "CUSTINTEL_GOVERNANCE_POLICY" in blocked


# ---------------------------------------------------------------- a real run through the command line


def _run(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--home", str(home), "train", "churn", "--engine", "local", *args])
    return result.exit_code, result.output


@pytest.mark.slow
def test_a_byo_run_excludes_the_leak_keeps_what_is_kept_fits_baselines_and_logs_only_what_it_used(
    new_settings, tmp_path: Path
) -> None:
    from models.registry import Registry

    frame = telco()
    frame["cancel_code"] = np.where(frame["churned"] == "Yes", "C1", "none")  # written when the customer left
    path = tmp_path / "telco.csv"
    frame.to_csv(path, index=False)
    settings = new_settings()
    code, out = _run(settings.home_dir, "--trials", "1", "--table", str(path), "--id", "customer", "--label",
                     "churned", "--duration", "tenure", "--horizon", "182", "--keep", "cancel_code")  # fmt: skip
    assert code == 0, out
    assert "TotalCharges: |Spearman| " in out and "excluded; --keep TotalCharges to keep it" in out
    assert "cancel_code: AUC 1.000 with label churned: kept (--keep cancel_code)" in out
    assert "baselines: the model's test AUC" in out

    registry = Registry(settings)
    client = registry.client
    run = client.search_runs([client.get_experiment_by_name("custintel").experiment_id])[0]
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    # what it never used is not claimed: no feature sets, no store cutoffs, no 'None'
    assert "custintel.feature_sets" not in tags and tags["custintel.source"] == "own_table"
    assert tags["custintel.table_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tags["custintel.leakage.excluded"] == "TotalCharges" and tags["custintel.leakage.kept"] == "cancel_code"
    assert "None" not in params.values() and params["split_seed"] == "0" and "at random" in params["split_method"]
    assert params["calibrate_on"] == "validation"  # an own table calibrates on its validation rows, whatever the config
    lineage = registry.read_run_json(run.info.run_id, "lineage/lineage.json")
    assert lineage["options"] == {"path": str(path), "id_column": "customer", "label": "churned",
                                  "duration": "tenure", "keep": ["cancel_code"], "horizon_days": 182}  # fmt: skip
    assert lineage["split"]["seed"] == 0 and sum(lineage["split"]["sizes"].values()) == len(frame)
    assert lineage["label"]["horizon_days"] == 182 and "churned" in lineage["label"]["definition"]
    assert not {"feature_sets", "split", "horizon_days", "weekly_capacity"} & set(lineage["config"])
    assert "as_of" not in lineage and "None" not in str(lineage)
    used = {row["column"] for row in lineage["schema"] if row["role"] in ("feature", "numeric", "categorical")}
    assert "TotalCharges" not in used and {"MonthlyCharges", "contract", "cancel_code"} <= used
    assert {row["column"]: row["role"] for row in lineage["schema"]}["TotalCharges"] == "dropped"
    assert lineage["leakage"]["excluded"][0]["column"] == "TotalCharges"
    notes = {row["column"]: row["note"] for row in lineage["schema"]}
    assert notes["TotalCharges"].startswith("leak guard: |Spearman| ") and "kept by --keep" in notes["cancel_code"]
    # the baselines: logged, on the same test rows, and the verdict agrees with the figures
    for name in ("logistic", "lightgbm_untuned"):
        for metric in ("auc", "log_loss", "brier"):
            assert np.isfinite(metrics[f"baseline_{name}_test_{metric}"])
    best = max(metrics["baseline_logistic_test_auc"], metrics["baseline_lightgbm_untuned_test_auc"])
    beats = metrics["test_auc"] > best
    assert tags["custintel.beats_baselines"] == ("true" if beats else "false")
    assert ("NOT better than both baselines" in out) is not beats
    assert lineage["baselines"]["scores"]["model"]["auc"] == pytest.approx(metrics["test_auc"])
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    assert "tables/baselines.csv" in tables
    # the contact capacity is a share of the customers scored, not 500 of a 240-row validation set
    assert metrics["weekly_capacity"] == math.ceil(0.05 * metrics["rows_valid"])
    assert metrics["split_rows_test"] == metrics["rows_test"]


@pytest.mark.slow
def test_a_time_split_whose_label_windows_cross_is_refused_before_training(new_settings, tmp_path: Path) -> None:
    table = _snapshots()
    path = tmp_path / "snaps.csv"
    table.frame.assign(snapshot=table.frame["snapshot"].dt.date).to_csv(path, index=False)
    settings = new_settings()
    code, out = _run(settings.home_dir, "--trials", "1", "--table", str(path), "--id", "customer", "--label",
                     "churned", "--split-by", "snapshot", "--horizon", "90")  # fmt: skip
    assert code == 1 and "Traceback" not in out
    assert "label windows (+90 days) running past the first valid snapshot 2024-07-01" in " ".join(out.split())
    assert "tuning and fitting" not in out
    assert not (settings.home_dir / "mlflow.db").exists()  # refused by the command's own checks, before any run
    code, out = _run(settings.home_dir, "--table", str(path), "--id", "customer", "--label", "churned",
                     "--split-by", "snapshot", "--keep", "no_such_column")  # fmt: skip
    assert code == 1 and "--keep column(s) ['no_such_column'] are not in the table" in out


@pytest.mark.slow
def test_capacity_given_and_a_recommendation_run_log_what_they_used(new_settings, tmp_path: Path) -> None:
    from models.registry import Registry

    path = tmp_path / "telco.csv"
    telco(600).to_csv(path, index=False)
    settings = new_settings()
    code, out = _run(settings.home_dir, "--trials", "1", "--table", str(path), "--id", "customer", "--label",
                     "churned", "--capacity", "7")  # fmt: skip
    assert code == 0, out
    assert "leak guard: no column gives the label churned away" in out
    client = Registry(settings).client
    experiment = client.get_experiment_by_name("custintel").experiment_id
    (churn,) = client.search_runs([experiment])
    assert churn.data.metrics["weekly_capacity"] == 7

    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"user": rng.integers(0, 60, 1500), "item": rng.integers(0, 40, 1500)}).drop_duplicates()
    inter = tmp_path / "inter.csv"
    rows.to_csv(inter, index=False)
    result = CliRunner().invoke(app, ["--home", str(settings.home_dir), "train", "recommendation", "--engine",
                                      "local", "--trials", "1", "--interactions", str(inter), "--user", "user",
                                      "--item", "item"])  # fmt: skip
    assert result.exit_code == 0, result.output
    run = next(r for r in client.search_runs([experiment]) if r.data.tags["custintel.family"] == "recommendation")
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert sum(metrics[f"split_rows_{s}"] for s in ("train", "valid", "test")) == len(rows)
    assert params["split_seed"] == "0" and "at random per user" in params["split_method"]
    assert "None" not in params.values() and "custintel.feature_sets" not in tags
