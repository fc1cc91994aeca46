"""A home and a source folder whose paths hold a quote, a space and non-ASCII characters (`/srv/o'brien/...`).

Every data step is run as a user runs it, from the command line (`--engine local`), in order:
generate, ingest, resolve, features (offline and online), and a lookup. Paths reach DuckDB as quoted
literals (`custintel.sql`), never pasted raw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from custintel.sql import text, text_list
from flows.cli import app


def test_sql_literals_double_their_quotes() -> None:
    assert text("/srv/o'brien/x") == "'/srv/o''brien/x'"
    assert text(Path("/a b/ü")) == "'/a b/ü'"
    assert text_list(["a'b", "c"]) == "['a''b', 'c']"


def test_the_data_steps_work_under_a_path_with_a_quote_a_space_and_non_ascii(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import duckdb

    root = tmp_path / "o'brien daten ü"
    world, home = root / "drop's 2025", root / "home ö'ä"
    monkeypatch.setenv("CUSTINTEL_IDENTITY_U_MAX_PAIRS", "1e5")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["--home", str(home), *args])
        assert result.exit_code == 0, result.output
        return result.output

    run("generate", "--customers", "400", "--seed", "5", "--out", str(world))
    run("ingest", "--source", str(world), "--engine", "local")
    run("resolve", "--engine", "local")
    run("features", "--as-of", "2025-06-01", "--engine", "local")
    status = run("features", "status")
    assert "2025-06-01" in status
    crosswalk = home / "identity" / "crosswalk.parquet"
    key = duckdb.sql(f"SELECT min(customer_key) FROM read_parquet({text(crosswalk)})").fetchall()[0]
    assert key is not None and key[0]
    looked_up = json.loads(run("features", "lookup", str(key[0])))
    assert looked_up and all(doc["as_of"] == "2025-06-01" for doc in looked_up.values())  # the online store
    report = json.loads((home / "reports" / "ingest" / "latest.json").read_text())
    assert report["drop_dir"].endswith("drop's 2025")
    assert not any(p.name for p in tmp_path.iterdir() if p.name != root.name)  # nothing written elsewhere
