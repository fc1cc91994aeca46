"""Reading a user's own table right, before anything runs: types from values, --schema, early one-line errors.

The inference cases run on small real-shaped frames (a telecom-like churn table with a blank
charges cell, US and European dates, booleans, ids with leading zeros). The early errors run
through the real command line as a subprocess under both engines: one line naming the file
and the column, a non-zero exit, no traceback, in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.own_tables import OwnInteractions, OwnTable, TrainingInputError, check_own_table, own_churn_table
from models.table_types import TableTypeError, detect_separator, read_text_table, type_columns

CLI = Path(sys.executable).parent / "custintel"


def _typed(frame: pd.DataFrame, tmp_path: Path, roles: dict | None = None, **kwargs: object) -> dict[str, dict]:
    """Write the frame as CSV, read it back as the command line does, and type it: column -> report row."""
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    typed = type_columns(read_text_table(path), roles or {}, str(path), **kwargs)  # type: ignore[arg-type]
    return {r["column"]: r | {"values": typed.frame[r["column"]]} for r in typed.describe()}


def _churn_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    charges = [f"{v:.2f}" for v in rng.uniform(20, 110, n)]
    charges[1], charges[4] = " ", ""  # the telecom table's blank TotalCharges cells
    return pd.DataFrame({
        "customerID": [f"{i:04d}" for i in range(n)],
        "TotalCharges": charges,
        "Contract": rng.choice(["Month-to-month", "One year", "Two year"], n),
        "Churn": np.tile(["Yes", "No"], n // 2),
    })  # fmt: skip


# ---------------------------------------------------------------- inference


def test_numbers_with_blanks_and_stray_text_are_numeric_and_the_unparsed_share_is_reported(tmp_path: Path) -> None:
    frame = pd.DataFrame({"charges": [f"{v}.5" for v in range(97)] + [" ", "", "n.a."], "plan": ["a", "b"] * 50})
    col = _typed(frame, tmp_path)["charges"]
    assert col["type"] == "numeric" and col["role"] == "feature"
    assert col["note"] == "unparsed 3 of 100 (3.0%) set missing: 2 blank; 1 text, e.g. 'n.a.'"
    assert col["values"].dtype == "float64" and col["values"].isna().sum() == 3 and col["values"][0] == 0.5


def test_amounts_with_currency_signs_thousands_separators_and_percents_are_numbers(tmp_path: Path) -> None:
    frame = pd.DataFrame({"charges": ["$1,234.50", "$29.85", "-$5", ""] * 10, "rate": ["12%", "7.5%", "0%", "1%"] * 10})
    cols = _typed(frame, tmp_path)
    assert cols["charges"]["type"] == "numeric" and cols["charges"]["values"].tolist()[:3] == [1234.5, 29.85, -5.0]
    assert cols["charges"]["note"].startswith("numbers written with currency signs")
    assert cols["rate"]["values"].tolist()[:2] == [12.0, 7.5]


def test_mostly_text_with_a_few_numbers_stays_categorical(tmp_path: Path) -> None:
    frame = pd.DataFrame({"plan": ["gold", "silver", "bronze"] * 30 + ["1", "2"] * 5})
    assert _typed(frame, tmp_path)["plan"]["type"] == "categorical"


def test_us_dates_are_dates_never_categorical_features(tmp_path: Path) -> None:
    frame = pd.DataFrame({"signup": ["1/31/2024", "12/5/2023", "2/14/2024 3:05 PM"] * 10})
    col = _typed(frame, tmp_path)["signup"]
    assert (col["type"], col["role"]) == ("date", "dropped") and "date m/d/Y" in col["note"]
    assert col["values"][2] == pd.Timestamp("2024-02-14 15:05")


def test_european_dates_are_read_day_first(tmp_path: Path) -> None:
    frame = pd.DataFrame({"when": ["31.01.2024", "05.12.23", "14.02.2024 08:30"] * 10, "x": range(30)})
    col = _typed(frame, tmp_path, {"when": "split"})["when"]
    assert (col["type"], col["role"], col["note"]) == ("date", "split", "date d.m.Y")
    assert list(col["values"][:3]) == [pd.Timestamp("2024-01-31"), pd.Timestamp("2023-12-05"),
                                      pd.Timestamp("2024-02-14 08:30")]  # fmt: skip


def test_ambiguous_day_month_dates_are_refused_as_the_split_and_dropped_as_features(tmp_path: Path) -> None:
    frame = pd.DataFrame({"when": ["01/02/2024", "03/04/2024", "05/06/2024"] * 10, "x": range(30)})
    col = _typed(frame, tmp_path)["when"]
    assert (col["type"], col["role"]) == ("date", "dropped") and "undecidable" in col["note"]
    with pytest.raises(TableTypeError, match=r"t\.csv: --split-by column 'when' does not parse as dates: day/month"):
        _typed(frame, tmp_path, {"when": "split"}, options={"when": "--split-by column"})
    overridden = _typed(frame, tmp_path, {"when": "split"}, overrides={"when": "date:%d/%m/%Y"})["when"]
    assert overridden["values"][0] == pd.Timestamp("2024-02-01")


def test_iso_dates_with_and_without_times_and_offsets(tmp_path: Path) -> None:
    frame = pd.DataFrame({"at": ["2024-01-31", "2024-02-01T10:00:00", "2024-02-02 11:30:00+01:00"] * 10})
    col = _typed(frame, tmp_path)["at"]
    assert col["type"] == "date" and col["note"].startswith("date ISO")
    assert col["values"][2] == pd.Timestamp("2024-02-02 10:30")  # in UTC


def test_epoch_seconds_and_ms_only_for_time_columns(tmp_path: Path) -> None:
    seconds = np.arange(30) * 86_400 + 1_700_000_000
    frame = pd.DataFrame({"event_time": seconds, "created_ms": seconds * 1000, "amount": seconds})
    cols = _typed(frame, tmp_path, {"created_ms": "split"})
    assert (cols["event_time"]["type"], cols["event_time"]["role"]) == ("date", "dropped")
    assert cols["event_time"]["note"].startswith("epoch seconds; a date is never a feature")
    assert cols["created_ms"]["note"] == "epoch ms"
    assert cols["created_ms"]["values"][0] == pd.Timestamp("2023-11-14 22:13:20")
    assert cols["amount"]["type"] == "numeric"  # a number not named like a time stays a number


@pytest.mark.parametrize(
    ("values", "numeric"),
    [(["Yes", "No"], False), (["true", "false"], True), (["0", "1"], True), (["y", "n"], False), (["T", "F"], False)],
)
def test_booleans(tmp_path: Path, values: list[str], numeric: bool) -> None:
    frame = pd.DataFrame({"flag": values * 15, "other": range(30)})
    path = tmp_path / "b.csv"
    frame.to_csv(path, index=False)
    typed = type_columns(read_text_table(path), {}, str(path))
    assert typed.describe()[0]["type"] == "boolean"
    assert ("flag" in typed.numeric) is numeric and ("flag" in typed.categorical) is not numeric


def test_ids_keep_leading_zeros_and_stay_strings_from_parquet_too(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["007", "010", "100"] * 10, "x": range(30)})
    assert list(_typed(frame, tmp_path, {"id": "id"})["id"]["values"][:3]) == ["007", "010", "100"]
    parquet = pd.DataFrame({"id": [7, 10, 100], "x": [1.0, 2.0, 3.0]})
    typed = type_columns(parquet, {"id": "id"}, "p.parquet")
    assert typed.frame["id"].tolist() == ["7", "10", "100"]


def test_parquet_keeps_its_types_and_the_same_rules_apply(tmp_path: Path) -> None:
    n = 60
    path = tmp_path / "churn.parquet"
    pd.DataFrame({
        "customer": np.arange(1000, 1000 + n),  # integers: the id becomes the strings '1000', ...
        "spend": np.linspace(0, 1, n),
        "since": pd.date_range("2020-01-01", periods=n),
        "region": ["north"] * n,
        "row": np.arange(n),
        "churned": [True, False] * (n // 2),
    }).to_parquet(path)  # fmt: skip
    typed = check_own_table(OwnTable(path, "customer", "churned"))
    rows = {r["column"]: (r["type"], r["role"]) for r in typed.describe()}
    assert rows == {
        "customer": ("id", "id"),
        "spend": ("numeric", "feature"),
        "since": ("date", "dropped"),
        "region": ("categorical", "dropped"),
        "row": ("id", "dropped"),
        "churned": ("boolean", "label"),
    }
    assert typed.frame["customer"].iloc[0] == "1000" and typed.numeric == ("spend",)


def test_free_text_constants_and_unnamed_identifiers_are_dropped_with_the_reason(tmp_path: Path) -> None:
    n = 300
    frame = pd.DataFrame({
        "comment": [f"called about bill {i}" for i in range(n)],
        "plan": ["basic"] * n,
        "row": range(n),
        "email": [f"user{i}@example.com" for i in range(n)],
        "spend": np.linspace(1, 2, n),
    })  # fmt: skip
    cols = _typed(frame, tmp_path)
    assert (cols["comment"]["type"], cols["comment"]["role"]) == ("text", "dropped")
    assert "300 distinct values; free text" == cols["comment"]["note"]
    assert (cols["plan"]["role"], cols["plan"]["note"]) == ("dropped", "constant ('basic')")
    assert (cols["row"]["type"], cols["row"]["role"]) == ("id", "dropped")  # 0..299: row numbers
    assert (cols["email"]["type"], cols["email"]["role"]) == ("id", "dropped")
    assert (cols["spend"]["type"], cols["spend"]["role"]) == ("numeric", "feature")  # distinct floats are measurements


def test_whitespace_aligned_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "aligned.txt"
    path.write_text("id    tenure  plan     churned\n001   12      gold     1\n002   3       basic    0\n")
    assert detect_separator(path.read_text().splitlines()) == r"\s+"
    frame = read_text_table(path)
    assert frame.to_dict("list") == {"id": ["001", "002"], "tenure": ["12", "3"], "plan": ["gold", "basic"],
                                     "churned": ["1", "0"]}  # fmt: skip


def test_month_names_compact_dates_and_quarters(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "billed": ["Jan-1-1995", "Feb 5, 2024", "5 March 2024 10:00"] * 10,
        "obs_date": [19580329, 19580405, 19580412] * 10,
        "period": ["1974Q1", "1974Q2", "1974Q3"] * 10,
        "month": ["January", "February", "March"] * 10,  # a month of the year is a category, not a date
    })  # fmt: skip
    cols = _typed(frame, tmp_path)
    assert cols["billed"]["note"].startswith("date with month names")
    assert cols["billed"]["values"][2] == pd.Timestamp("2024-03-05 10:00")
    assert cols["obs_date"]["note"].startswith("date YYYYMMDD") and cols["obs_date"]["values"][0] == pd.Timestamp(
        "1958-03-29"
    )
    assert cols["period"]["type"] == "date" and cols["period"]["values"][1] == pd.Timestamp("1974-04-01")
    assert (cols["month"]["type"], cols["month"]["role"]) == ("categorical", "feature")


def test_comment_lines_and_row_name_headers_are_read(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text('# exported by R\n"a","b"\n"1",2,x\n"2",3,y\n')  # write.csv: row names, one header field fewer
    assert read_text_table(path).to_dict("list") == {"a": ["2", "3"], "b": ["x", "y"]}


@pytest.mark.parametrize(("text", "sep"), [("a,b\n1,2\n", ","), ("a;b\n1,5;2\n", ";"), ("a\tb c\n1\t2 3\n", "\t")])
def test_one_character_separators_are_sniffed(text: str, sep: str) -> None:
    assert detect_separator(text.splitlines()) == sep


# ---------------------------------------------------------------- --schema


def test_schema_file_overrides_inference(tmp_path: Path) -> None:
    path = tmp_path / "churn.csv"
    _churn_frame().assign(zip=["02134", "10001"] * 30).to_csv(path, index=False)
    schema = tmp_path / "schema.yaml"
    schema.write_text("zip: categorical\nContract: drop\n")
    typed = check_own_table(OwnTable(path, "customerID", "Churn", schema=schema))
    rows = {r["column"]: r for r in typed.describe()}
    assert (rows["zip"]["type"], rows["zip"]["role"]) == ("categorical", "feature") and "zip" in typed.categorical
    assert rows["Contract"]["role"] == "dropped" and "--schema" in rows["Contract"]["note"]
    assert typed.frame["zip"].tolist()[:2] == ["02134", "10001"]


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("zip: postcode\n", "schema.yaml", "column 'zip' has unknown type 'postcode'; use one of numeric"),
        ('{"nope": "numeric"}', "schema.json", "column 'nope' is not in"),
        ("zip: [", "schema.yaml", "cannot be parsed"),
        ("- zip\n", "schema.yaml", "expected a mapping of column -> type"),
    ],
)
def test_schema_file_errors_name_the_file_and_column(tmp_path: Path, content: str, name: str, message: str) -> None:
    path = tmp_path / "churn.csv"
    _churn_frame().assign(zip="x").to_csv(path, index=False)
    schema = tmp_path / name
    schema.write_text(content)
    with pytest.raises(TrainingInputError, match="--schema") as caught:
        check_own_table(OwnTable(path, "customerID", "Churn", schema=schema))
    assert message in str(caught.value) and str(schema) in str(caught.value) and "\n" not in str(caught.value)


def test_a_time_split_with_one_class_in_a_stage_is_refused_before_training(tmp_path: Path) -> None:
    frame = _churn_frame().assign(
        month=[f"{m}/15/2024" for m in np.repeat(np.arange(1, 11), 6)],
        Churn=["Yes", "No"] * 24 + ["No"] * 12,  # the latest rows (the test stage) never churn
    )
    path = _write(tmp_path / "churn.csv", frame)
    with pytest.raises(TrainingInputError, match=r"with --split-by 'month', the test rows \(2024-09-15 to 2024-10-15\) "
                       "hold one class only"):  # fmt: skip
        check_own_table(OwnTable(path, "customerID", "Churn", split_by="month"))
    six_customers = [f"{i % 6:04d}" for i in range(60)]  # the same six customers, monthly snapshots
    repeated = _write(tmp_path / "snapshots.csv", frame.assign(customerID=six_customers, Churn=["Yes", "No"] * 30))
    typed = check_own_table(OwnTable(repeated, "customerID", "Churn", split_by="month"))
    assert typed.frame["month"].dtype.kind == "M"


def test_a_file_without_a_header_gets_numbered_columns(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert list(read_text_table(path).columns) == ["column_1", "column_2", "column_3", "column_4"]
    assert read_text_table(path)["column_1"].tolist() == ["196", "186"]


def test_the_labelled_table_carries_the_schema_and_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "churn.csv"
    _churn_frame().to_csv(path, index=False)
    table = own_churn_table(OwnTable(path, "customerID", "Churn"), seed=1)
    assert table.schema is not None and table.schema.numeric == ["TotalCharges"]
    assert table.schema.categorical == ["Contract"]
    assert table.frame["customerID"].iloc[0] == "0000" and bool(table.frame["Churn"].iloc[0]) is True
    assert {r["column"]: r["role"] for r in table.schema_report}["customerID"] == "id"


# ---------------------------------------------------------------- early errors through the real command line


def _write(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def _schema(tmp: Path) -> Path:
    path = tmp / "types.yaml"
    path.write_text("Contract: postcode\n")
    return path


def _error_cases(tmp: Path) -> list[tuple[list[str], str]]:
    base = _churn_frame()
    ok = _write(tmp / "ok.csv", base)
    return [
        (["--table", str(_write(tmp / "one.csv", base.head(1))), "--id", "customerID", "--label", "Churn"],
         f"{tmp / 'one.csv'} has 1 row; at least 10 are needed"),
        (["--table", str(_write(tmp / "three.csv", base.assign(Churn=["a", "b", "c"] * 20))), "--id", "customerID",
          "--label", "Churn"], "label column 'Churn' has 3 classes ('a', 'b', 'c')"),
        (["--table", str(_write(tmp / "oneclass.csv", base.assign(Churn="No"))), "--id", "customerID", "--label",
          "Churn"], "label column 'Churn' has one class only ('no'"),
        (["--table", str(_write(tmp / "repeat.csv", base.assign(customerID="0001"))), "--id", "customerID",
          "--label", "Churn"], "ids in 'customerID' repeat"),
        (["--table", str(ok), "--id", "customerID", "--label", "gone"], "--label column 'gone' is not in the table"),
        (["--table", str(ok), "--id", "customerID", "--label", "Churn", "--split-by", "Contract"],
         "--split-by column 'Contract' does not parse as dates"),
        (["--table", str(_write(tmp / "neg.csv", base.assign(tenure=[-1] + [3] * 59))), "--id", "customerID",
          "--label", "Churn", "--duration", "tenure"], "--duration column 'tenure' must not be negative"),
        (["--table", str(ok), "--id", "customerID", "--label", "Churn", "--schema", str(_schema(tmp))],
         f"--schema {tmp / 'types.yaml'}: column 'Contract' has unknown type 'postcode'"),
        (["--interactions", str(_write(tmp / "inter.csv", pd.DataFrame({"u": ["a"] * 5, "i": list("vwxyz")}))),
          "--user", "u", "--item", "i"], "--user column 'u' has 1 distinct value(s); at least 2 are needed"),
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "prefect"])
def test_early_errors_are_one_line_before_any_orchestration(tmp_path: Path, engine: str) -> None:
    prefect_home = Path(tempfile.mkdtemp())
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "CUSTINTEL_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
    for args, message in _error_cases(tmp_path):
        family = "recommendation" if "--interactions" in args else "churn"
        start = time.perf_counter()
        done = subprocess.run([str(CLI), "train", family, "--engine", engine, *args], capture_output=True, text=True,
                              env=env, timeout=120)  # fmt: skip
        elapsed = time.perf_counter() - start
        print(f"{engine} {message[:50]!r}: {elapsed:.2f} s")  # noqa: T201 (the measured time, shown with -s)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out
        assert "Traceback" not in out, out
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and str(tmp_path) in lines[0], out
        # Nothing ran: no MLflow store, no Prefect API database (how long it took is printed, not asserted: a
        # loaded 2-core machine makes any limit flaky; it is under 5 s on a quiet one).
        assert not (tmp_path / "home" / "mlflow.db").exists()
        assert not list(prefect_home.glob("*.db")), sorted(p.name for p in prefect_home.iterdir())


def test_interactions_keep_string_ids_and_read_times(tmp_path: Path) -> None:
    from models.own_tables import check_own_interactions, own_interactions

    n = 60
    frame = pd.DataFrame({"user": [f"0{i % 6}" for i in range(n)], "item": [f"i{i % 7}" for i in range(n)],
                          "ts": 1_700_000_000 + np.arange(n) * 3600, "note": "x"})  # fmt: skip
    path = _write(tmp_path / "inter.csv", frame)
    own = OwnInteractions(path, "user", "item", time="ts")
    rows = {r["column"]: r for r in check_own_interactions(own).describe()}
    assert rows["ts"]["note"] == "epoch seconds" and rows["note"]["role"] == "unused"
    valid, _test = own_interactions(own, seed=0)
    assert set(valid.history["user"]) <= {f"0{i}" for i in range(6)}


def test_integer_looking_ids_join_the_gates_string_keys(tmp_path: Path) -> None:
    """CSV ids like 1, 2, 3 stay the strings '1', '2', '3': the audit's join to golden records' string keys works."""
    from governance.audit import sensitive_attributes
    from governance.policy import SensitiveFeature

    path = _write(tmp_path / "churn.csv", _churn_frame().assign(customerID=range(1, 61)))
    test = own_churn_table(OwnTable(path, "customerID", "Churn"), seed=0).rows("test")
    golden = pd.DataFrame({"customer_key": [str(i) for i in range(1, 61)], "gender": ["f", "m"] * 30})
    groups = sensitive_attributes(test, golden, {"gender": SensitiveFeature(source="golden_records", column="gender")},
                                  "customerID")  # fmt: skip
    assert set(groups["gender"]) == {"f", "m"}


@pytest.mark.slow
def test_the_schema_is_shown_before_training_and_logged_with_the_run(new_settings, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from flows.cli import app
    from models.registry import Registry

    rng = np.random.default_rng(3)
    n = 400
    tenure = rng.integers(0, 72, n)
    months, days = rng.integers(1, 13, n), rng.integers(13, 29, n)  # a day above 12: m/d/Y is decidable
    frame = _churn_frame(n).assign(
        tenure=tenure,
        signup=[f"{m}/{d}/2021" for m, d in zip(months, days, strict=True)],
        Churn=np.where(rng.uniform(size=n) < 1 / (1 + np.exp(0.08 * tenure - 2)), "Yes", "No"),
    )
    path = _write(tmp_path / "telco.csv", frame)
    settings = new_settings()
    args = ["--home", str(settings.home_dir), "train", "churn", "--engine", "local", "--trials", "1",
            "--table", str(path), "--id", "customerID", "--label", "Churn"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("inferred schema") < out.index("registered custintel-churn")
    assert "date m/d/Y; a date is never a feature" in out and "2 of 400 (0.5%) blank or NA: missing" in out
    client = Registry(settings).client
    run = client.search_runs([client.get_experiment_by_name("custintel").experiment_id])[0]
    logged = pd.read_csv(client.download_artifacts(run.info.run_id, "tables/schema.csv"), dtype=str)
    assert logged.set_index("column").loc["signup", "role"] == "dropped"
    info = json.loads(Path(client.download_artifacts(run.info.run_id, "info.json")).read_text())
    assert {r["column"]: r["type"] for r in info["schema"]}["TotalCharges"] == "numeric"
    evaluation = pd.read_parquet(client.download_artifacts(run.info.run_id, "evaluation/test.parquet"))
    assert evaluation["customerID"].map(type).eq(str).all()
    # Each column's data class is shown and recorded; the --id column is the run's subject key, kept.
    assert "class" in out and "behavioural" in out
    lineage = json.loads(Path(client.download_artifacts(run.info.run_id, "lineage/lineage.json")).read_text())
    assert lineage["subject_key"] == "customerID" and "customerID" not in lineage["data_classes"]
    assert lineage["data_classes"]["tenure"] == "behavioural"
