"""Contract validation of batches, and ingestion of whole drops into the lake."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from custintel.settings import Settings
from features.contracts import ColumnRule, Contract, ContractSet, load_contracts
from features.ingest import (
    ISSUE_SCHEMA,
    ROW,
    ContractViolation,
    ValidationContext,
    check_columns,
    validate_batch,
)
from features.lake import INGEST_LOG, MANIFEST, IngestError, ingest_drop, read_lake_table, read_quarantine
from features.synthetic.sources import DUPLICATED_TABLES, MALFORMATIONS, SOURCE_FILES
from tests.conftest import Ingested, World, tree_digest

AS_OF = dt.datetime(2025, 1, 1)
CTX = ValidationContext(as_of=AS_OF, reference_values={"product_catalogue.product_id": ["P1", "P2"]})
CONTRACTS = load_contracts()


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")  # as features.lake does
    yield c
    c.close()


def make_contract(*rules: ColumnRule, key: tuple[str, ...] = ("id",)) -> Contract:
    return Contract(
        table="t",
        system="test",
        files="t.csv",
        key=list(key),
        columns=[ColumnRule(data_class="direct_identifier", name="id", nullable=False), *rules],
    )


def make_batch(cols: dict[str, list[str | None]]) -> pa.Table:
    n = len(next(iter(cols.values())))
    arrays = {k: pa.array(v, pa.string()) for k, v in cols.items()}
    arrays[ROW] = pa.array(range(1, n + 1), pa.int64())
    return pa.table(arrays)


# --------------------------------------------------------------------------------------------
# 5. validate_batch on hand-made batches

# (id, rule keyword arguments, a valid value, the violating value, expected check, reason fragments)
VIOLATIONS = [
    ("missing", {"nullable": False}, "x", None, "missing", ["required value is missing"]),
    ("missing-blank", {"nullable": False}, "x", "   ", "missing", ["required value is missing"]),
    ("int-text", {"type": "int"}, "42", "4x2", "invalid_type", ["not a valid int", "'4x2'"]),
    ("int-fraction", {"type": "int"}, "42", "1.5", "invalid_type", ["not a valid int", "'1.5'"]),
    ("float-text", {"type": "float"}, "1.25", "12,50", "invalid_type", ["not a valid float", "'12,50'"]),
    ("float-nan", {"type": "float"}, "1.25", "nan", "invalid_type", ["not a valid float", "'nan'"]),
    ("float-NaN", {"type": "float"}, "1.25", "NaN", "invalid_type", ["not a valid float", "'NaN'"]),
    ("float-inf", {"type": "float"}, "1.25", "inf", "invalid_type", ["not a valid float", "'inf'"]),
    ("float-minus-inf", {"type": "float"}, "1.25", "-Infinity", "invalid_type", ["'-Infinity'"]),
    ("int-inf", {"type": "int"}, "3", "inf", "invalid_type", ["not a valid int", "'inf'"]),
    ("bool", {"type": "bool"}, "yes", "maybe", "invalid_type", ["not a valid bool", "'maybe'"]),
    (
        "date",
        {"type": "date"},
        "2024-02-29",
        "2024-02-30",
        "invalid_type",
        ["not a valid date (expected %Y-%m-%d)", "'2024-02-30'"],
    ),
    (
        "date-dayfirst",
        {"type": "date", "formats": ["%d/%m/%Y"]},
        "31/12/2024",
        "12/31/2024",
        "invalid_type",
        ["expected %d/%m/%Y", "'12/31/2024'"],
    ),
    (
        "timestamp-format",
        {"type": "timestamp", "formats": ["%d.%m.%Y %H:%M"]},
        "05.03.2024 10:30",
        "2024-03-05 10:30:00",
        "invalid_type",
        ["not a valid timestamp (expected %d.%m.%Y %H:%M)", "'2024-03-05 10:30:00'"],
    ),
    (
        "timestamp-default",
        {"type": "timestamp"},
        "2024-03-05T10:30:00Z",
        "yesterday",
        "invalid_type",
        ["%Y-%m-%d %H:%M:%S or %Y-%m-%dT%H:%M:%SZ", "'yesterday'"],
    ),
    (
        "unknown-code",
        {"allowed": ["phone", "email"]},
        "email",
        "fax",
        "unknown_code",
        ["unknown code 'fax'", "allowed: phone, email"],
    ),
    (
        "unknown-mapped-code",
        {"map": {"RES": "consumer", "SMB": "small_business"}},
        "RES",
        "consumer",
        "unknown_code",
        ["unknown code 'consumer'", "allowed: RES, SMB"],
    ),
    (
        "unknown-reference",
        {"references": "product_catalogue.product_id"},
        "P1",
        "P-999",
        "unknown_reference",
        ["no such product_catalogue.product_id", "'P-999'"],
    ),
    ("pattern", {"pattern": r"^\d{5}$"}, "02134", "2134a", "pattern", ["does not look like a valid v", "'2134a'"]),
    ("too-long", {"max_length": 5}, "abcde", "abcdef", "too_long", ["text of 6 characters", "longer than the limit 5"]),
    (
        "too-long-before-pattern",
        {"max_length": 3, "pattern": r"^\d+$"},
        "123",
        "12345",
        "too_long",
        ["text of 5 characters is longer than the limit 3"],
    ),
    ("int-below-min", {"type": "int", "min": 1}, "1", "0", "below_minimum", ["value 0 is below the minimum 1"]),
    (
        "int-above-max",
        {"type": "int", "min": 1, "max": 5},
        "5",
        "6",
        "above_maximum",
        ["value 6 is above the maximum 5"],
    ),
    (
        "float-below-min",
        {"type": "float", "min": 0},
        "0",
        "-0.01",
        "below_minimum",
        ["value -0.01 is below the minimum 0"],
    ),
    (
        "float-above-max",
        {"type": "float", "max": 2.5},
        "2.5",
        "2.51",
        "above_maximum",
        ["value 2.51 is above the maximum 2.5"],
    ),
    (
        "date-below-min",
        {"type": "date", "min": "1900-01-01"},
        "1900-01-01",
        "1899-12-31",
        "below_minimum",
        ["value 1899-12-31 is below the minimum 1900-01-01"],
    ),
    (
        "date-in-future",
        {"type": "date", "not_in_future": True},
        "2025-01-02",
        "2025-01-03",
        "in_future",
        ["2025-01-03 is later than the drop's export time 2025-01-01 00:00:00"],
    ),
    (
        "timestamp-in-future",
        {"type": "timestamp", "not_in_future": True},
        "2025-01-01 23:59:59",
        "2025-03-01T00:00:00Z",
        "in_future",
        ["2025-03-01T00:00:00Z is later than the drop's export time"],
    ),
]


@pytest.mark.parametrize(
    ("rule_kw", "good", "bad", "check", "reason_parts"),
    [v[1:] for v in VIOLATIONS],
    ids=[v[0] for v in VIOLATIONS],
)
def test_violation_rejects_row_with_reason(
    con: duckdb.DuckDBPyConnection,
    rule_kw: dict[str, object],
    good: str,
    bad: str | None,
    check: str,
    reason_parts: list[str],
) -> None:
    contract = make_contract(ColumnRule(data_class="behavioural", name="v", **rule_kw))  # type: ignore[arg-type]
    # r3 is empty, which passes every check of an optional column.
    batch = make_batch({"id": ["r1", "r2", "r3"], "v": [good, bad, good if check == "missing" else None]})
    res = validate_batch(con, batch, contract, CTX)

    assert res.accepted.column("id").to_pylist() == ["r1", "r3"]
    assert res.rejected.column("id").to_pylist() == ["r2"]
    assert res.rejected.column("v").to_pylist() == [bad], "rejected rows are kept exactly as read"
    assert res.rejected.column(ROW).to_pylist() == [2]
    assert res.issues.schema == ISSUE_SCHEMA
    issue = res.issues.to_pylist()[0]
    assert issue["row_number"] == 2
    assert issue["field"] == "v"
    assert issue["check"] == check
    assert issue["action"] == "rejected"
    shown = bad.strip() if bad is not None and bad.strip() else None
    if check == "too_long":
        assert shown is not None
        shown += f"... ({len(shown)} characters)"
    assert issue["value"] == shown
    for part in reason_parts:
        assert part in issue["reason"], (part, issue["reason"])
    assert res.issues.num_rows == 1


def test_text_length_is_bounded_by_the_contract_default(con: duckdb.DuckDBPyConnection) -> None:
    """Every text column has a length limit: the contract's max_text_length unless the column sets max_length."""
    contract = make_contract(
        ColumnRule(data_class="direct_identifier", name="name"),
        ColumnRule(data_class="behavioural", name="note", max_length=20_000_000),
    )
    assert contract.max_text_length == 1000 and contract.max_length(contract.column("name")) == 1000
    huge = "x" * (10 << 20)  # a 10 MiB name
    batch = make_batch({"id": ["ok", "long", "note"], "name": ["Ann", huge, "Bo"], "note": [None, None, huge]})
    res = validate_batch(con, batch, contract, CTX)
    assert res.accepted.column("id").to_pylist() == ["ok", "note"]
    assert res.rejected.column("id").to_pylist() == ["long"]
    (issue,) = res.issues.to_pylist()
    assert (issue["field"], issue["check"], issue["action"]) == ("name", "too_long", "rejected")
    assert issue["reason"] == f"text of {len(huge)} characters is longer than the limit 1000"
    assert issue["value"] == "x" * 100 + f"... ({len(huge)} characters)", "the issue keeps the start of the value"
    # a soft column empties the over-long value and keeps the row
    soft = make_contract(ColumnRule(data_class="direct_identifier", name="name", max_length=4, on_invalid="null"))
    res = validate_batch(con, make_batch({"id": ["a", "b"], "name": ["Anne", "Annabel"]}), soft, CTX)
    assert res.accepted.column("name").to_pylist() == ["Anne", None]
    assert res.issues.column("action").to_pylist() == ["nulled"]


