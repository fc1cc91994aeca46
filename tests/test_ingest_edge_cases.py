"""Real-world file quirks and invariants of contract checking."""

import datetime as dt
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custintel.settings import Settings
from features.contracts import ContractSet, load_contracts
from features.ingest import ROW, ValidationContext, validate_batch
from features.lake import ingest_drop, read_lake_table, read_quarantine

EXPORTED = dt.date(2024, 6, 1)  # the drops here carry no manifest.json: the export date is given
CONTRACT_YAML = """
table: accounts
system: byo
files: accounts*.csv
key: [account_id]
columns:
  - {name: account_id, class: direct_identifier, nullable: false}
  - {name: opened, class: behavioural, type: date, nullable: false, formats: ["%Y-%m-%d", "%d/%m/%Y"]}
  - {name: balance, class: behavioural, type: float, min: 0}
  - {name: vip, class: inferred, type: bool}
  - {name: note, class: behavioural}
"""


@pytest.fixture()
def byo_contracts(tmp_path: Path) -> ContractSet:
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "accounts.yaml").write_text(CONTRACT_YAML)
    return load_contracts(folder)


def test_bom_crlf_and_multiline_quoted_text_are_read_correctly(tmp_path: Path, byo_contracts: ContractSet) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    text = (
        "\ufeffaccount_id,opened,balance,vip,note\r\n"
        'A1,2024-01-31,10.5,yes,"line one\r\nline two, with a comma"\r\n'
        "A2,31/01/2024,0,N,\r\n"
        "A3,2024-02-30,1,true,bad date\r\n"
    )
    (drop / "accounts.csv").write_bytes(text.encode("utf-8"))
    settings = Settings(home=tmp_path / "home")
    report = ingest_drop(drop, settings, contracts=byo_contracts, export_date=EXPORTED)
    t = report.tables["accounts"]
    assert (t.read, t.accepted, t.quarantined) == (3, 2, 1)
    lake = read_lake_table(settings, "accounts", byo_contracts).sort_values("account_id")
    assert lake["note"].iloc[0] == "line one\r\nline two, with a comma"
    assert list(lake["opened"].astype(str)) == ["2024-01-31", "2024-01-31"]
    assert list(lake["vip"]) == [True, False]


def test_multiple_files_of_one_table_keep_keys_unique_across_files(tmp_path: Path, byo_contracts: ContractSet) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "accounts-1.csv").write_text("account_id,opened,balance,vip,note\nA1,2024-01-01,1,y,\n")
    (drop / "accounts-2.csv").write_text("account_id,opened,balance,vip,note\nA1,2024-01-02,2,n,\nA2,2024-01-02,2,n,\n")
    report = ingest_drop(drop, Settings(home=tmp_path / "home"), contracts=byo_contracts, export_date=EXPORTED)
    t = report.tables["accounts"]
    assert (t.read, t.accepted, t.quarantined) == (3, 2, 1)
    assert t.reasons == {"account_id: duplicate_key": 1}
    assert t.files == ["accounts-1.csv", "accounts-2.csv"]


def test_a_file_in_another_encoding_is_read_with_the_declared_one(tmp_path: Path) -> None:
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "a.yaml").write_text(CONTRACT_YAML.replace("system: byo", "system: byo\nencoding: latin-1"))
    contracts = load_contracts(folder)
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "accounts.csv").write_bytes(
        "account_id,opened,balance,vip,note\nA1,2024-01-01,1,y,Müller\n".encode("latin-1")
    )
    settings = Settings(home=tmp_path / "home")
    ingest_drop(drop, settings, contracts=contracts, export_date=EXPORTED)
    assert read_lake_table(settings, "accounts", contracts)["note"].tolist() == ["Müller"]


def test_a_header_only_file_is_landed_with_a_warning(tmp_path: Path, byo_contracts: ContractSet) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "accounts.csv").write_text("account_id,opened,balance,vip,note\n")
    settings = Settings(home=tmp_path / "home")
    report = ingest_drop(drop, settings, contracts=byo_contracts, export_date=EXPORTED)
    t = report.tables["accounts"]
    assert (t.read, t.accepted, t.quarantined) == (0, 0, 0)
    assert t.warnings == ["accounts.csv has no rows (a header only)"]
    assert report.warnings == ["accounts: accounts.csv has no rows (a header only)"]
    # in the reasons, so the console's table of top reasons shows it; and in the quarantine, as a warning
    assert t.reasons == {"<file>: empty_file": 1}
    (issue,) = read_quarantine(settings, "accounts").to_dict("records")
    assert (issue["check"], issue["action"], issue["_source_file"]) == ("empty_file", "warning", "accounts.csv")
    saved = json.loads((settings.reports_dir / "ingest" / "latest.json").read_text())
    assert saved["tables"]["accounts"]["warnings"] == t.warnings
    assert read_lake_table(settings, "accounts", byo_contracts).empty


def test_a_10_mib_value_is_quarantined_not_landed(tmp_path: Path, byo_contracts: ContractSet) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    huge = "N" * (10 << 20)
    (drop / "accounts.csv").write_text(
        f"account_id,opened,balance,vip,note\nA1,2024-01-01,1,y,{huge}\nA2,2024-01-01,1,y,ok\n"
    )
    settings = Settings(home=tmp_path / "home")
    t = ingest_drop(drop, settings, contracts=byo_contracts, export_date=EXPORTED).tables["accounts"]
    assert (t.read, t.accepted, t.quarantined) == (2, 1, 1)
    assert t.reasons == {"note: too_long": 1}
    assert read_lake_table(settings, "accounts", byo_contracts)["account_id"].tolist() == ["A2"]
    issue = read_quarantine(settings, "accounts").iloc[0]
    assert "longer than the limit 1000" in issue["reason"] and len(issue["value"]) < 200
    assert t.warnings == []


