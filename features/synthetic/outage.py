"""Inject a source outage into a copy of a generated drop, and record the truth of what was injected.

Three defects a data engineer meets in real exports: a day of rows missing (a failed load of digital
events), a column gone empty from a date (a CRM field the source stopped filling), and a volume spike (a
batch loaded several times, with fresh keys). They change the drop's files in place, so use a copy: the
generator's own truth (`_truth/injected_errors`) counts rows of the original files and no longer fits.
The truth of the outage goes to `_truth/outage.json`, which ingestion does not read.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.contracts import Contract, ContractSet, load_contracts
from features.lake import file_digest

OUTAGE_TRUTH = "_truth/outage.json"


class OutageError(ValueError):
    """An outage cannot be injected: the table, column or day is not in the drop."""


@dataclass(frozen=True)
class MissingDay:
    """Every row of `table` dated `day` is removed."""

    table: str
    day: dt.date


@dataclass(frozen=True)
class EmptyColumn:
    """`column` of `table` is emptied in every row dated `start` or later."""

    table: str
    column: str
    start: dt.date


@dataclass(frozen=True)
class VolumeSpike:
    """The rows of `table` dated `day` are repeated until there are `factor` times as many, with fresh keys."""

    table: str
    day: dt.date
    factor: int = 3


Defect = MissingDay | EmptyColumn | VolumeSpike


@dataclass(frozen=True)
class InjectedDefect:
    """What was done, for the checks to be scored against."""

    kind: Literal["missing_day", "empty_column", "volume_spike"]
    table: str
    column: str | None
    day: dt.date  # the day of a missing day or spike; the first empty day of a column
    until: dt.date  # the last day affected
    rows: int  # rows removed, emptied or added
    file: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return {**asdict(self), "day": self.day.isoformat(), "until": self.until.isoformat()}


def _read(path: Path, contract: Contract) -> pd.DataFrame:
    if contract.format == "parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep=contract.sep, dtype=str, keep_default_na=False, na_filter=False)


def _write(frame: pd.DataFrame, path: Path, contract: Contract, schema: pa.Schema | None) -> None:
    if contract.format == "parquet":
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table.cast(schema) if schema is not None else table, path, compression="zstd")
    else:
        frame.to_csv(path, index=False, sep=contract.sep, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)


def _days(frame: pd.DataFrame, contract: Contract, column: str) -> pd.Series:
    """The date of each row by `column` (NaT where the source value does not parse)."""
    rule = next(c for c in contract.columns if c.name == column)
    raw = frame[rule.source_name]
    if pd.api.types.is_datetime64_any_dtype(raw):
        return pd.to_datetime(raw, utc=True).dt.tz_localize(None).dt.normalize()
    text = raw.astype(str).str.strip()
    parsed = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns]")
    for fmt in rule.date_formats:
        got = pd.to_datetime(text, format=fmt, errors="coerce", utc="%z" in fmt)
        if getattr(got.dt, "tz", None) is not None:
            got = got.dt.tz_localize(None)
        parsed = parsed.fillna(got)
    return parsed.dt.normalize()


def _time_rule(contract: Contract, time_column: str | None) -> str:
    if time_column is not None:
        if time_column not in {c.name for c in contract.columns}:
            raise OutageError(f"{contract.table} has no column {time_column}")
        return time_column
    for c in contract.columns:
        if c.type in ("date", "timestamp") and not c.nullable and c.name not in ("loaded_at", "updated_at"):
            return c.name
    raise OutageError(f"{contract.table} has no date or timestamp column to date its rows by")


def _file(drop_dir: Path, contract: Contract) -> Path:
    found = sorted(drop_dir.glob(contract.files))
    if not found:
        raise OutageError(f"{contract.table}: no file matching {contract.files} in {drop_dir}")
    return found[0]


def inject_outage(
    drop_dir: Path,
    defects: Sequence[Defect],
    contracts: ContractSet | None = None,
    time_columns: dict[str, str] | None = None,
) -> list[InjectedDefect]:
    """Apply `defects` to the drop at `drop_dir` (a copy) and write their truth to `_truth/outage.json`.

    `time_columns`: the column that dates each table's rows (default: its first non-nullable date column).
    """
    drop_dir = Path(drop_dir)
    contracts = contracts or load_contracts()
    injected: list[InjectedDefect] = []
    for table in dict.fromkeys(d.table for d in defects):
        try:
            contract = contracts.get(table)
        except KeyError:
            raise OutageError(f"no contract for table {table}") from None
        path = _file(drop_dir, contract)
        frame = _read(path, contract)
        schema = pq.read_schema(path).remove_metadata() if contract.format == "parquet" else None
        tcol = _time_rule(contract, (time_columns or {}).get(table))
        days = _days(frame, contract, tcol)
        rel = str(path.relative_to(drop_dir))
        for d in (d for d in defects if d.table == table):
            if isinstance(d, MissingDay):
                hit = days == pd.Timestamp(d.day)
                if not hit.any():
                    raise OutageError(f"{table} has no rows dated {d.day} to remove")
                frame, days = frame[~hit], days[~hit]
                injected.append(InjectedDefect("missing_day", table, None, d.day, d.day, int(hit.sum()), rel))
            elif isinstance(d, EmptyColumn):
                rule = next((c for c in contract.columns if c.name == d.column), None)
                if rule is None:
                    raise OutageError(f"{table} has no column {d.column}")
                hit = days >= pd.Timestamp(d.start)
                if not hit.any():
                    raise OutageError(f"{table} has no rows dated {d.start} or later")
                frame = frame.copy()
                frame.loc[hit, rule.source_name] = None if contract.format == "parquet" else ""
                last = days[hit].max().date()
                injected.append(InjectedDefect("empty_column", table, d.column, d.start, last, int(hit.sum()), rel))
            else:
                hit = days == pd.Timestamp(d.day)
                if not hit.any() or d.factor < 2:
                    raise OutageError(f"{table}: no rows dated {d.day} to repeat, or a factor below 2")
                key = [next(c.source_name for c in contract.columns if c.name == k) for k in contract.key]
                copies = []
                for n in range(1, d.factor):
                    extra = frame[hit].copy()
                    for k in key:
                        extra[k] = extra[k].astype(str) + f"-R{n}"
                    copies.append(extra)
                added = pd.concat(copies)
                frame = pd.concat([frame, added], ignore_index=True)
                days = pd.concat([days, days[hit].repeat(d.factor - 1)], ignore_index=True)
                injected.append(InjectedDefect("volume_spike", table, None, d.day, d.day, len(added), rel))
        _write(frame, path, contract, schema)
    _record(drop_dir, injected)
    return injected


def _record(drop_dir: Path, injected: list[InjectedDefect]) -> None:
    """The outage's truth, and the drop's manifest brought up to date with the files' new digests."""
    truth = drop_dir / OUTAGE_TRUTH
    truth.parent.mkdir(parents=True, exist_ok=True)
    truth.write_text(json.dumps([i.to_dict() for i in injected], indent=2) + "\n", encoding="utf-8")
    manifest = drop_dir / "manifest.json"
    if not manifest.is_file():
        return
    data = json.loads(manifest.read_text(encoding="utf-8"))
    for entry in (data.get("files") or {}).values():
        path = drop_dir / entry.get("path", "")
        if path.is_file() and any(i.file == entry.get("path") for i in injected):
            entry["sha256"] = file_digest(path)
    data["outage"] = [i.to_dict() for i in injected]
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_outage_truth(drop_dir: Path) -> list[InjectedDefect]:
    """The defects `inject_outage` recorded in a drop."""
    items = json.loads((Path(drop_dir) / OUTAGE_TRUTH).read_text(encoding="utf-8"))
    return [
        InjectedDefect(
            i["kind"],
            i["table"],
            i["column"],
            dt.date.fromisoformat(i["day"]),
            dt.date.fromisoformat(i["until"]),
            int(i["rows"]),
            i["file"],
        )  # fmt: skip
        for i in items
    ]