def test_valid_values_are_typed(con: duckdb.DuckDBPyConnection) -> None:
    contract = make_contract(
        ColumnRule(data_class="behavioural", name="i", type="int"),
        ColumnRule(data_class="behavioural", name="f", type="float"),
        ColumnRule(data_class="behavioural", name="b", type="bool"),
        ColumnRule(data_class="behavioural", name="d", type="date"),
        ColumnRule(data_class="behavioural", name="ts", type="timestamp"),
        ColumnRule(data_class="behavioural", name="s"),
    )
    batch = make_batch(
        {
            "id": ["a", "b", "c"],
            "i": [" 42 ", "-7", "3.0"],
            "f": ["1.25", "-0.5", "1e3"],
            "b": ["yes", "N", "TRUE"],
            "d": ["2024-02-29", "1999-12-31", None],
            "ts": ["2024-03-05 10:30:00", "2024-03-05T10:30:00Z", "2024-03-05T10:30:00+02:00"],
            "s": ["  padded  ", "", "x"],
        }
    )
    res = validate_batch(con, batch, contract, CTX)
    assert res.rejected.num_rows == 0
    assert res.issues.num_rows == 0
    acc = res.accepted
    assert acc.column_names == [ROW, "id", "i", "f", "b", "d", "ts", "s"]
    assert acc.schema.field("i").type == pa.int64()
    assert acc.schema.field("f").type == pa.float64()
    assert acc.schema.field("b").type == pa.bool_()
    assert acc.schema.field("d").type == pa.date32()
    assert pa.types.is_timestamp(acc.schema.field("ts").type)
    assert acc.column("i").to_pylist() == [42, -7, 3]
    assert acc.column("f").to_pylist() == [1.25, -0.5, 1000.0]
    assert acc.column("b").to_pylist() == [True, False, True]
    assert acc.column("d").to_pylist() == [dt.date(2024, 2, 29), dt.date(1999, 12, 31), None]
    assert acc.column("ts").to_pylist() == [
        dt.datetime(2024, 3, 5, 10, 30),
        dt.datetime(2024, 3, 5, 10, 30),
        dt.datetime(2024, 3, 5, 8, 30),
    ]
    assert acc.column("s").to_pylist() == ["padded", None, "x"]


