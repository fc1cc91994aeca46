"""Data contracts: the shipped YAML loads, and broken contracts are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from features.contracts import DEFAULT_MAX_TEXT_LENGTH, ColumnRule, Contract, ContractSet, load_contracts
from features.synthetic.sources import SOURCE_FILES

SHIPPED_TABLES = {
    "crm_accounts",
    "billing_accounts",
    "billing_transactions",
    "support_tickets",
    "digital_events",
    "nps_responses",
    "consent_events",
    "northwind_customers",
    "northwind_consents",
    "offer_test",
    "product_catalogue",
    "knowledge_base_articles",
}

GOOD_CONTRACT = """\
table: things
system: test
files: things/*.csv
key: [thing_id]
columns:
  - {name: thing_id, class: direct_identifier, nullable: false}
  - {name: size, class: behavioural, type: int, min: 0}
"""


def test_all_shipped_contracts_load() -> None:
    cs = load_contracts()
    assert {c.table for c in cs.contracts} == SHIPPED_TABLES
    for c in cs.contracts:
        assert c.key, f"{c.table} declares a key"
        assert c.columns
        # Every contract matches the file the generator writes for its table.
        rel, fmt, sep = SOURCE_FILES[c.table]
        assert Path(rel).match(c.files), (c.table, rel, c.files)
        assert c.format == fmt
        assert c.sep == sep


def test_shipped_contract_details() -> None:
    cs = load_contracts()
    nw = cs.get("northwind_customers")
    assert nw.column("gender").source_name == "SEX"
    assert nw.column("gender").map == {"F": "F", "M": "M", "U": "X"}
    assert nw.column("birth_date").date_formats == ["%d/%m/%Y"]
    assert nw.column("birth_date").on_invalid == "null"
    assert cs.get("crm_accounts").column("birth_date").on_invalid == "null"
    assert cs.get("crm_accounts").column("created_at").date_formats[0] == "%Y-%m-%d %H:%M:%S"
    assert cs.get("offer_test").required is False
    assert cs.get("crm_accounts").required is True
    assert cs.get("billing_transactions").dependencies == {"product_catalogue"}
    with pytest.raises(KeyError):
        cs.get("nope")
    with pytest.raises(KeyError):
        nw.column("nope")


def test_ordered_puts_referenced_tables_first() -> None:
    cs = load_contracts()
    order = [c.table for c in cs.ordered()]
    assert sorted(order) == sorted(SHIPPED_TABLES)
    pos = {t: i for i, t in enumerate(order)}
    assert pos["product_catalogue"] < pos["billing_accounts"]
    assert pos["product_catalogue"] < pos["billing_transactions"]
    for c in cs.contracts:
        for dep in c.dependencies:
            assert pos[dep] < pos[c.table]


def test_load_contracts_from_folder(tmp_path: Path) -> None:
    (tmp_path / "things.yaml").write_text(GOOD_CONTRACT)
    (tmp_path / "notes.txt").write_text("not a contract")
    cs = load_contracts(tmp_path)
    assert [c.table for c in cs.contracts] == ["things"]
    assert cs.get("things").column("size").min == 0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("table: [unclosed\n  columns: {", "not valid YAML"),  # YAML syntax error
        ("table: things\nsystem: test\nfiles: x.csv\n", "columns"),  # a required field missing
        (GOOD_CONTRACT.replace("type: int", "type: integer"), "type"),  # an unknown column type
        (GOOD_CONTRACT.replace("key: [thing_id]", "key: [other_id]"), "other_id"),  # key not declared
        (GOOD_CONTRACT.replace("table: things", "table: Things-1"), "table"),  # bad table name
        (GOOD_CONTRACT + "  - {name: size, class: behavioural}\n", "duplicate column"),
        (GOOD_CONTRACT.replace("min: 0", "pattern: '(unclosed'"), "pattern"),  # regex that does not compile
        (GOOD_CONTRACT.replace("min: 0", "on_invalid: drop"), "on_invalid"),
        ("", "bad.yaml"),  # an empty file is not a contract either
    ],
    ids=[
        "yaml-syntax",
        "missing-field",
        "bad-type",
        "bad-key",
        "bad-table-name",
        "dup-column",
        "bad-regex",
        "bad-on-invalid",
        "empty-file",
    ],
)
def test_invalid_contract_file_gives_value_error_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "a_good.yaml").write_text(GOOD_CONTRACT.replace("things", "goods"))
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError) as err:
        load_contracts(tmp_path)
    message = str(err.value)
    assert "bad.yaml" in message
    assert needle in message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"type": "string", "formats": ["%Y"]}, "formats only apply"),
        ({"type": "int", "formats": ["%Y-%m-%d"]}, "formats only apply"),
        ({"type": "string", "not_in_future": True}, "not_in_future"),
        ({"type": "string", "min": 1}, "numeric bound"),
        ({"type": "int", "min": "2020-01-01"}, "text bound"),
        ({"type": "date", "min": "not-a-date"}, "Invalid isoformat"),
        ({"type": "string", "references": "product_catalogue"}, "table.column"),
        ({"type": "string", "max_length": 0}, "greater than or equal to 1"),
    ],
)
def test_column_rule_rejects_inconsistent_checks(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        ColumnRule(data_class="behavioural", name="col", **kwargs)  # type: ignore[arg-type]
    assert needle in str(err.value)


def test_column_rule_accepts_consistent_checks() -> None:
    d = ColumnRule(
        data_class="behavioural", name="d", type="date", formats=["%d/%m/%Y"], min="1900-01-01", not_in_future=True
    )
    assert d.date_formats == ["%d/%m/%Y"]
    assert ColumnRule(data_class="behavioural", name="t", type="timestamp").date_formats[0] == "%Y-%m-%d %H:%M:%S"
    assert ColumnRule(data_class="behavioural", name="s").date_formats == []
    assert ColumnRule(data_class="behavioural", name="x", source="X").source_name == "X"
    assert ColumnRule(data_class="behavioural", name="x").source_name == "x"


def _contract(table: str, *, references: str | None = None) -> Contract:
    return Contract(
        table=table,
        system="test",
        files=f"{table}.csv",
        key=["id"],
        columns=[
            ColumnRule(data_class="direct_identifier", name="id", nullable=False),
            ColumnRule(data_class="behavioural", name="ref", references=references),
        ],
    )


def test_references_to_unknown_table_rejected() -> None:
    with pytest.raises(ValidationError) as err:
        ContractSet(contracts=[_contract("a", references="ghost.id")])
    assert "ghost" in str(err.value)
    assert "unknown tables" in str(err.value)


def test_reference_in_folder_to_unknown_table_rejected(tmp_path: Path) -> None:
    (tmp_path / "things.yaml").write_text(GOOD_CONTRACT.replace("type: int, min: 0", "references: ghost.id"))
    with pytest.raises(ValueError, match="ghost"):
        load_contracts(tmp_path)


def test_duplicate_tables_rejected() -> None:
    with pytest.raises(ValidationError, match="same table"):
        ContractSet(contracts=[_contract("a"), _contract("a")])


def test_circular_references_detected_by_ordered() -> None:
    cs = ContractSet(contracts=[_contract("a", references="b.id"), _contract("b", references="a.id")])
    with pytest.raises(ValueError, match="circular"):
        cs.ordered()


def test_ordered_is_topological_and_deterministic() -> None:
    cs = ContractSet(
        contracts=[_contract("c", references="b.id"), _contract("b", references="a.id"), _contract("a"), _contract("z")]
    )
    assert [c.table for c in cs.ordered()] == ["a", "z", "b", "c"]


def test_text_length_limit_defaults_and_overrides(tmp_path: Path) -> None:
    shipped = load_contracts()
    assert all(c.max_text_length == DEFAULT_MAX_TEXT_LENGTH for c in shipped.contracts)
    (tmp_path / "t.yaml").write_text(
        "table: t\nsystem: s\nfiles: t.csv\nmax_text_length: 200\n"
        "columns:\n  - {name: id, class: direct_identifier}\n  - {name: note, class: behavioural, max_length: 5000}\n"
    )
    contract = load_contracts(tmp_path).get("t")
    assert contract.max_length(contract.column("id")) == 200
    assert contract.max_length(contract.column("note")) == 5000
