"""Batch scoring: every customer scored by the churn champion, the same floats on DuckDB and on Spark.

One home for the module: the session's `featured` home with a churn champion (one trial). DuckDB scores in
this process (Typer's runner); Spark scores through the command in a fresh process, which also shows that its
console stays quiet. The scores table holds personal data: `custintel dsar` exports and erases its rows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from custintel.settings import Settings
from flows.cli import app
from models.scores import SCORE_SCHEMA, scores_path

AS_OF = dt.date(2025, 6, 1)


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, ["--home", str(settings.home_dir), *args])


@pytest.fixture(scope="module")
def champion_home(featured: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from flows.train import PLAIN_STEPS, run_training
    from governance import store
    from models.registry import Registry

    home = tmp_path_factory.mktemp("scoring") / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
    settings = Settings(home=home, training_config=featured.training_config)
    run_training(settings, "churn", PLAIN_STEPS, lambda _: None, trials=1)
    store.move_champion(Registry(settings), "custintel-churn", "1", "test")
    return settings


@pytest.fixture(scope="module")
def scored(champion_home: Settings) -> dict[str, Any]:
    """The champion's scores as of AS_OF from both engines (Spark's by the command in a fresh process)."""
    settings = champion_home
    duck = cli(
        settings, "score", "--model", "churn", "--as-of", str(AS_OF), "--data-engine", "duckdb", "--engine", "local"
    )
    assert duck.exit_code == 0, duck.output
    path = scores_path(settings, "custintel-churn", AS_OF)
    duck_table = pq.read_table(path)
    path.unlink()
    env = {**os.environ, "CUSTINTEL_HOME": str(settings.home_dir), "CUSTINTEL_ENGINE": "spark",
           "CUSTINTEL_TRAINING_CONFIG": str(settings.training_config)}  # fmt: skip
    command = [str(Path(sys.executable).parent / "custintel"), "score", "--as-of", str(AS_OF), "--engine", "local"]
    spark = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                           cwd=settings.home_dir.parent, check=False)  # fmt: skip
    assert spark.returncode == 0, spark.stdout + spark.stderr
    return {"duckdb": duck_table, "duckdb_out": duck.output, "spark": pq.read_table(path), "spark_run": spark}


def test_both_engines_score_every_customer_with_the_same_floats(scored: dict[str, Any]):
    duck, spark = scored["duckdb"], scored["spark"]
    assert duck.schema.equals(SCORE_SCHEMA) and spark.schema.equals(SCORE_SCHEMA)
    assert duck.num_rows > 1000
    assert spark.column("customer_key").to_pylist() == duck.column("customer_key").to_pylist()
    assert spark.column("score").to_pylist() == duck.column("score").to_pylist()  # identical, not merely close
    assert set(duck.column("model").to_pylist()) == {"custintel-churn"}
    assert set(duck.column("model_version").to_pylist()) == {"1"}
    assert set(duck.column("as_of").to_pylist()) == {AS_OF}
    scores = duck.column("score").to_numpy()
    assert 0 < scores.min() and scores.max() < 1 and scores.std() > 0.01


def test_the_command_says_what_it_wrote_and_spark_keeps_the_console_quiet(scored: dict[str, Any]):
    assert "with custintel-churn v1 as of 2025-06-01 on duckdb" in scored["duckdb_out"]
    run = scored["spark_run"]
    assert "on spark" in run.stdout and "scores/custintel-churn/as_of=2025-06-01/data.parquet" in run.stdout
    for noise in ("Setting default log level", "WARN", "NativeCodeLoader", "loopback"):
        assert noise not in run.stderr, run.stderr


def test_a_customer_who_withdrew_the_purpose_is_not_scored(champion_home: Settings, scored: dict[str, Any]):
    from flows.score import consent_filter

    consent = consent_filter(champion_home, "churn")
    keys = set(scored["duckdb"].column("customer_key").to_pylist())
    if consent.only:
        assert keys <= consent.keys
    else:
        assert not keys & consent.keys


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nonesuch"], "no registered model 'nonesuch'"),
        (["--model", "churn", "--as-of", "2020-01-01"], "--as-of 2020-01-01: relationship@1"),
    ],
)
def test_bad_requests_are_one_line(champion_home: Settings, args: list[str], message: str):
    result = cli(champion_home, "score", *args, "--data-engine", "duckdb", "--engine", "local")
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output


def test_dsar_exports_erases_and_verifies_the_scores(champion_home: Settings, scored: dict[str, Any]):
    settings = champion_home
    path = scores_path(settings, "custintel-churn", AS_OF)
    key = pq.read_table(path).column("customer_key")[0].as_py()
    exported = cli(settings, "dsar", "export", key)
    assert exported.exit_code == 0, exported.output
    bundle = json.loads(next(settings.governance_dir.glob("dsar/*/export/bundle.json")).read_text())
    assert bundle["counts"].get("models.scores") == 1, bundle["counts"]
    erased = cli(settings, "dsar", "erase", key, "--yes")
    assert erased.exit_code == 0, erased.output
    remaining = pq.read_table(path)
    assert key not in set(remaining.column("customer_key").to_pylist())
    assert remaining.num_rows == scored["spark"].num_rows - 1  # nobody else's score went
    verified = cli(settings, "dsar", "verify", key)
    assert verified.exit_code == 0 and "nothing found" in verified.output, verified.output


def test_consent_on_spark_is_a_broadcast_join_with_the_same_scores(champion_home: Settings, scored: dict[str, Any]):
    """Withdrawn keys (a third of the customers here) leave Spark's rows by a broadcast left-anti join (granted keys,
    when unknown consent excludes, by a left-semi one): the same customers and floats as DuckDB's filter."""
    from features.spark_engine import spark_session, stop_spark
    from flows.score import ConsentFilter, _champion, _partitions, score_on_duckdb
    from models.scores import consented_rows, score_on_spark

    settings = champion_home
    _, _, _, scorer, sets = _champion(settings, "churn")
    files = _partitions(settings, sets, AS_OF)
    keys = frozenset(scored["duckdb"].column("customer_key").to_pylist()[::3])
    try:
        spark = spark_session(settings)
        for only, join in ((False, "LeftAnti"), (True, "LeftSemi")):
            duck = score_on_duckdb(scorer, files, ConsentFilter(keys, only)).sort_values("customer_key")
            ours = score_on_spark(spark, scorer, files, keys, only).sort_values("customer_key")
            assert len(ours) == len(duck) > 100
            assert ours["customer_key"].tolist() == duck["customer_key"].tolist()
            assert ours["score"].tolist() == duck["score"].tolist()
            plan = consented_rows(spark, files, keys, only)._jdf.queryExecution().executedPlan().toString()
            assert "BroadcastHashJoin" in plan and join in plan and "In(" not in plan, plan
    finally:
        stop_spark()