def test_mapped_codes_are_translated(con: duckdb.DuckDBPyConnection) -> None:
    contract = CONTRACTS.get("northwind_customers")
    rows = [
        ("NW1", "U", "RES", "31/12/1980", "13/01/2020", "MIGRATED"),
        ("NW2", "F", "SMB", "", "01/02/2021", "MIGRATED_CLOSED"),
        ("NW3", "M", "VIP", "05/06/1970", "28/02/2019", "MIGRATED"),
    ]
    cols: dict[str, list[str | None]] = {r.source_name: ["x"] * len(rows) for r in contract.columns}
    cols["EMAIL_ADDR"] = ["A.B@EXAMPLE.COM"] * len(rows)
    cols["STATE"] = ["NY"] * len(rows)
    cols["ZIP"] = ["10001"] * len(rows)
    for name, i in (("CUST_NO", 0), ("SEX", 1), ("SEGMENT_CD", 2), ("DOB", 3), ("SIGNUP_DT", 4), ("STATUS", 5)):
        cols[name] = [r[i] for r in rows]
    res = validate_batch(con, make_batch(cols), contract, CTX)
    assert res.rejected.num_rows == 0
    assert res.issues.num_rows == 0
    acc = res.accepted.to_pydict()
    assert "SEX" not in acc and "CUST_NO" not in acc
    assert acc["customer_no"] == ["NW1", "NW2", "NW3"]
    assert acc["gender"] == ["X", "F", "M"]
    assert acc["segment"] == ["consumer", "small_business", "premium"]
    assert acc["status"] == ["migrated", "migrated_closed", "migrated"]
    assert acc["birth_date"] == [dt.date(1980, 12, 31), None, dt.date(1970, 6, 5)]
    assert acc["signup_date"] == [dt.date(2020, 1, 13), dt.date(2021, 2, 1), dt.date(2019, 2, 28)]


def test_on_invalid_null_empties_the_value_and_keeps_the_row(con: duckdb.DuckDBPyConnection) -> None:
    contract = make_contract(
        ColumnRule(data_class="quasi_identifier", name="bd", type="date", min="1900-01-01", on_invalid="null"),
        ColumnRule(
            data_class="direct_identifier", name="email", pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", on_invalid="null"
        ),
    )
    batch = make_batch(
        {
            "id": ["r1", "r2", "r3"],
            "bd": ["1980-05-01", "yesterday", "1850-01-01"],
            "email": ["a@b.com", "a@b.com", "not-an-email"],
        }
    )
    res = validate_batch(con, batch, contract, CTX)
    assert res.rejected.num_rows == 0
    acc = res.accepted.to_pydict()
    assert acc["id"] == ["r1", "r2", "r3"]
    assert acc["bd"] == [dt.date(1980, 5, 1), None, None]
    assert acc["email"] == ["a@b.com", "a@b.com", None]
    issues = sorted(res.issues.to_pylist(), key=lambda i: (i["row_number"], i["field"]))
    assert [(i["row_number"], i["field"], i["check"], i["action"], i["value"]) for i in issues] == [
        (2, "bd", "invalid_type", "nulled", "yesterday"),
        (3, "bd", "below_minimum", "nulled", "1850-01-01"),
        (3, "email", "pattern", "nulled", "not-an-email"),
    ]


def test_key_column_null_always_rejects(con: duckdb.DuckDBPyConnection) -> None:
    # A key column declared nullable and soft still rejects a row without a key.
    contract = Contract(
        table="t",
        system="test",
        files="t.csv",
        key=["k"],
        columns=[
            ColumnRule(data_class="behavioural", name="k", on_invalid="null"),
            ColumnRule(data_class="behavioural", name="v"),
        ],
    )
    batch = make_batch({"k": ["a", None, " "], "v": ["1", "2", "3"]})
    res = validate_batch(con, batch, contract, CTX)
    assert res.accepted.column("k").to_pylist() == ["a"]
    assert res.rejected.column(ROW).to_pylist() == [2, 3]
    issues = res.issues.to_pylist()
    assert [(i["row_number"], i["field"], i["check"], i["action"]) for i in issues] == [
        (2, "k", "missing", "rejected"),
        (3, "k", "missing", "rejected"),
    ]


