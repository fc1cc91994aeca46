"""Whitespace-aligned text files (columns separated by runs of spaces), with or without a header row.

Transaction logs such as CDNOW's are published this way: `00001 19970101  1  11.77`.
"""

import datetime as dt
from pathlib import Path

import pytest

from custintel.settings import Settings
from features.contracts import Contract, load_contracts
from features.lake import ingest_drop, read_lake_table, read_quarantine

EXPORTED = dt.date(1998, 7, 1)
CONTRACT = """
table: purchases
system: byo
files: purchases.txt
sep: whitespace
{header}
columns:
  - {{name: customer_id, class: direct_identifier, nullable: false}}
  - {{name: day, class: behavioural, type: date, nullable: false, formats: ["%Y%m%d"]}}
  - {{name: cds, class: behavioural, type: int, min: 0}}
  - {{name: dollars, class: behavioural, type: float}}
"""
ALIGNED = [
    "00001 19970101  1  11.77",
    "00002 19970112  1  12.00",
    "",
    "\t00002   19970112  5  77.00  ",
    "00003 19970102  2",  # a field short: quarantined with the record's number
    "00004 19970101  2  20.76",
]


def _contracts(tmp_path: Path, header: bool) -> Path:
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "purchases.yaml").write_text(CONTRACT.format(header="" if header else "header: false"))
    return folder


@pytest.mark.parametrize("header", [True, False])
def test_columns_separated_by_runs_of_spaces_are_read(tmp_path: Path, header: bool) -> None:
    contracts = load_contracts(_contracts(tmp_path, header))
    drop = tmp_path / "drop"
    drop.mkdir()
    lines = (["customer_id   day       cds  dollars"] if header else []) + ALIGNED
    (drop / "purchases.txt").write_text("\n".join(lines) + "\n")
    settings = Settings(home=tmp_path / "home")
    report = ingest_drop(drop, settings, contracts=contracts, export_date=EXPORTED)
    t = report.tables["purchases"]
    assert (t.read, t.accepted, t.quarantined) == (5, 4, 1)  # the blank line is not a record
    lake = read_lake_table(settings, "purchases", contracts)
    assert lake["customer_id"].tolist() == ["00001", "00002", "00002", "00004"]  # ids stay text
    assert lake["dollars"].tolist() == [11.77, 12.0, 77.0, 20.76]
    assert str(lake["day"].iloc[0])[:10] == "1997-01-01"
    (issue,) = read_quarantine(settings, "purchases").to_dict("records")
    assert (
        issue["row_number"] == 4
        and issue["check"] == "bad_row_shape"
        and "row has 3 fields, expected 4" in issue["reason"]
    )


def test_a_separator_is_one_character_or_whitespace() -> None:
    base = {"table": "t", "system": "s", "files": "t.txt", "columns": [{"name": "a", "class": "behavioural"}]}
    assert Contract.model_validate({**base, "sep": "whitespace"}).sep == "whitespace"
    with pytest.raises(ValueError, match="sep must be one character or 'whitespace'"):
        Contract.model_validate({**base, "sep": "  "})
