"""Uplift and propensity from a user's own table: checked, split and trained (issue 19, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.baselines import add_uplift_baseline
from models.config import load_training_config
from models.evaluation import qini_coefficient
from models.own_families import OwnPropensity, OwnUplift, own_propensity_table, own_uplift_table
from models.own_tables import TrainingInputError
from models.propensity import train_propensity, train_uplift
from models.tuning import FitClock, create_study


def _experiment(n: int = 1600, seed: int = 0) -> pd.DataFrame:
    """An offer test: the offer lifts conversion only for recent, engaged customers (the persuadables)."""
    rng = np.random.default_rng(seed)
    engaged = rng.uniform(0, 1, n)
    treated = rng.random(n) < 0.5
    p = 0.15 + 0.05 * engaged + np.where(treated, 0.35 * (engaged > 0.5), 0.0)
    return pd.DataFrame(
        {
            "member": [f"M{i:05d}" for i in range(n)],
            "arm": np.where(treated, "offer", "control"),
            "converted": np.where(rng.random(n) < p, "yes", "no"),
            "engagement": engaged.round(3),
            "region": rng.choice(["north", "south"], n),
        }
    )


def test_uplift_from_a_users_experiment_finds_the_persuadables(tmp_path: Path) -> None:
    path = tmp_path / "offer_test.csv"
    _experiment().to_csv(path, index=False)
    data = own_uplift_table(OwnUplift(path, "member", "arm", "converted"), seed=0)
    assert data.frame["treated"].mean() == pytest.approx(0.5, abs=0.05)
    assert set(data.stage.unique()) == {"train", "test"}
    assert "arm" not in data.frame.columns and "converted" not in data.frame.columns  # never features
    config = load_training_config().propensity
    assert config is not None and config.uplift is not None
    uplift = config.uplift.model_copy(update={"lightgbm": config.uplift.lightgbm.model_copy(update={"max_trees": 60})})
    trained = train_uplift(data, uplift, FitClock(), folds=3)
    frame = data.frame
    oracle = qini_coefficient(frame["retained"], frame["treated"], (frame["engagement"] > 0.5).astype(float))
    assert trained.metrics["crossfit_qini"] > 0.5 * oracle > 0  # ranks the persuadables first
    assert trained.metrics["average_treatment_effect"] == pytest.approx(0.175, abs=0.06)
    assert "as_of" not in trained.params and "converted" in trained.params["label_definition"]
    # the response model (who converts, not who is persuaded) is logged beside it, and the verdict follows the figures
    said = add_uplift_baseline(data, trained)
    baseline = trained.metrics["baseline_response_crossfit_qini"]
    assert said.startswith("better than" if trained.metrics["crossfit_qini"] > baseline else "NOT better than")
    assert trained.metrics["beats_baselines"] == float(trained.metrics["crossfit_qini"] > baseline)


def test_propensity_from_a_users_pairs_splits_by_customer(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    customers, products = [f"C{i:04d}" for i in range(400)], ["P1", "P2", "P3"]
    rows = pd.DataFrame([(c, p) for c in customers for p in products], columns=["customer", "sku"])
    rows["spend_90d"] = rng.gamma(2, 50, len(rows)).round(2)
    rows["bought"] = (rng.random(len(rows)) < 1 / (1 + np.exp(-(rows["spend_90d"] - 100) / 30))).astype(int)
    path = tmp_path / "pairs.parquet"
    rows.to_parquet(path)
    data = own_propensity_table(OwnPropensity(path, "customer", "sku", "bought"), seed=0)
    stages = data.frame.assign(stage=data.stage).groupby("customer")["stage"].nunique()
    assert (stages == 1).all()  # a customer's pairs are in one stage: the test holds unseen customers
    config = load_training_config().propensity
    assert config is not None
    small = config.model_copy(update={"tuning": config.tuning.model_copy(update={"trials": 2, "timeout_seconds": 60})})
    trained = train_propensity(data, small, create_study("own-propensity", small.tuning, None), FitClock())
    assert trained.metrics["test_auc"] > 0.75
    assert "horizon_days" not in trained.params and "per customer and sku" in trained.params["label_definition"]


@pytest.mark.parametrize(
    ("change", "own", "message"),
    [
        ({"arm": "offer"}, OwnUplift(Path("x"), "member", "arm", "converted"), "must hold two arms"),
        ({"arm": ["a", "b", "c"] * 533 + ["a"]}, OwnUplift(Path("x"), "member", "arm", "converted"), "two arms"),
        ({"converted": "maybe"}, OwnUplift(Path("x"), "member", "arm", "converted"), "must be binary"),
        ({}, OwnUplift(Path("x"), "member", "arm", "bought"), "--outcome column 'bought' is not in the table"),
        ({"member": "M1"}, OwnUplift(Path("x"), "member", "arm", "converted"), "one row per participant"),
    ],
)
def test_uplift_table_errors_name_the_column(change: dict, own: OwnUplift, message: str) -> None:
    frame = _experiment().assign(**change)
    with pytest.raises(TrainingInputError, match=message):
        own_uplift_table(own, seed=0, frame=frame)


def test_an_arm_too_small_is_refused() -> None:
    frame = _experiment().assign(arm=lambda f: np.where(np.arange(len(f)) < 5, "offer", "control"))
    with pytest.raises(TrainingInputError, match="the treated arm of 'arm' has 5 row"):
        own_uplift_table(OwnUplift(Path("t.csv"), "member", "arm", "converted"), seed=0, frame=frame)


def test_repeated_pairs_are_refused() -> None:
    frame = pd.DataFrame({"c": ["1", "1"], "p": ["x", "x"], "b": [0, 1]})
    with pytest.raises(TrainingInputError, match=r"repeat a \(c, p\) pair"):
        own_propensity_table(OwnPropensity(Path("p.csv"), "c", "p", "b"), seed=0, frame=frame)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTINTEL_", "PREFECT_"))}
    env |= {"CUSTINTEL_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    cli = Path(sys.executable).with_name("custintel")
    return subprocess.run([str(cli), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_uplift_and_propensity_from_users_tables_through_the_command_line(tmp_path: Path) -> None:
    experiment = tmp_path / "offer_test.csv"
    _experiment().to_csv(experiment, index=False)
    bad = _cli(tmp_path, "train", "uplift", "--table", str(experiment), "--id", "member", "--treatment", "region",
               "--outcome", "converted")  # fmt: skip
    out = bad.stdout + bad.stderr
    assert bad.returncode == 1 and "--treatment column 'region' must hold two arms" in out and "Traceback" not in out
    assert not (tmp_path / "home" / "mlflow.db").exists()  # refused before anything started
    done = _cli(tmp_path, "train", "uplift", "--table", str(experiment), "--id", "member", "--treatment", "arm",
                "--outcome", "converted")  # under Prefect  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in out, out
    assert "inferred schema (1,600 rows)" in out and "registered custintel-uplift version 1" in out
    assert "response model" in out  # the baseline's verdict, in the summary
    pairs = tmp_path / "pairs.csv"
    rng = np.random.default_rng(2)
    rows = pd.DataFrame([(f"C{i:03d}", p) for i in range(300) for p in ("P1", "P2")], columns=["customer", "sku"])
    rows["visits"] = rng.poisson(3, len(rows))
    rows["bought"] = np.where(rng.random(len(rows)) < 0.1 + 0.1 * rows["visits"].clip(0, 6), "yes", "no")
    rows.to_csv(pairs, index=False)
    done = _cli(tmp_path, "train", "propensity", "--table", str(pairs), "--id", "customer", "--product", "sku",
                "--label", "bought", "--engine", "local", "--trials", "1")  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in out, out
    assert "registered custintel-propensity version 1" in out and "untuned LightGBM" in out
