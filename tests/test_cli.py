"""The command line, driven through Typer's CliRunner (no Prefect: --engine local)."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "world"
    result = runner.invoke(
        app, ["generate", "--customers", "1200", "--seed", "3", "--out", str(out), "--chunk-size", "1000"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_help_lists_commands_and_documents_options() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("generate", "ingest", "quarantine", "demo"):
        assert command in result.output
    result = runner.invoke(app, ["generate", "--help"])
    assert "True persons in the world" in result.output
    assert "--drift-date" in result.output


def test_generate_writes_every_source_and_the_truth(cli_world: Path) -> None:
    for rel in (
        "crm/accounts.csv",
        "billing/transactions.csv",
        "digital/events.parquet",
        "northwind/CUSTOMERS.csv",
        "_truth/persons.parquet",
        "manifest.json",
    ):
        assert (cli_world / rel).is_file(), rel
    assert len(pd.read_parquet(cli_world / "_truth" / "persons.parquet")) == 1200


def test_generate_rejects_bad_knobs_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "generate",
            "--customers",
            "100",
            "--out",
            str(tmp_path / "w"),
            "--drift-date",
            "2031-01-01",
            "--drift-strength",
            "1",
        ],
    )
    assert result.exit_code == 1
    assert "invalid generator settings" in result.output
    assert "drift_date" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["generate", "--customers", "100", "--drift-date", "next week"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output


def test_ingest_local_reconciles_and_lands_tables(cli_world: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = runner.invoke(app, ["--home", str(home), "ingest", "--source", str(cli_world), "--engine", "local"])
    assert result.exit_code == 0, result.output
    assert "all counts reconcile" in result.output
    assert (home / "lake" / "crm_accounts").is_dir()
    assert (home / "reports" / "ingest" / "latest.json").is_file()

    result = runner.invoke(app, ["--home", str(home), "quarantine", "billing_transactions", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "duplicate_key" in result.output

    result = runner.invoke(app, ["--home", str(home), "quarantine", "no_such_table"])
    assert result.exit_code == 0
    assert "No quarantined rows" in result.output


def test_ingest_of_a_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--home", str(tmp_path / "h"), "ingest", "--source", str(tmp_path / "nope"), "--engine", "local"]
    )
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def test_ingest_with_a_broken_contract_folder_fails_cleanly(cli_world: Path, tmp_path: Path) -> None:
    bad = tmp_path / "contracts"
    bad.mkdir()
    (bad / "x.yaml").write_text("table: Bad Name\nsystem: s\nfiles: a.csv\ncolumns: []\n")
    result = runner.invoke(
        app,
        [
            "--home",
            str(tmp_path / "h"),
            "ingest",
            "--source",
            str(cli_world),
            "--contracts",
            str(bad),
            "--engine",
            "local",
        ],
    )
    assert result.exit_code == 1
    assert "x.yaml" in result.output
    assert "Traceback" not in result.output
