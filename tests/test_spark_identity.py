"""Identity resolution with Splink on Spark: DuckDB's clusters, DuckDB's stores and formats, clear errors.

One Spark session in this module (local[2]): `custintel resolve --data-engine spark` on a copy of the
shared ingested world, beside `--data-engine duckdb` on another copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.identity.evaluate import evaluate_resolution, pairwise_scores
from flows.cli import app

runner = CliRunner()
FAST = {"CUSTINTEL_IDENTITY_U_MAX_PAIRS": "1e6", "CUSTINTEL_SPARK_MASTER": "local[2]"}
OUTPUTS = ("records", "match_records", "links", "crosswalk", "golden_records", "conflicts", "key_events")


def _invoke(home: Path, *args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["--home", str(home), *args], env={**FAST, **(env or {})})


@pytest.fixture(scope="module")
def homes(ingested, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same ingested home resolved twice: Splink on DuckDB, and on Spark."""
    from features.spark_engine import stop_spark

    root = tmp_path_factory.mktemp("spark-identity")
    out = {}
    try:
        for engine in ("duckdb", "spark"):
            home = root / engine
            shutil.copytree(ingested.settings.home_dir, home)
            result = _invoke(home, "resolve", "--engine", "local", "--data-engine", engine)
            assert result.exit_code == 0, result.output
            out[engine] = home
    finally:
        stop_spark()
    return out


def _truth(ingested) -> pd.DataFrame:
    truth = ingested.world.truth_frame("source_records")
    truth["record_key"] = truth["source_table"].astype(str) + ":" + truth["record_id"].astype(str)
    return truth


def test_spark_finds_duckdbs_clusters_and_both_score_alike_against_the_truth(homes, ingested) -> None:
    crosswalks = {e: pd.read_parquet(h / "identity" / "crosswalk.parquet") for e, h in homes.items()}
    both = crosswalks["duckdb"].merge(crosswalks["spark"], on="record_key", suffixes=("_duckdb", "_spark"))
    assert len(both) == len(crosswalks["duckdb"]) == len(crosswalks["spark"])
    parity = pairwise_scores(both["customer_key_spark"], both["customer_key_duckdb"])
    assert parity.f1 >= 0.999, parity
    scores = {}
    for engine, home in homes.items():
        links = pd.read_parquet(home / "identity" / "links.parquet")
        scores[engine] = evaluate_resolution(crosswalks[engine], links, _truth(ingested))["deterministic+probabilistic"]
        assert (links["rule"] == "probabilistic").any(), engine  # the probabilistic pass linked something
    print(f"\nparity {parity}\nduckdb {scores['duckdb']}\nspark {scores['spark']}")
    assert abs(scores["spark"]["f1"] - scores["duckdb"]["f1"]) <= 0.001
    assert scores["spark"]["f1"] > 0.97


def test_spark_writes_the_same_stores_in_the_same_format(homes) -> None:
    for name in OUTPUTS:
        frames = {e: pd.read_parquet(h / "identity" / f"{name}.parquet") for e, h in homes.items()}
        assert dict(frames["spark"].dtypes) == dict(frames["duckdb"].dtypes), name
    models = {e: json.loads((h / "identity" / "model.json").read_text()) for e, h in homes.items()}
    # the stored model is DuckDB's whichever engine trained it: same comparisons, levels and SQL
    assert models["spark"]["sql_dialect"] == "duckdb"
    assert set(models["spark"]) == set(models["duckdb"])

    def shape(model: dict) -> list:
        return [
            (c["output_column_name"], [lv["sql_condition"] for lv in c["comparison_levels"]])
            for c in model["comparisons"]
        ]

    assert shape(models["spark"]) == shape(models["duckdb"])
    assert (
        models["spark"]["blocking_rules_to_generate_predictions"]
        == models["duckdb"]["blocking_rules_to_generate_predictions"]
    )
    run = json.loads((homes["spark"] / "identity" / "run.json").read_text())
    assert run["options"]["engine"] == "spark" and run["options"]["probabilistic"] is True
    assert run["stats"]["engine"] == "spark"


def test_explain_reads_the_model_spark_trained(homes) -> None:
    links = pd.read_parquet(homes["spark"] / "identity" / "links.parquet")
    pair = links[links["rule"] == "probabilistic"].iloc[0]
    result = _invoke(homes["spark"], "resolve", "explain", pair["record_key_l"], pair["record_key_r"])
    assert result.exit_code == 0, result.output
    assert "probabilistic" in result.output


def test_splinks_files_do_not_stay_under_the_checkpoint_folder(homes) -> None:
    checkpoints = homes["spark"] / "spark" / "checkpoints"
    left = [p for p in checkpoints.rglob("__splink__*")] if checkpoints.is_dir() else []
    assert left == []  # they hold names, birth dates and emails


def test_an_invalid_engine_setting_names_its_variable(tmp_path: Path) -> None:
    result = _invoke(tmp_path / "home", "resolve", "--engine", "local", env={"CUSTINTEL_ENGINE": "sparks"})
    assert result.exit_code == 1
    assert "CUSTINTEL_ENGINE" in result.output and "'duckdb' or 'spark'" in result.output
    assert "Traceback" not in result.output


# A machine without pyspark, or without a Java that Spark runs on: hidden from a fresh process.
_WITHOUT = {
    "pyspark": "import sys; sys.modules['pyspark'] = None",
    "java": "import glob, shutil; glob.glob = lambda *a, **k: []; shutil.which = lambda *a, **k: None",
}


@pytest.mark.parametrize(("missing", "said"), [("pyspark", "pip install 'custintel[spark]'"), ("java", "Java 17")])
def test_without_spark_the_command_says_what_to_install(ingested, tmp_path: Path, missing: str, said: str) -> None:
    home = tmp_path / "home"
    shutil.copytree(ingested.settings.home_dir, home)
    code = f"{_WITHOUT[missing]}\nfrom flows.cli import app\napp()"
    args = ["--home", str(home), "resolve", "--engine", "local", "--data-engine", "spark"]
    env = {**os.environ, **FAST, "JAVA_HOME": str(tmp_path / "no-java")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert said in output and "error:" in output
    assert "Traceback" not in output