_cell = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", " ", "1", "-1", "2024-01-01", "nan", "inf", "yes", "31/12/2023", "1e9"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_cell, _cell, _cell, _cell, _cell), min_size=1, max_size=25))
def test_validation_never_loses_or_invents_a_row(rows: list[tuple], byo_contracts: ContractSet) -> None:
    contract = byo_contracts.get("accounts")
    names = ["account_id", "opened", "balance", "vip", "note"]
    batch = pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})
    batch = batch.append_column(ROW, pa.array(range(1, len(rows) + 1), pa.int64()))
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        res = validate_batch(con, batch, contract, ValidationContext(as_of=dt.datetime(2026, 1, 1)))
    accepted = set(res.accepted.column(ROW).to_pylist())
    rejected = set(res.rejected.column(ROW).to_pylist())
    assert accepted | rejected == set(range(1, len(rows) + 1))
    assert not accepted & rejected
    # every rejected row has at least one rejecting reason, and accepted rows none
    rejecting = {
        r
        for r, a in zip(
            res.issues.column("row_number").to_pylist(), res.issues.column("action").to_pylist(), strict=True
        )
        if a == "rejected"
    }
    assert rejecting == rejected
    # accepted values respect the contract
    balances = [b for b in res.accepted.column("balance").to_pylist() if b is not None]
    assert all(b >= 0 and b == b and abs(b) != float("inf") for b in balances)
    assert None not in res.accepted.column("account_id").to_pylist()


def test_the_contracts_a_drop_was_landed_under_are_remembered(tmp_path: Path, byo_contracts: ContractSet) -> None:
    """A table of one's own is read by its own name and key later, without the contracts folder given again."""
    from features.lake import IngestError, lake_contract, read_manifest

    settings = Settings(home=tmp_path / "home")
    for day, rows in (("2024-03-01", "A1,2024-01-31,10,yes,first\nA2,2024-02-01,0,no,\n"),
                      ("2024-04-01", "A1,2024-01-31,99,yes,second\n")):  # fmt: skip
        drop = tmp_path / f"drop-{day}"
        drop.mkdir()
        (drop / "accounts.csv").write_text("account_id,opened,balance,vip,note\n" + rows)
        (drop / "manifest.json").write_text(f'{{"export_date": "{day}"}}')
        ingest_drop(drop, settings, contracts=byo_contracts, export_date=EXPORTED)
    assert read_manifest(settings).contracts["accounts"]["key"] == ["account_id"]
    assert lake_contract(settings, "accounts") == byo_contracts.get("accounts")
    lake = read_lake_table(settings, "accounts").sort_values("account_id")  # no contracts given: the remembered key
    assert list(lake["balance"]) == [99.0, 0.0] and list(lake["note"].fillna("")) == ["second", ""]
    with pytest.raises(IngestError, match="no contract"):
        lake_contract(settings, "orders")


def test_a_table_wholly_quarantined_fails_the_command_and_its_reasons_come_commonest_first(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    contracts = tmp_path / "contracts"
    contracts.mkdir()
    (contracts / "accounts.yaml").write_text(CONTRACT_YAML)
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = [f"A{i},2024-13-{i % 28 + 1:02d},1,yes,x" for i in range(30)]  # month 13: every row is rejected
    rows[0] = "A0,2024-13-01,-5,yes,x"  # one row also breaks the balance's minimum: the rarer reason
    (drop / "accounts.csv").write_text("account_id,opened,balance,vip,note\n" + "\n".join(rows) + "\n")
    home = tmp_path / "home"
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(home), "ingest", "--source", str(drop), "--contracts", str(contracts),
                                 "--export-date", "2024-06-01",
                                 "--engine", "local"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "every row was quarantined in accounts (30 rows" in " ".join(result.output.split())
    shown = runner.invoke(app, ["--home", str(home), "quarantine", "accounts", "--limit", "4"])
    assert shown.exit_code == 0, shown.output
    rows_shown = [line for line in shown.output.split("examples", 1)[1].splitlines() if "accounts.csv" in line]
    fields = [line.split("│")[3].strip() for line in rows_shown]
    assert fields == ["opened", "opened", "balance"]  # the commonest reason first, then an example of every other


def test_a_drop_without_an_export_date_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """Files' modification times say when a copy was made, not the data: the export date is given or declared."""
    from typer.testing import CliRunner

    from features.lake import IngestError, export_time
    from flows.cli import app

    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "accounts.csv").write_text("account_id,opened,balance,vip,note\nA1,2024-01-31,1,yes,x\n")
    with pytest.raises(IngestError, match="--export-date"):
        export_time(drop)
    assert export_time(drop, dt.date(2024, 6, 1)) == dt.datetime(2024, 6, 1)
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "ingest", "--source", str(drop)])
    assert result.exit_code == 1 and "when was this data exported?" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "home" / "lake").exists()  # refused before the flow
    (drop / "manifest.json").write_text('{"export_date": "2024-05-31"}')
    assert export_time(drop) == dt.datetime(2024, 5, 31)