def test_several_failures_in_one_row(con: duckdb.DuckDBPyConnection) -> None:
    contract = make_contract(
        ColumnRule(data_class="behavioural", name="n", type="int", max=5),
        ColumnRule(data_class="behavioural", name="c", allowed=["a"]),
        ColumnRule(data_class="behavioural", name="e", pattern="^x$", on_invalid="null"),
    )
    batch = make_batch({"id": ["r1", "r2"], "n": ["abc", "1"], "c": ["zzz", "a"], "e": ["y", "x"]})
    res = validate_batch(con, batch, contract, CTX)
    assert res.rejected.column("id").to_pylist() == ["r1"]
    assert res.accepted.column("id").to_pylist() == ["r2"]
    got = sorted((i["field"], i["check"], i["action"]) for i in res.issues.to_pylist())
    # Only the first failing check of a field is reported (abc is not also "above the maximum").
    assert got == [("c", "unknown_code", "rejected"), ("e", "pattern", "nulled"), ("n", "invalid_type", "rejected")]
    assert set(res.issues.column("row_number").to_pylist()) == {1}


def test_non_text_columns_are_checked_too(con: duckdb.DuckDBPyConnection) -> None:
    contract = make_contract(
        ColumnRule(data_class="behavioural", name="x", type="float", min=0),
        ColumnRule(data_class="behavioural", name="n", type="int", max=3),
    )
    batch = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "x": pa.array([1.0, float("nan"), -1.0, float("inf")]),
            "n": pa.array([1, 2, 3, 4], pa.int32()),
            ROW: pa.array([1, 2, 3, 4], pa.int64()),
        }
    )
    res = validate_batch(con, batch, contract, CTX)
    assert res.accepted.column("id").to_pylist() == ["a"]
    got = sorted((i["row_number"], i["field"], i["check"]) for i in res.issues.to_pylist())
    assert got == [
        (2, "x", "invalid_type"),
        (3, "x", "below_minimum"),
        (4, "n", "above_maximum"),
        (4, "x", "invalid_type"),
    ]


def test_check_columns_names_missing_and_reports_extra() -> None:
    contract = CONTRACTS.get("northwind_customers")
    names = [r.source_name for r in contract.columns]
    schema = pa.schema([(n, pa.string()) for n in [*names, "LOYALTY", ROW]])
    assert check_columns(contract, schema, "northwind/CUSTOMERS.csv") == ["LOYALTY"]
    with pytest.raises(ContractViolation) as err:
        check_columns(contract, pa.schema([(n, pa.string()) for n in names if n != "DOB"]), "northwind/CUSTOMERS.csv")
    msg = str(err.value)
    assert "northwind_customers" in msg and "northwind/CUSTOMERS.csv" in msg and "DOB" in msg


# --------------------------------------------------------------------------------------------
# 6. ingesting the generated world

KIND_CHECKS = {
    "missing_key": {"missing"},
    "bad_date": {"invalid_type"},
    "unknown_code": {"unknown_code", "unknown_reference"},
    "negative_amount": {"below_minimum"},
    "not_a_number": {"invalid_type"},
    "out_of_range": {"below_minimum", "above_maximum"},
    "future_time": {"in_future"},
    "duplicate_row": {"duplicate_key"},
}


def lake_file(settings: Settings, table: str) -> Path:
    parts = list((settings.lake_dir / table).glob("drop=*/data.parquet"))
    assert len(parts) == 1, parts
    return parts[0]


def lake_frame(settings: Settings, table: str) -> pd.DataFrame:
    return pd.read_parquet(lake_file(settings, table))


def injected(world: World, table: str) -> pd.DataFrame:
    """Injected errors of a table, with the field named as in the lake."""
    inj = world.truth_frame("injected_errors")
    inj = inj[inj["table"] == table].copy()
    contract = CONTRACTS.get(table)
    to_lake = {r.source_name: r.name for r in contract.columns}
    inj["field"] = inj["field"].map(to_lake)
    assert inj["field"].notna().all()
    inj["action"] = [
        "nulled"
        if k != "duplicate_row" and contract.column(f).on_invalid == "null" and f not in contract.key
        else "rejected"
        for k, f in zip(inj["kind"], inj["field"], strict=True)
    ]
    return inj


