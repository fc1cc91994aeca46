"""Labels and features of the generated world against its hidden truth."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from custintel.settings import Settings
from flows.cli import app
from flows.features import PLAIN_STEPS, run_feature_build
from tests.conftest import Ingested

AS_OF = [dt.date(2025, 3, 1), dt.date(2025, 9, 1)]


@pytest.fixture(scope="module")
def built(ingested: Ingested, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    home = tmp_path_factory.mktemp("truth") / "home"
    shutil.copytree(ingested.settings.home_dir, home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTINTEL_IDENTITY_U_MAX_PAIRS", "1e6")
        result = CliRunner().invoke(app, ["--home", str(home), "resolve", "--engine", "local"])
    assert result.exit_code == 0, result.output
    settings = Settings(home=home)
    return settings, run_feature_build(settings, AS_OF, False, PLAIN_STEPS, lambda _: None)


def _with_truth(settings: Settings, truth: Path, set_name: str) -> duckdb.DuckDBPyRelation:
    """Each customer's rows joined to the true person behind its billing account(s)."""
    con = duckdb.connect()
    return con.sql(
        f"""
        WITH x AS (SELECT c.customer_key, t.person_id
                   FROM '{settings.identity_dir / "crosswalk.parquet"}' c
                   JOIN '{truth / "source_records.parquet"}' t ON c.record_key = t.source_table || ':' || t.record_id
                   WHERE t.source_table = 'billing_accounts'),
             p AS (SELECT customer_key, any_value(person_id) AS person_id FROM x GROUP BY 1
                   HAVING count(DISTINCT person_id) = 1)
        SELECT l.*, tp.churn_date, p.person_id
        FROM read_parquet('{settings.features_dir}/offline/{set_name}/v1/*/data.parquet') l
        JOIN p USING (customer_key) JOIN '{truth / "persons.parquet"}' tp USING (person_id)"""
    )


def test_churn_labels_match_the_true_churn_dates(built: tuple[Settings, dict], ingested: Ingested) -> None:
    settings, report = built
    assert set(report["as_of"]) == {str(d) for d in AS_OF}
    rel = _with_truth(settings, ingested.world.truth, "labels")
    rows = rel.query(
        "t",
        """SELECT count(*) AS n,
                  count(*) FILTER (WHERE churn_90d = coalesce(churn_date >= as_of
                                   AND churn_date < as_of + INTERVAL 90 DAY, false)) AS agree_90,
                  count(*) FILTER (WHERE churn_observed AND time_to_churn_days
                                   = date_diff('day', as_of, churn_date)) AS exact_time,
                  count(*) FILTER (WHERE churn_observed) AS observed,
                  count(*) FILTER (WHERE churn_90d) AS churners
           FROM t""",
    ).fetchall()[0]
    n, agree_90, exact_time, observed, churners = rows
    assert n > 2500 and churners > 50
    assert agree_90 / n > 0.995  # the rest are customers whose records the resolver split or merged
    assert exact_time / observed > 0.995


def test_nobody_who_truly_churned_before_the_cutoff_is_in_the_spine(
    built: tuple[Settings, dict], ingested: Ingested
) -> None:
    settings, _ = built
    rel = _with_truth(settings, ingested.world.truth, "relationship")
    gone = rel.query("t", "SELECT count(*) FROM t WHERE churn_date < as_of").fetchall()[0][0]
    assert gone == 0


def test_the_offer_test_groups_match_the_true_assignment(built: tuple[Settings, dict], ingested: Ingested) -> None:
    settings, _ = built
    truth = ingested.world.truth
    rel = _with_truth(settings, truth, "labels")
    n, agree = rel.query(
        "t",
        f"""SELECT count(*), count(*) FILTER (WHERE (t.offer_group = 'treatment') = tr.treated)
            FROM t JOIN '{truth / "treatment_effect.parquet"}' tr USING (person_id)
            WHERE t.offer_group IS NOT NULL""",
    ).fetchall()[0]
    assert n > 100 and agree == n


def test_status_lists_every_stored_set_and_its_partitions(built: tuple[Settings, dict]) -> None:
    settings, _ = built
    result = CliRunner().invoke(app, ["--home", str(settings.home_dir), "features", "status"])
    assert result.exit_code == 0, result.output
    for key in ("relationship@1", "value@1", "service@1", "digital@1", "attributes@1", "interactions@1", "labels@1"):
        assert key in result.output
    assert "2025-03-01" in result.output and "online store: empty" in result.output