def test_report_counts_reconcile(ingested: Ingested) -> None:
    rep, settings, world = ingested.report, ingested.settings, ingested.world
    assert set(rep.tables) == {c.table for c in CONTRACTS.contracts}
    assert rep.reconciles
    assert rep.drop_id.startswith(world.cfg.window_end.strftime("%Y%m%d") + "-")
    assert rep.replaced_existing is False
    for table, tr in rep.tables.items():
        assert tr.skipped is None, table
        assert tr.files == [SOURCE_FILES[table][0]]
        assert tr.read == world.summary.rows[table], table
        assert tr.read == tr.accepted + tr.quarantined, table
        assert tr.reconciles
        assert tr.extra_columns == []
        assert pq.read_metadata(lake_file(settings, table)).num_rows == tr.accepted
        qdir = settings.quarantine_dir / table / f"drop={rep.drop_id}"
        quarantined_rows = sum(pq.read_metadata(p).num_rows for p in qdir.glob("rows-*.parquet"))
        if (qdir / "duplicates.parquet").exists():
            quarantined_rows += pq.read_metadata(qdir / "duplicates.parquet").num_rows
        assert quarantined_rows == tr.quarantined, table
        issues = read_quarantine(settings, table)
        assert sum(tr.reasons.values()) == len(issues)
        assert tr.nulled_values == int((issues["action"] == "nulled").sum())
    saved = json.loads((settings.reports_dir / "ingest" / f"{rep.drop_id}.json").read_text())
    assert saved["drop_id"] == rep.drop_id
    for table, tr in rep.tables.items():
        assert (saved["tables"][table]["read"], saved["tables"][table]["accepted"]) == (tr.read, tr.accepted)
    log = (settings.lake_dir / "_ingest_log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["drop_id"] == rep.drop_id


@pytest.mark.parametrize("table", sorted(MALFORMATIONS))
def test_every_injected_error_is_caught(ingested: Ingested, table: str) -> None:
    world, settings = ingested.world, ingested.settings
    inj = injected(world, table)
    kinds = {k for _, k, _ in MALFORMATIONS[table]} | ({"duplicate_row"} if table in DUPLICATED_TABLES else set())
    assert set(inj["kind"]) == kinds, "the session world exercises every injection kind of this table"

    issues = read_quarantine(settings, table)
    assert set(issues["drop"]) == {ingested.report.drop_id}
    m = inj.merge(issues, on=["row_number", "field"], how="left", suffixes=("", "_issue"), indicator=True)
    missing = m[m["_merge"] != "both"]
    assert missing.empty, f"injected errors without a quarantine issue:\n{missing.head()}"
    wrong_check = m[[c not in KIND_CHECKS[k] for k, c in zip(m["kind"], m["check"], strict=True)]]
    assert wrong_check.empty, f"wrong check:\n{wrong_check[['row_number', 'field', 'kind', 'check']].head()}"
    wrong_action = m[m["action"] != m["action_issue"]]
    assert wrong_action.empty, f"wrong action:\n{wrong_action.head()}"

    lake = lake_frame(settings, table)
    rejected_rows = set(inj.loc[inj["action"] == "rejected", "row_number"])
    assert not rejected_rows & set(lake[ROW]), "accepted lake rows include injected broken rows"
    # Clean rows are not rejected: the only rejected rows are the injected ones.
    assert set(issues.loc[issues["action"] == "rejected", "row_number"]) == rejected_rows
    assert len(lake) == ingested.report.tables[table].read - len(rejected_rows)

    nulled = inj[inj["action"] == "nulled"]
    if len(nulled):
        kept = lake.set_index(ROW).loc[nulled["row_number"]]
        for field, (_, value) in zip(nulled["field"], kept.iterrows(), strict=True):
            assert pd.isna(value[field]), "a nulled value is emptied in the lake"

    dups = inj[inj["kind"] == "duplicate_row"]
    if len(dups):
        key = CONTRACTS.get(table).key[0]
        originals = lake.set_index(ROW).loc[dups["row_number"] - 1, key]
        dup_issues = issues.set_index("row_number").loc[dups["row_number"]]
        assert (dup_issues["value"].to_numpy() == (key + "=" + originals).to_numpy()).all()
        assert dup_issues["reason"].str.contains("first seen at row").all()


def test_crm_birth_date_errors_are_nulled_not_rejected(ingested: Ingested) -> None:
    inj = injected(ingested.world, "crm_accounts")
    bd = inj[inj["field"] == "birth_date"]
    assert len(bd) > 0 and (bd["action"] == "nulled").all()
    lake = lake_frame(ingested.settings, "crm_accounts").set_index(ROW)
    assert lake.loc[bd["row_number"], "birth_date"].isna().all()
    issues = read_quarantine(ingested.settings, "crm_accounts")
    got = issues.merge(bd[["row_number", "field"]], on=["row_number", "field"])
    assert (got["action"] == "nulled").all() and (got["check"] == "invalid_type").all()
    assert len(got) == len(bd)


def test_northwind_is_mapped_onto_the_canonical_schema(ingested: Ingested) -> None:
    world, settings = ingested.world, ingested.settings
    table = pq.read_table(lake_file(settings, "northwind_customers"))
    expected = [
        "customer_no",
        "full_name",
        "email",
        "phone",
        "birth_date",
        "gender",
        "address_line",
        "city",
        "state",
        "postcode",
        "segment",
        "signup_date",
        "status",
    ]
    assert table.column_names[: 1 + len(expected)] == [ROW, *expected]
    assert {"_source_file", "_drop_id", "_drop_as_of"} <= set(table.column_names)
    assert not {"CUST_NO", "SEX", "DOB", "SIGNUP_DT"} & set(table.column_names)
    assert table.schema.field("birth_date").type == pa.date32()
    assert table.schema.field("signup_date").type == pa.date32()

    lake = table.to_pandas().set_index(ROW)
    assert set(lake["gender"].dropna()) <= {"F", "M", "X"}
    assert set(lake["segment"]) <= {"consumer", "small_business", "premium"}
    assert lake["signup_date"].notna().all()

    rel, _, sep = SOURCE_FILES["northwind_customers"]
    raw = pd.read_csv(world.path / rel, sep=sep, dtype=str, keep_default_na=False)
    raw.index = range(1, len(raw) + 1)
    raw = raw.loc[lake.index]
    assert (lake["customer_no"] == raw["CUST_NO"]).all()
    parse = lambda s: dt.datetime.strptime(s, "%d/%m/%Y").date()  # noqa: E731
    assert (lake["signup_date"] == raw["SIGNUP_DT"].map(parse)).all()
    assert any(d.day > 12 for d in lake["signup_date"]), "day-first dates are exercised"
    has_dob = raw["DOB"] != ""
    assert (lake.loc[has_dob, "birth_date"] == raw.loc[has_dob, "DOB"].map(parse)).all()
    assert lake.loc[~has_dob, "birth_date"].isna().all()
    assert (lake["gender"] == raw["SEX"].map({"F": "F", "M": "M", "U": "X"})).all()
    assert (
        lake["segment"] == raw["SEGMENT_CD"].map({"RES": "consumer", "SMB": "small_business", "VIP": "premium"})
    ).all()
    # Spot-check a few rows by hand against the raw text.
    for row in list(lake.index[:3]):
        d, mth, y = raw.loc[row, "SIGNUP_DT"].split("/")
        assert lake.loc[row, "signup_date"] == dt.date(int(y), int(mth), int(d))


def test_read_lake_table_and_read_quarantine(ingested: Ingested) -> None:
    settings = ingested.settings
    crm = read_lake_table(settings, "crm_accounts")
    assert len(crm) == ingested.report.tables["crm_accounts"].accepted
    assert crm["crm_id"].is_unique
    assert set(crm["_drop_id"]) == {ingested.report.drop_id}
    q = read_quarantine(settings, "crm_accounts")
    assert list(q.columns[:6]) == ISSUE_SCHEMA.names
    with pytest.raises(IngestError, match="not been ingested"):
        read_lake_table(settings, "no_such_table")
    assert read_quarantine(settings, "no_such_table").empty


# --------------------------------------------------------------------------------------------
# 7. idempotency


def test_reingesting_the_same_drop_is_idempotent(ingested: Ingested, home_copy: Settings) -> None:
    first = ingested.report
    second = ingest_drop(ingested.world.path, home_copy)
    assert second.drop_id == first.drop_id
    assert first.replaced_existing is False
    assert second.replaced_existing is True
    for table, tr in second.tables.items():
        a = first.tables[table]
        assert (tr.read, tr.accepted, tr.quarantined, tr.reasons) == (a.read, a.accepted, a.quarantined, a.reasons)
    for area in ("lake_dir", "quarantine_dir"):
        root_a, root_b = getattr(ingested.settings, area), getattr(home_copy, area)
        for table_dir in sorted(p for p in root_a.iterdir() if p.is_dir()):
            parts = sorted(p.name for p in (root_b / table_dir.name).iterdir())
            assert parts == [f"drop={first.drop_id}"], (area, table_dir.name, parts)
            files_a = sorted(p.name for p in (table_dir / parts[0]).iterdir())
            files_b = sorted(p.name for p in (root_b / table_dir.name / parts[0]).iterdir())
            assert files_a == files_b
            for name in files_a:
                fa = pd.read_parquet(table_dir / parts[0] / name)
                fb = pd.read_parquet(root_b / table_dir.name / parts[0] / name)
                keys = [c for c in ("_source_file", ROW, "row_number", "field") if c in fa.columns]
                fa = fa.sort_values(keys, ignore_index=True)
                fb = fb.sort_values(keys, ignore_index=True)
                pd.testing.assert_frame_equal(fa, fb)
    assert len((home_copy.lake_dir / "_ingest_log.jsonl").read_text().splitlines()) == 2


def test_the_same_drop_gives_the_same_bytes(ingested: Ingested, new_settings: Callable[[str], Settings]) -> None:
    """Ingesting a drop again writes byte-identical partitions, row order included.

    Small batches make many row groups, so DuckDB scans and joins them in parallel, as on a large drop.
    """
    homes = [Settings(home=new_settings(name).home_dir, ingest_batch_rows=2000) for name in ("once", "again")]
    for home in homes:
        ingest_drop(ingested.world.path, home)
    for area in ("lake_dir", "quarantine_dir"):
        first, second = (tree_digest(getattr(home, area)) for home in homes)
        for bookkeeping in (MANIFEST, INGEST_LOG):  # they name the landing and its time
            first.pop(bookkeeping, None)
            second.pop(bookkeeping, None)
        differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
        assert differ == [], f"{area}: {differ}"


# --------------------------------------------------------------------------------------------
# 8. failures


def _state(settings: Settings) -> dict[str, str]:
    return {
        **{f"lake/{k}": v for k, v in tree_digest(settings.lake_dir).items()},
        **{f"quarantine/{k}": v for k, v in tree_digest(settings.quarantine_dir).items()},
        **{f"reports/{k}": v for k, v in tree_digest(settings.reports_dir).items()},
    }


def _partitions(settings: Settings) -> set[str]:
    return {str(p.relative_to(settings.home_dir)) for p in settings.home_dir.glob("*/*/drop=*")}


def _staging_leftovers(settings: Settings) -> list[Path]:
    staging = settings.home_dir / ".staging"
    return list(staging.iterdir()) if staging.exists() else []


def _rewrite_csv(path: Path, sep: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    edit(frame).to_csv(path, sep=sep, index=False, lineterminator="\n")


def _assert_failure_leaves_home_untouched(settings: Settings, drop: Path, *needles: str) -> None:
    before, parts = _state(settings), _partitions(settings)
    with pytest.raises(IngestError) as err:
        ingest_drop(drop, settings)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert _state(settings) == before, "a failed ingestion changed the lake, quarantine or reports"
    assert _partitions(settings) == parts, "a failed ingestion added a partition"
    assert _staging_leftovers(settings) == []


def test_missing_required_column_fails_naming_table_file_and_column(
    home_copy: Settings, drop_copy: Callable[[str], Path]
) -> None:
    drop = drop_copy("drop")
    _rewrite_csv(drop / "support" / "tickets.csv", ",", lambda f: f.drop(columns=["category"]))
    _assert_failure_leaves_home_untouched(home_copy, drop, "support_tickets", "support/tickets.csv", "category")


def test_missing_required_column_in_acquired_schema_names_source_column(
    home_copy: Settings, drop_copy: Callable[[str], Path]
) -> None:
    drop = drop_copy("drop")
    _rewrite_csv(drop / "northwind" / "CUSTOMERS.csv", ";", lambda f: f.drop(columns=["SIGNUP_DT"]))
    _assert_failure_leaves_home_untouched(home_copy, drop, "northwind_customers", "CUSTOMERS.csv", "SIGNUP_DT")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_parquet_fails_naming_it(home_copy: Settings, drop_copy: Callable[[str], Path], damage: str) -> None:
    drop = drop_copy("drop")
    path = drop / "digital" / "events.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"this is not parquet at all" * 100)
    _assert_failure_leaves_home_untouched(home_copy, drop, "digital_events", "events.parquet")


def test_failure_midway_leaves_lake_untouched(home_copy: Settings, drop_copy: Callable[[str], Path]) -> None:
    # billing_transactions is checked last (it references the catalogue); broken bytes deep inside the file
    # only surface once every other table has been staged.
    drop = drop_copy("drop")
    path = drop / "billing" / "transactions.csv"
    data = path.read_bytes()
    cut = data.index(b"\n", len(data) * 3 // 4) + 1
    path.write_bytes(data[:cut] + b"TX\xff\xfe\xfd" + data[cut + 2 :])
    _assert_failure_leaves_home_untouched(home_copy, drop, "billing_transactions", "transactions.csv", "cannot read")
    # The failure came after staging had started (the staging root exists), and the stage was removed.
    assert (home_copy.home_dir / ".staging").is_dir()


def test_missing_required_source_file_fails_naming_the_table(
    home_copy: Settings, drop_copy: Callable[[str], Path]
) -> None:
    drop = drop_copy("drop")
    (drop / "crm" / "accounts.csv").unlink()
    _assert_failure_leaves_home_untouched(home_copy, drop, "crm_accounts", "crm/accounts.csv")


def test_missing_drop_folder_fails(new_settings: Callable[[str], Settings], tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="does not exist"):
        ingest_drop(tmp_path / "nowhere", new_settings("home"))


# Small drops with the CRM table only, ingested with a matching subset of contracts (fast).
CRM_ONLY = ContractSet(contracts=[CONTRACTS.get("crm_accounts")])


def _crm_drop(world: World, dst: Path, export_date: str = "2026-01-01") -> Path:
    (dst / "crm").mkdir(parents=True)
    shutil.copy(world.path / "crm" / "accounts.csv", dst / "crm" / "accounts.csv")
    (dst / "manifest.json").write_text(json.dumps({"export_date": export_date}))
    return dst


def _crm_lines(drop: Path) -> list[str]:
    lines = (drop / "crm" / "accounts.csv").read_text().split("\n")
    assert lines[-1] == ""
    return lines


def _bad_shape_drop(world: World, tmp_path: Path) -> tuple[Path, int, list[str]]:
    """The CRM file with one data row given an extra field; returns (drop, bad data row number, original lines)."""
    drop = _crm_drop(world, tmp_path / "drop")
    lines = _crm_lines(drop)
    original = list(lines)
    broken = injected(world, "crm_accounts")["row_number"]
    bad_row = next(r for r in range(10, 100) if r not in set(broken) and r + 1 not in set(broken))
    lines[bad_row] += ",EXTRA"  # lines[0] is the header, so lines[r] is data row r
    (drop / "crm" / "accounts.csv").write_text("\n".join(lines))
    return drop, bad_row, original


def test_row_with_wrong_field_count_is_quarantined(
    ingested: Ingested, tmp_path: Path, new_settings: Callable[[str], Settings]
) -> None:
    drop, bad_row, original = _bad_shape_drop(ingested.world, tmp_path)
    settings = new_settings("home")
    rep = ingest_drop(drop, settings, contracts=CRM_ONLY)
    tr = rep.tables["crm_accounts"]
    base = ingested.report.tables["crm_accounts"]
    assert tr.reconciles
    assert tr.read == base.read
    assert tr.accepted == base.accepted - 1
    assert tr.quarantined == base.quarantined + 1
    assert tr.reasons.get("<row>: bad_row_shape") == 1
    issues = read_quarantine(settings, "crm_accounts")
    shape = issues[issues["check"] == "bad_row_shape"]
    assert len(shape) == 1
    assert shape["action"].iloc[0] == "rejected"
    assert "18 fields, expected 17" in shape["reason"].iloc[0]
    bad_id = original[bad_row].split(",")[0]
    assert bad_id not in set(lake_frame(settings, "crm_accounts")["crm_id"])


@pytest.fixture
def bad_shape_ingested(
    ingested: Ingested, tmp_path: Path, new_settings: Callable[[str], Settings]
) -> tuple[Settings, int, list[str]]:
    drop, bad_row, original = _bad_shape_drop(ingested.world, tmp_path)
    settings = new_settings("home")
    ingest_drop(drop, settings, contracts=CRM_ONLY)
    return settings, bad_row, original


def test_bad_row_shape_issue_names_the_row(bad_shape_ingested: tuple[Settings, int, list[str]]) -> None:
    settings, bad_row, _ = bad_shape_ingested
    issues = read_quarantine(settings, "crm_accounts")
    shape = issues[issues["check"] == "bad_row_shape"]
    assert shape["row_number"].tolist() == [bad_row], "the issue names the data row that has the wrong shape"


def test_rows_after_a_bad_row_keep_their_row_numbers(
    ingested: Ingested, bad_shape_ingested: tuple[Settings, int, list[str]]
) -> None:
    settings, bad_row, original = bad_shape_ingested
    lake = lake_frame(settings, "crm_accounts").set_index("crm_id")
    before_id, next_id = original[bad_row - 1].split(",")[0], original[bad_row + 1].split(",")[0]
    assert lake.loc[before_id, ROW] == bad_row - 1
    assert lake.loc[next_id, ROW] == bad_row + 1, "_row_number of the row after the malformed one"
    # The injected errors after it are still reported at their own data row.
    issues = read_quarantine(settings, "crm_accounts")
    inj = injected(ingested.world, "crm_accounts")
    later = inj[inj["row_number"] > bad_row]
    m = later.merge(issues, on=["row_number", "field"], how="left", indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"][["row_number", "field", "kind"]].head()


def test_extra_undeclared_columns_are_reported_and_ignored(
    ingested: Ingested, tmp_path: Path, new_settings: Callable[[str], Settings]
) -> None:
    drop = _crm_drop(ingested.world, tmp_path / "drop")
    _rewrite_csv(drop / "crm" / "accounts.csv", ",", lambda f: f.assign(loyalty_tier="gold", **{"Internal Notes": "x"}))
    settings = new_settings("home")
    rep = ingest_drop(drop, settings, contracts=CRM_ONLY)
    tr = rep.tables["crm_accounts"]
    base = ingested.report.tables["crm_accounts"]
    assert tr.extra_columns == ["loyalty_tier", "Internal Notes"]
    assert (tr.read, tr.accepted, tr.quarantined) == (base.read, base.accepted, base.quarantined)
    lake = lake_frame(settings, "crm_accounts")
    assert "loyalty_tier" not in lake.columns and "Internal Notes" not in lake.columns
    assert list(lake.columns) == list(lake_frame(ingested.settings, "crm_accounts").columns)


def test_optional_source_missing_is_skipped(
    ingested: Ingested, tmp_path: Path, new_settings: Callable[[str], Settings]
) -> None:
    drop = _crm_drop(ingested.world, tmp_path / "drop")
    contracts = ContractSet(contracts=[CONTRACTS.get("crm_accounts"), CONTRACTS.get("offer_test")])
    rep = ingest_drop(drop, new_settings("home"), contracts=contracts)
    assert rep.tables["offer_test"].skipped is not None
    assert rep.tables["offer_test"].read == 0
    assert rep.tables["crm_accounts"].accepted == ingested.report.tables["crm_accounts"].accepted


# --------------------------------------------------------------------------------------------
# 9. newest drop wins per key


def test_read_lake_table_returns_newest_drop_per_key(
    ingested: Ingested, tmp_path: Path, new_settings: Callable[[str], Settings]
) -> None:
    world = ingested.world
    old = _crm_drop(world, tmp_path / "old", "2026-01-01")
    new = _crm_drop(world, tmp_path / "new", "2026-02-01")
    lines = _crm_lines(new)
    broken = set(injected(world, "crm_accounts")["row_number"])
    changed_row, removed_row = [r for r in range(1, 200) if r not in broken][:2]
    changed = lines[changed_row].split(",")
    changed_id, removed_id = changed[0], lines[removed_row].split(",")[0]
    assert changed[1] != "Zelda"
    changed[1] = "Zelda"
    lines[changed_row] = ",".join(changed)
    del lines[removed_row]
    (new / "crm" / "accounts.csv").write_text("\n".join(lines))

    settings = new_settings("home")
    rep_new = ingest_drop(new, settings, contracts=CRM_ONLY)  # the newer drop is ingested first on purpose
    rep_old = ingest_drop(old, settings, contracts=CRM_ONLY)
    assert rep_new.drop_id != rep_old.drop_id
    assert rep_new.drop_id.startswith("20260201-") and rep_old.drop_id.startswith("20260101-")
    assert len(list((settings.lake_dir / "crm_accounts").glob("drop=*"))) == 2

    current = read_lake_table(settings, "crm_accounts").set_index("crm_id")
    assert current.index.is_unique
    assert len(current) == rep_old.tables["crm_accounts"].accepted
    assert current.loc[changed_id, "first_name"] == "Zelda"
    assert current.loc[changed_id, "_drop_id"] == rep_new.drop_id
    assert current.loc[removed_id, "_drop_id"] == rep_old.drop_id, "a key only the older drop has is kept"
    others = current.drop(index=[removed_id])
    assert (others["_drop_id"] == rep_new.drop_id).all()
    assert (others["_drop_as_of"] == pd.Timestamp("2026-02-01")).all()
