"""Ingestion's I/O: read a drop, stage checked tables, land them in the lake in one step.

Layout under the custintel home::

    lake/_manifest.json                              the committed partitions; the last landing's report
    lake/<table>/drop=<drop_id>/data.parquet         accepted rows, typed, with lineage columns
    quarantine/<table>/drop=<drop_id>/issues-*.parquet every failed check: row, field, reason, value
    quarantine/<table>/drop=<drop_id>/rows-*.parquet   rejected rows exactly as read (one file per source file)
    quarantine/<table>/drop=<drop_id>/duplicates.parquet later copies of a key, typed
    reports/ingest/<drop_id>.json                    counts per table (read = accepted + quarantined + suppressed)

A drop is identified by the content of its files, so ingesting the same drop
again gives byte-identical partitions (idempotent). Landing is atomic for
readers: every table is checked and staged first, the staged partitions are
moved into the lake under folder names no committed partition uses, and one
atomic replace of `lake/_manifest.json` commits them all, with the landing's
report. Readers resolve partitions only through the manifest, so they see the
lake before the landing or after it, never a mix. A landing killed at any point
is finished or undone by the next ingestion (`recover_lake`): staging and
partitions the manifest does not name are removed, and a committed landing's
report is written if it was not. A drop that fails (unreadable file, missing
column) leaves the lake exactly as it was.

Rows of a person on the suppression list (`features.suppression`: erased, never to come
back) are neither landed nor quarantined (quarantine would keep them): they are counted as
`suppressed`, with their issues left out.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import filecmp
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from custintel.atomic_files import write_text_atomically
from custintel.file_lock import exclusive_lock
from custintel.json_lines import json_lines
from custintel.settings import Settings
from custintel.sql import text as sql_text
from custintel.sql import text_list as sql_text_list
from features.contracts import WHITESPACE, Contract, ContractSet, load_contracts
from features.ingest import (
    ISSUE_SCHEMA,
    ROW,
    SQL_TYPES,
    BatchResult,
    ContractViolation,
    ValidationContext,
    check_columns,
    validate_batch,
)
from features.person_links import PersonColumns, person_columns
from features.suppression import Suppression, load_suppression, suppressed_rows

CSV_BYTES_PER_ROW = 64  # a generous guess, to turn a row budget into pyarrow's block size
MANIFEST = "_manifest.json"
INGEST_LOG = "_ingest_log.jsonl"
# Fault tests: the landing step named here prints PAUSE_MARKER and the step to stderr, then waits to be killed.
PAUSE_ENV = "CUSTINTEL_TEST_PAUSE_AT"
PAUSE_MARKER = "custintel-ingest-paused-at"
ProgressFn = Callable[[str, int], None]


class IngestError(RuntimeError):
    """A drop cannot be ingested; the message names the table, file and reason."""


@dataclass
class TableReport:
    """What happened to one table of a drop."""

    table: str
    files: list[str] = field(default_factory=list)
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    suppressed: int = 0  # rows of people on the suppression list: neither landed nor quarantined
    nulled_values: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def reconciles(self) -> bool:
        """Every row read was accepted, quarantined or suppressed."""
        return self.read == self.accepted + self.quarantined + self.suppressed


@dataclass
class IngestionReport:
    """The outcome of one ingestion, stored as JSON beside the lake."""

    drop_id: str
    drop_dir: str
    as_of: str
    ingested_at: str
    contracts_digest: str
    replaced_existing: bool
    tables: dict[str, TableReport] = field(default_factory=dict)
    landing_id: str = ""

    @property
    def reconciles(self) -> bool:
        """Counts reconcile for every table."""
        return all(t.reconciles for t in self.tables.values())

    @property
    def warnings(self) -> list[str]:
        """Every table's warnings (an empty file, for one), each naming its table."""
        return [f"{name}: {w}" for name, t in self.tables.items() for w in t.warnings]

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> IngestionReport:
        """The report from its JSON form."""
        fields = dict(data)
        tables = fields.pop("tables", {})
        assert isinstance(tables, dict)
        report = cls(**fields)  # type: ignore[arg-type]
        report.tables = {name: TableReport(**t) for name, t in tables.items()}
        return report


def file_digest(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resolve_files(drop_dir: Path, contracts: ContractSet) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for c in contracts.ordered():
        found = sorted(p for p in drop_dir.glob(c.files) if p.is_file())
        if not found and c.required:
            raise IngestError(f"{c.table}: no file matching '{c.files}' in {drop_dir}")
        files[c.table] = found
    return files


def export_time(drop_dir: Path, export_date: dt.date | None = None) -> dt.datetime:
    """When the drop's data was exported: `export_date` when given, else the drop's `manifest.json`.

    Never a file's modification time: that is when the copy was made, and a label window would
    then count as observed up to that day. Checked before anything slow starts.
    """
    if export_date is not None:
        return dt.datetime.combine(export_date, dt.time()) if not isinstance(export_date, dt.datetime) else export_date
    manifest = Path(drop_dir) / "manifest.json"
    if manifest.is_file():
        try:
            export = json.loads(manifest.read_text()).get("export_date")
            if export:
                return dt.datetime.fromisoformat(export).replace(tzinfo=None)
        except (ValueError, TypeError, AttributeError) as exc:
            raise IngestError(f"{manifest}: export_date is not readable: {exc}") from exc
    raise IngestError(
        f"{drop_dir}: when was this data exported? Give --export-date YYYY-MM-DD, or put "
        '{"export_date": "YYYY-MM-DD"} in the drop\'s manifest.json (files\' modification times are not used: '
        "they say when the copy was made)"
    )


def _drop_identity(
    drop_dir: Path, files: dict[str, list[Path]], export_date: dt.date | None = None
) -> tuple[str, dt.datetime]:
    """Content-derived id, and the drop's export time (`export_time`)."""
    h = hashlib.sha256()
    every = sorted({p for ps in files.values() for p in ps})
    for p in every:
        h.update(str(p.relative_to(drop_dir)).encode())
        h.update(file_digest(p).encode())
    as_of = export_time(drop_dir, export_date)
    return f"{as_of:%Y%m%d}-{h.hexdigest()[:16]}", as_of


def _records(f: TextIO, contract: Contract) -> Iterator[list[str]]:
    """A text file's records: CSV with the contract's separator, or fields split on runs of whitespace."""
    if contract.sep == WHITESPACE:
        return (line.split() for line in f)
    return csv.reader(f, delimiter=contract.sep)


def _csv_header(path: Path, contract: Contract) -> list[str]:
    if not contract.header:
        return [c.source_name for c in contract.columns]
    try:
        with open(path, newline="", encoding=contract.encoding) as f:
            header = next(_records(f, contract), None)
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"{contract.table}: cannot read {path.name}: {exc}") from exc
    if not header:
        raise IngestError(f"{contract.table}: {path.name} is empty (no header row)")
    # Spreadsheet exports often start with a byte-order mark; it is not part of the first name.
    return [h.strip().lstrip("\ufeff") for h in header]


def _file_schema(path: Path, contract: Contract) -> pa.Schema:
    if contract.format == "csv":
        return pa.schema([(n, pa.string()) for n in _csv_header(path, contract)])
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise IngestError(f"{contract.table}: cannot read {path.name} as Parquet: {exc}") from exc


@dataclass
class _BadRows:
    rows: list[tuple[int, str]] = field(default_factory=list)


class _BadShape(Exception):
    """The fast CSV parser met a row with the wrong number of fields."""


def _fast_csv_batches(path: Path, contract: Contract, names: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """Read with the multi-threaded pyarrow CSV reader; raise _BadShape at the first malformed row.

    pyarrow can skip such rows but cannot say where they were, and every later row's
    number would shift; the caller then re-reads the file with the exact reader.
    """
    seen_bad: list[bool] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        seen_bad.append(True)
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(
            block_size=min(64 << 20, max(1 << 20, batch_rows * CSV_BYTES_PER_ROW)),
            encoding=contract.encoding,
            column_names=names,
            skip_rows=1 if contract.header else 0,
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=contract.sep, newlines_in_values=True, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True, null_values=[""]
        ),
    )
    for rb in reader:
        if seen_bad:
            raise _BadShape
        yield pa.Table.from_batches([rb])


def _exact_csv_batches(
    path: Path, contract: Contract, names: list[str], batch_rows: int, bad: _BadRows
) -> Iterator[tuple[pa.Table, list[int]]]:
    """Python's csv reader: slower, but it numbers every record, malformed ones included."""
    csv.field_size_limit(16 << 20)
    with open(path, newline="", encoding=contract.encoding) as f:
        reader = _records(f, contract)
        if contract.header:
            next(reader, None)
        cols: list[list[str | None]] = [[] for _ in names]
        numbers: list[int] = []
        k = 0
        for rec in reader:
            if not rec:  # blank lines are not records, as for pyarrow
                continue
            k += 1
            if len(rec) != len(names):
                text = (" " if contract.sep == WHITESPACE else contract.sep).join(rec)[:500]
                bad.rows.append((k, f"row has {len(rec)} fields, expected {len(names)}: {text}"))
                continue
            for j, v in enumerate(rec):
                cols[j].append(v if v != "" else None)
            numbers.append(k)
            if len(numbers) >= batch_rows:
                yield pa.table({n: pa.array(c, pa.string()) for n, c in zip(names, cols, strict=True)}), numbers
                cols, numbers = [[] for _ in names], []
        if numbers:
            yield pa.table({n: pa.array(c, pa.string()) for n, c in zip(names, cols, strict=True)}), numbers


def _raw_batches(path: Path, contract: Contract, bad: _BadRows, batch_rows: int, exact: bool) -> Iterator[pa.Table]:
    """Raw rows as Arrow tables with their record numbers; CSV values stay text for the contract to judge."""
    try:
        if contract.format == "parquet":
            first = 1
            for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([rb]).append_column(
                    ROW, pa.array(range(first, first + rb.num_rows), pa.int64())
                )
                first += rb.num_rows
            return
        names = _csv_header(path, contract)
        if exact or contract.sep == WHITESPACE:  # pyarrow splits on one character only
            for table, numbers in _exact_csv_batches(path, contract, names, batch_rows, bad):
                yield table.append_column(ROW, pa.array(numbers, pa.int64()))
            return
        first = 1
        for table in _fast_csv_batches(path, contract, names, batch_rows):
            yield table.append_column(ROW, pa.array(range(first, first + table.num_rows), pa.int64()))
            first += table.num_rows
    except (OSError, pa.ArrowException, UnicodeDecodeError, csv.Error) as exc:
        raise IngestError(f"{contract.table}: cannot read {path.name}: {exc}") from exc


class _Writer:
    """A lazily opened Parquet writer."""

    def __init__(self, path: Path, compression: str = "zstd") -> None:
        self.path = path
        self.compression = compression
        self.rows = 0
        self._w: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0 and self._w is not None:
            return
        if self._w is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._w = pq.ParquetWriter(self.path, table.schema, compression=self.compression)
        self._w.write_table(table.cast(self._w.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


def _partition(root: Path, table: str, drop_id: str) -> Path:
    """The folder of one table's partition for one drop, under the lake, quarantine or staging root."""
    return root / table / f"drop={drop_id}"


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.sql(sql).fetchall()[0][0])


def _with_file(table: pa.Table, rel: str) -> pa.Table:
    return table.append_column("_source_file", pa.array([rel] * table.num_rows, pa.string()))


@dataclass
class _FileOutputs:
    """Where one source file's checked rows, rejected rows and issues are staged."""

    checked: _Writer
    rejected: _Writer
    issues: _Writer

    def close(self) -> None:
        for w in (self.checked, self.rejected, self.issues):
            w.close()

    def discard(self) -> None:
        self.close()
        for w in (self.checked, self.rejected, self.issues):
            w.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Suppressor:
    """Which rows of one table belong to people on the suppression list."""

    suppression: Suppression
    columns: PersonColumns  # lake column names
    source_names: dict[str, str]  # lake column name -> the source file's name for it
    sep: str

    def _matched(self, frame: pd.DataFrame) -> pd.Series:
        c = self.columns
        names = (c.first_name, c.last_name, c.birth_date)
        return suppressed_rows(
            frame,
            self.suppression,
            links=c.links,
            emails=c.emails,
            phones=c.phones,
            names=names if all(names) else None,  # type: ignore[arg-type]
            full_name=(c.full_name, c.birth_date) if c.full_name and c.birth_date else None,
            customer_keys=(),
        )

    def _used(self) -> list[str]:
        c = self.columns
        named = [c.first_name, c.last_name, c.full_name, c.birth_date]
        return sorted({*c.links, *c.emails, *c.phones, *(n for n in named if n)})

    def row_numbers(self, result: BatchResult) -> set[int]:
        """Row numbers of the batch's suppressed rows: accepted ones by their typed values, rejected by raw."""
        used = self._used()
        found: set[int] = set()
        for table, rename in ((result.accepted, {}), (result.rejected, self.source_names)):
            if table.num_rows == 0:
                continue
            names = {rename.get(n, n): n for n in used}
            present = [src for src in names if src in table.column_names]
            frame = table.select([*present, ROW]).to_pandas().rename(columns=names)
            found |= set(frame.loc[self._matched(frame).to_numpy(), ROW].astype(int))
        return found

    def bad_row(self, text: str) -> bool:
        """A row the parser could not split: any of its fields an identifier of a suppressed person."""
        fields = [f.strip().strip('"') for f in (text.split() if self.sep == WHITESPACE else text.split(self.sep))]
        values = pd.Series([f for f in fields if f], dtype="string")
        if values.empty:
            return False
        frame = pd.DataFrame({"email": values, "phone": values, **{f"id:{t}": values for t in self.links_to()}})
        matched = suppressed_rows(frame, self.suppression, links={f"id:{t}": t for t in self.links_to()})
        return bool(matched.any())

    def links_to(self) -> list[str]:
        """The identity record tables this table's rows refer to."""
        return sorted(set(self.columns.links.values()))


def _suppressors(settings: Settings, contracts: ContractSet) -> dict[str, _Suppressor]:
    """A suppressor per table that says whose rows it holds; none at all while the list is empty."""
    suppression = load_suppression(settings)
    if not suppression:
        return {}
    tables = {c.table: [r.name for r in c.columns] for c in contracts.contracts}
    found = person_columns(settings, tables)
    out = {}
    for c in contracts.contracts:
        if not found[c.table].empty:
            out[c.table] = _Suppressor(suppression, found[c.table], {r.name: r.source_name for r in c.columns}, c.sep)
    return out


def _without_rows(table: pa.Table, column: str, rows: set[int]) -> pa.Table:
    if not rows or table.num_rows == 0:
        return table
    return table.filter(pc.invert(pc.is_in(table.column(column), pa.array(sorted(rows), pa.int64()))))


def _ingest_file(
    con: duckdb.DuckDBPyConnection,
    contract: Contract,
    path: Path,
    rel: str,
    out: _FileOutputs,
    ctx: ValidationContext,
    batch_rows: int,
    exact: bool,
    on_rows: Callable[[int], None],
    suppressor: _Suppressor | None = None,
) -> tuple[int, int, int]:
    """Check one file; return (rows read, rows quarantined, rows suppressed)."""
    bad = _BadRows()
    read = quarantined = suppressed = 0
    for raw in _raw_batches(path, contract, bad, batch_rows, exact):
        res = validate_batch(con, raw, contract, ctx)
        if suppressor is not None:
            gone = suppressor.row_numbers(res)
            if gone:
                res = BatchResult(
                    _without_rows(res.accepted, ROW, gone),
                    _without_rows(res.rejected, ROW, gone),
                    _without_rows(res.issues, "row_number", gone),
                )
                suppressed += len(gone)
        out.checked.write(_with_file(res.accepted, rel))
        out.rejected.write(_with_file(res.rejected, rel))
        out.issues.write(_with_file(res.issues, rel))
        read += raw.num_rows
        quarantined += res.rejected.num_rows
        on_rows(raw.num_rows)
    if suppressor is not None and bad.rows:
        kept = [(k, m) for k, m in bad.rows if not suppressor.bad_row(m.partition(": ")[2])]
        suppressed += len(bad.rows) - len(kept)
        read += len(bad.rows) - len(kept)
        bad.rows = kept
    if bad.rows:  # rows the CSV parser could not even split into fields
        out.issues.write(
            _with_file(
                pa.table(
                    {
                        "row_number": [r for r, _ in bad.rows],
                        "field": ["<row>"] * len(bad.rows),
                        "check": ["bad_row_shape"] * len(bad.rows),
                        "reason": [m for _, m in bad.rows],
                        "value": [None] * len(bad.rows),
                        "action": ["rejected"] * len(bad.rows),
                    },
                    schema=ISSUE_SCHEMA,
                ),
                rel,
            )
        )
        read += len(bad.rows)
        quarantined += len(bad.rows)
    return read, quarantined, suppressed


def _ingest_table(
    con: duckdb.DuckDBPyConnection,
    contract: Contract,
    files: list[Path],
    drop_dir: Path,
    stage: Path,
    drop_id: str,
    ctx: ValidationContext,
    report: TableReport,
    progress: ProgressFn | None,
    batch_rows: int,
    suppressor: _Suppressor | None = None,
) -> None:
    lake_part = _partition(stage / "lake", contract.table, drop_id)
    q_part = _partition(stage / "quarantine", contract.table, drop_id)
    work = stage / "work" / contract.table
    done = [0]

    def on_rows(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(contract.table, done[0])

    for i, path in enumerate(files):
        rel = str(path.relative_to(drop_dir))
        report.files.append(rel)

        def outputs(i: int = i) -> _FileOutputs:
            return _FileOutputs(
                _Writer(work / f"checked-{i}.parquet", compression="none"),  # read once, then deleted
                _Writer(q_part / f"rows-{i}.parquet"),
                _Writer(q_part / f"issues-{i}.parquet"),
            )

        out = outputs()
        before = done[0]
        try:
            read, quarantined, suppressed = _ingest_file(
                con, contract, path, rel, out, ctx, batch_rows, False, on_rows, suppressor
            )
        except _BadShape:
            out.discard()
            done[0] = before
            out = outputs()
            read, quarantined, suppressed = _ingest_file(
                con, contract, path, rel, out, ctx, batch_rows, True, on_rows, suppressor
            )
        if read == 0:  # a header and nothing else is readable, but rarely what the sender meant
            warning = f"{rel} has no rows" + (" (a header only)" if contract.format == "csv" else "")
            report.warnings.append(warning)
            out.issues.write(_with_file(_warning_issue("<file>", "empty_file", warning), rel))
        out.close()
        report.read += read
        report.quarantined += quarantined
        report.suppressed += suppressed
    _drop_duplicate_keys(con, contract, work, lake_part, q_part, drop_id, ctx, report)
    issue_glob = f"{q_part}/issues-*.parquet"
    if list(q_part.glob("issues-*.parquet")):
        counts = con.sql(
            f"SELECT field || ': ' || \"check\" AS k, count(*) AS n FROM read_parquet({sql_text(issue_glob)}) "
            "GROUP BY ALL ORDER BY n DESC, k"
        ).fetchall()
        report.reasons = {str(k): int(n) for k, n in counts}
        report.nulled_values = _scalar(
            con, f"SELECT count(*) FROM read_parquet({sql_text(issue_glob)}) WHERE action = 'nulled'"
        )


def _warning_issue(field_name: str, check: str, reason: str) -> pa.Table:
    """One issue that quarantines nothing: the data is kept, the reader is warned."""
    return pa.table(
        {
            "row_number": [0],
            "field": [field_name],
            "check": [check],
            "reason": [reason],
            "value": [None],
            "action": ["warning"],
        },
        schema=ISSUE_SCHEMA,
    )


def _drop_duplicate_keys(
    con: duckdb.DuckDBPyConnection,
    contract: Contract,
    work: Path,
    lake_part: Path,
    q_part: Path,
    drop_id: str,
    ctx: ValidationContext,
    report: TableReport,
) -> None:
    """Keep the first row of each key; later rows with the same key go to quarantine."""
    lake_part.mkdir(parents=True, exist_ok=True)
    final = lake_part / "data.parquet"
    lineage = f"'{drop_id}' AS _drop_id, TIMESTAMP '{ctx.as_of:%Y-%m-%d %H:%M:%S}' AS _drop_as_of"
    checked = sorted(work.glob("checked-*.parquet"))
    src = f"read_parquet({sql_text(f'{work}/checked-*.parquet')}, union_by_name = true)"
    if not checked or _scalar(con, f"SELECT count(*) FROM {src}") == 0:
        cols = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in _lake_types(contract))
        con.execute(
            f"COPY (SELECT {cols}, CAST(NULL AS BIGINT) AS {ROW}, CAST(NULL AS VARCHAR) AS _source_file, "
            f"{lineage} LIMIT 0) TO {sql_text(final)} (FORMAT parquet)"
        )
        return
    dups = 0
    if contract.key:
        key = ", ".join(f'"{k}"' for k in contract.key)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE dup_rows AS
            WITH dk AS (SELECT {key} FROM {src} GROUP BY ALL HAVING count(*) > 1),
            r AS (SELECT s.*, row_number() OVER (PARTITION BY {", ".join("s." + f'"{k}"' for k in contract.key)}
                                                ORDER BY s._source_file, s.{ROW}) AS nth,
                         first_value(s.{ROW}) OVER (PARTITION BY {", ".join("s." + f'"{k}"' for k in contract.key)}
                                                    ORDER BY s._source_file, s.{ROW}) AS first_row
                  FROM {src} s SEMI JOIN dk USING ({key}))
            SELECT * FROM r WHERE nth > 1""")
        dups = _scalar(con, "SELECT count(*) FROM dup_rows")
    if dups:
        issues_file = sql_text(q_part / "issues-duplicates.parquet")
        key_text = " || ', ' || ".join(f"'{k}=' || CAST(\"{k}\" AS VARCHAR)" for k in contract.key)
        con.execute(f"""
            COPY (SELECT {ROW} AS row_number, '{",".join(contract.key)}' AS field, 'duplicate_key' AS "check",
                   'duplicate key (' || {key_text} || '), first seen at row ' || CAST(first_row AS VARCHAR)
                     AS reason,
                   {key_text} AS value, 'rejected' AS action, _source_file
            FROM dup_rows ORDER BY _source_file, {ROW}) TO {issues_file} (FORMAT parquet)""")
        con.execute(
            f"COPY (SELECT * EXCLUDE (nth, first_row) FROM dup_rows ORDER BY _source_file, {ROW}) "
            f"TO {sql_text(q_part / 'duplicates.parquet')} (FORMAT parquet)"
        )
        con.execute(
            # A parallel join emits rows in no fixed order: sort, so the same drop gives the same bytes.
            f"COPY (SELECT s.*, {lineage} FROM {src} s ANTI JOIN dup_rows d USING (_source_file, {ROW}) "
            f"ORDER BY s._source_file, s.{ROW}) TO {sql_text(final)} (FORMAT parquet, COMPRESSION zstd)"
        )
    else:
        con.execute(f"COPY (SELECT *, {lineage} FROM {src}) TO {sql_text(final)} (FORMAT parquet, COMPRESSION zstd)")
    report.quarantined += dups
    report.accepted = _scalar(con, f"SELECT count(*) FROM read_parquet({sql_text(final)})")


def _lake_types(contract: Contract) -> list[tuple[str, str]]:
    return [(c.name, SQL_TYPES[c.type]) for c in contract.columns]


# --------------------------------------------------------------------------------------------
# The manifest: the one file that says which partitions are committed


@dataclass
class Partition:
    """One drop's committed partition of a table: its folder names under lake/<table>/ and quarantine/<table>/."""

    drop_id: str
    lake: str
    quarantine: str | None = None


@dataclass
class LakeManifest:
    """Every table's committed partitions and the last landing's report; replaced atomically, never edited."""

    generation: int = 0
    committed_at: str = ""
    tables: dict[str, list[Partition]] = field(default_factory=dict)
    landing: dict[str, object] | None = None
    # each table's contract as its newest drop was landed under: later steps read the table by it
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def partition(self, table: str, drop_id: str) -> Partition | None:
        """A table's committed partition of a drop, if there is one."""
        return next((p for p in self.tables.get(table, []) if p.drop_id == drop_id), None)

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LakeManifest:
        """The manifest from its JSON form."""
        data = json.loads(text)
        return cls(
            generation=int(data["generation"]),
            committed_at=str(data["committed_at"]),
            tables={t: [Partition(**p) for p in parts] for t, parts in data["tables"].items()},
            landing=data.get("landing"),
            contracts=dict(data.get("contracts") or {}),
        )


def _legacy_manifest(settings: Settings) -> LakeManifest:
    """A lake written before manifests existed: every `drop=*/data.parquet` counts as committed.

    Folders the old in-place swap left behind when killed (`drop=<id>.old-<hex>`) are not partitions.
    """
    tables: dict[str, list[Partition]] = {}
    if settings.lake_dir.is_dir():
        for data in sorted(settings.lake_dir.glob("*/drop=*/data.parquet")):
            folder = data.parent
            if ".old-" in folder.name:
                continue
            quarantine = settings.quarantine_dir / folder.parent.name / folder.name
            tables.setdefault(folder.parent.name, []).append(
                Partition(folder.name.split("=", 1)[1], folder.name, folder.name if quarantine.is_dir() else None)
            )
    return LakeManifest(tables=tables)


def read_manifest(settings: Settings) -> LakeManifest:
    """The lake's committed state (for a lake older than manifests, what its folders hold)."""
    path = settings.lake_dir / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _legacy_manifest(settings)
    try:
        return LakeManifest.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise IngestError(f"{path} is not a readable lake manifest: {exc}") from exc


def lake_files(settings: Settings, table: str | None = None, manifest: LakeManifest | None = None) -> list[Path]:
    """The committed `data.parquet` files of a table (of every table without one): what readers must read.

    `manifest`: one already read, so that files and contract come from the same landing.
    """
    manifest = manifest or read_manifest(settings)
    tables = [table] if table is not None else sorted(manifest.tables)
    return [settings.lake_dir / t / p.lake / "data.parquet" for t in tables for p in manifest.tables.get(t, [])]


def quarantine_partitions(settings: Settings, table: str) -> list[tuple[str, Path]]:
    """(drop id, folder) of a table's committed quarantine partitions."""
    manifest = read_manifest(settings)
    return [
        (p.drop_id, settings.quarantine_dir / table / p.quarantine)
        for p in manifest.tables.get(table, [])
        if p.quarantine is not None
    ]


def _pause(step: str) -> None:
    """Fault-test hook: at the step named by $CUSTINTEL_TEST_PAUSE_AT, say so on stderr and wait to be killed."""
    if os.environ.get(PAUSE_ENV) != step:
        return
    sys.stderr.write(f"{PAUSE_MARKER} {step}\n")
    sys.stderr.flush()
    while True:
        time.sleep(60)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush a staged folder's files to disk, so a committed partition survives a power loss too."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _write_manifest(settings: Settings, manifest: LakeManifest) -> None:
    """The commit point: write beside, flush, and replace the manifest in one step."""
    settings.lake_dir.mkdir(parents=True, exist_ok=True)
    path = settings.lake_dir / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    _pause("flipping")
    os.replace(tmp, path)
    _fsync_dir(settings.lake_dir)


@contextlib.contextmanager
def _landing_lock(settings: Settings) -> Iterator[None]:
    """One landing or recovery at a time per home (the kernel drops the lock when its process dies)."""
    with exclusive_lock(settings.home_dir / ".ingest.lock"):
        yield


def lake_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Hold the home's landing lock: no ingestion lands or recovers meanwhile (an erasure rewrites partitions)."""
    return _landing_lock(settings)


def _remove_unreferenced(settings: Settings, manifest: LakeManifest) -> list[str]:
    """Delete partition folders the manifest does not name: replaced versions, or a landing that never committed."""
    removed = []
    for root, area in ((settings.lake_dir, "lake"), (settings.quarantine_dir, "quarantine")):
        if not root.is_dir():
            continue
        for table_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            parts = manifest.tables.get(table_dir.name, [])
            keep = {p.lake for p in parts} if area == "lake" else {p.quarantine for p in parts}
            for folder in sorted(table_dir.glob("drop=*")):
                if folder.name not in keep:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(f"{area}/{table_dir.name}/{folder.name}")
    return removed


def _logged_landings(log: Path) -> set[str]:
    ids = set()
    if log.is_file():
        for line in json_lines(log):
            with contextlib.suppress(ValueError, AttributeError):
                ids.add(str(json.loads(line).get("landing_id", "")))
    return ids


def _publish_report(settings: Settings, landing: dict[str, object]) -> list[str]:
    """Write a committed landing's report and its `_ingest_log.jsonl` line, unless they already are."""
    report = IngestionReport.from_dict(landing)
    return _write_report(settings, report) + _log_landing(settings, report)


def _write_report(settings: Settings, report: IngestionReport) -> list[str]:
    done = []
    text = report.to_json() + "\n"
    out = settings.reports_dir / "ingest"
    out.mkdir(parents=True, exist_ok=True)
    for path in (out / f"{report.drop_id}.json", out / "latest.json"):
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text_atomically(path, text)
            done.append(f"wrote {path.relative_to(settings.home_dir)}")
    return done


def _log_landing(settings: Settings, report: IngestionReport) -> list[str]:
    done = []
    log = settings.lake_dir / INGEST_LOG
    if report.landing_id not in _logged_landings(log):
        line = {
            "drop_id": report.drop_id,
            "landing_id": report.landing_id,
            "ingested_at": report.ingested_at,
            "drop_dir": report.drop_dir,
            "replaced_existing": report.replaced_existing,
            "tables": {
                t: {"read": r.read, "accepted": r.accepted, "quarantined": r.quarantined}
                | ({"suppressed": r.suppressed} if r.suppressed else {})
                for t, r in report.tables.items()
            },
        }
        torn = log.is_file() and log.stat().st_size > 0 and not log.read_bytes().endswith(b"\n")
        with open(log, "a", encoding="utf-8") as f:
            f.write(("\n" if torn else "") + json.dumps(line, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        done.append(f"logged landing {report.landing_id}")
    return done


def _recover(settings: Settings) -> list[str]:
    """Finish or undo a landing that was killed (the landing lock is held)."""
    done = []
    staging = settings.home_dir / ".staging"
    if staging.is_dir():
        for leftover in sorted(staging.iterdir()):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            done.append(f"removed .staging/{leftover.name}")
    (settings.lake_dir / f".{MANIFEST}.tmp").unlink(missing_ok=True)
    if (settings.lake_dir / MANIFEST).is_file():
        manifest = read_manifest(settings)
    else:
        # Committed before anything new is moved into the lake, so that a new folder is never taken for
        # committed by the folder-globbing fallback.
        manifest = _legacy_manifest(settings)
        _write_manifest(settings, manifest)
        done.append(f"wrote the manifest of the existing lake ({sum(map(len, manifest.tables.values()))} partitions)")
    done += [f"removed {name}" for name in _remove_unreferenced(settings, manifest)]
    if manifest.landing is not None:
        done += _publish_report(settings, manifest.landing)
    return done


def recover_lake(settings: Settings) -> list[str]:
    """Bring a home's lake to a committed state after a killed ingestion; say what was done.

    Before the manifest was replaced the landing is undone (its staging and partitions removed), after it
    the landing is finished (replaced partitions removed, its report written). `ingest_drop` runs this first.
    """
    with _landing_lock(settings):
        return _recover(settings)


def _same_files(a: Path, b: Path) -> bool:
    names_a = sorted(p.name for p in a.iterdir())
    if not b.is_dir() or names_a != sorted(p.name for p in b.iterdir()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names_a)


def _place_folder(src: Path, table_root: Path, committed: str | None, drop_id: str) -> str:
    """Move a staged partition into the lake beside the committed one; return its folder name."""
    if committed is not None and _same_files(src, table_root / committed):
        return committed  # the same bytes (the same drop again): the committed folder stays
    name = f"drop={drop_id}"
    if (table_root / name).exists():  # the committed version keeps its folder until the manifest moves on
        name = f"drop={drop_id}.{uuid.uuid4().hex[:8]}"
    _fsync_tree(src)
    table_root.mkdir(parents=True, exist_ok=True)
    os.replace(src, table_root / name)
    _fsync_dir(table_root)
    return name


def _land(stage: Path, settings: Settings, report: IngestionReport, contracts: ContractSet | None = None) -> None:
    """Move the staged partitions in beside the committed ones, then commit them all with one manifest."""
    drop_id = report.drop_id
    old = read_manifest(settings)
    placed: dict[str, Partition] = {}
    moved: list[Path] = []
    try:
        for table in report.tables:
            lake_src = _partition(stage / "lake", table, drop_id)
            if not lake_src.is_dir():  # a skipped optional table
                continue
            current = old.partition(table, drop_id)
            lake = _place_folder(lake_src, settings.lake_dir / table, current.lake if current else None, drop_id)
            if current is None or lake != current.lake:
                moved.append(settings.lake_dir / table / lake)
            q_src = _partition(stage / "quarantine", table, drop_id)
            quarantine = None
            if q_src.is_dir():
                committed_q = current.quarantine if current else None
                quarantine = _place_folder(q_src, settings.quarantine_dir / table, committed_q, drop_id)
                if quarantine != committed_q:
                    moved.append(settings.quarantine_dir / table / quarantine)
            placed[table] = Partition(drop_id, lake, quarantine)
            _pause(f"placed:{table}")
        report.replaced_existing = any(old.partition(t, drop_id) is not None for t in placed)
        tables = {t: [p for p in parts if p.drop_id != drop_id or t not in placed] for t, parts in old.tables.items()}
        for table, part in placed.items():
            tables.setdefault(table, []).append(part)
        new = LakeManifest(
            generation=old.generation + 1,
            committed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            tables={t: sorted(parts, key=lambda p: p.drop_id) for t, parts in sorted(tables.items())},
            landing=asdict(report),
            contracts={
                **old.contracts,
                **(
                    {c.table: c.model_dump(mode="json") for c in contracts.contracts if c.table in placed}
                    if contracts is not None
                    else {}
                ),
            },  # fmt: skip
        )
        _write_manifest(settings, new)
    except BaseException:
        with contextlib.suppress(Exception):
            landing = read_manifest(settings).landing
            if landing is None or landing.get("landing_id") != report.landing_id:
                for folder in moved:  # never committed: nobody can have read them
                    shutil.rmtree(folder, ignore_errors=True)
        raise
    _pause("flipped")
    _remove_unreferenced(settings, new)
    _pause("cleaned")
    _write_report(settings, report)
    _pause("reported")
    _log_landing(settings, report)
    _pause("logged")


def ingest_drop(
    drop_dir: Path,
    settings: Settings,
    contracts: ContractSet | None = None,
    progress: ProgressFn | None = None,
    export_date: dt.date | None = None,
) -> IngestionReport:
    """Check every table of a drop against its contract and land it in the lake in one step."""
    drop_dir = Path(drop_dir).resolve()
    if not drop_dir.is_dir():
        raise IngestError(f"source folder {drop_dir} does not exist")
    contracts = contracts or load_contracts()
    files = _resolve_files(drop_dir, contracts)
    extra_columns: dict[str, list[str]] = {}
    for c in contracts.ordered():  # fail fast, before any work, on unreadable files and missing columns
        extra_columns[c.table] = []
        for p in files[c.table]:
            try:
                extra_columns[c.table] += check_columns(c, _file_schema(p, c), str(p.relative_to(drop_dir)))
            except ContractViolation as exc:
                raise IngestError(str(exc)) from exc
    drop_id, as_of = _drop_identity(drop_dir, files, export_date)
    digest = hashlib.sha256(contracts.model_dump_json().encode()).hexdigest()[:16]
    report = IngestionReport(
        drop_id=drop_id,
        drop_dir=str(drop_dir),
        as_of=as_of.isoformat(),
        ingested_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        contracts_digest=digest,
        replaced_existing=False,
        landing_id=uuid.uuid4().hex,
    )
    for c in contracts.ordered():
        report.tables[c.table] = TableReport(table=c.table, extra_columns=extra_columns[c.table])
    with _landing_lock(settings):
        _recover(settings)
        _pause("recovered")
        stage = settings.home_dir / ".staging" / f"{drop_id}-{report.landing_id[:8]}"
        try:
            _stage_tables(stage, drop_dir, files, contracts, settings, report, progress)
            _pause("staged")
            _land(stage, settings, report, contracts)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return report


def _stage_tables(
    stage: Path,
    drop_dir: Path,
    files: dict[str, list[Path]],
    contracts: ContractSet,
    settings: Settings,
    report: IngestionReport,
    progress: ProgressFn | None,
) -> None:
    """Check every table into the staging folder, referenced tables first."""
    stage.mkdir(parents=True)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET threads = 2")
        # DuckDB would otherwise take up to 80% of RAM for the duplicate-key pass over the largest
        # table; with a limit it spills to the staging folder instead, at about the same speed.
        con.execute(f"SET memory_limit = {sql_text(settings.ingest_memory_limit)}")
        con.execute(f"SET temp_directory = {sql_text(stage / 'spill')}")
        ctx = ValidationContext(as_of=dt.datetime.fromisoformat(report.as_of))
        suppressors = _suppressors(settings, contracts)
        for c in contracts.ordered():
            tr = report.tables[c.table]
            if not files[c.table]:
                tr.skipped = f"no file matching '{c.files}' (optional source)"
                continue
            _ingest_table(
                con, c, files[c.table], drop_dir, stage, report.drop_id, ctx, tr, progress, settings.ingest_batch_rows,
                suppressors.get(c.table),
            )  # fmt: skip
            if not tr.reconciles:
                raise IngestError(
                    f"{c.table}: counts do not reconcile: read {tr.read}, accepted {tr.accepted},"
                    f" quarantined {tr.quarantined}, suppressed {tr.suppressed}"
                )
            for other in contracts.contracts:
                for rule in other.columns:
                    if rule.references and rule.references.startswith(c.table + "."):
                        col = rule.references.split(".", 1)[1]
                        path = _partition(stage / "lake", c.table, report.drop_id) / "data.parquet"
                        ctx.reference_values[rule.references] = [
                            str(v[0])
                            for v in con.sql(
                                f'SELECT DISTINCT "{col}" FROM read_parquet({sql_text(path)}) '
                                f'WHERE "{col}" IS NOT NULL ORDER BY 1'
                            ).fetchall()
                        ]
            _pause(f"staged:{c.table}")
    finally:
        con.close()


def _read_parquet_sql(files: list[Path]) -> str:
    """`read_parquet` over an explicit list of files; folder names are not columns."""
    return f"read_parquet({sql_text_list(files)}, union_by_name = true, hive_partitioning = false)"


def lake_contract(settings: Settings, table: str, manifest: LakeManifest | None = None) -> Contract:
    """The contract a lake table was landed under (remembered in the manifest), else the shipped one.

    A drop ingested with `--contracts` is read by its own tables' names and keys in every later
    step, without the folder being given again.
    """
    remembered = (manifest or read_manifest(settings)).contracts.get(table)
    if remembered is not None:
        return Contract.model_validate(_classed(remembered))
    try:
        return load_contracts().get(table)
    except KeyError:
        raise IngestError(
            f"table {table} has no contract in {settings.lake_dir / MANIFEST} (ingest it again to record the "
            "contracts it was landed under) and none is shipped"
        ) from None


def _classed(remembered: dict[str, Any]) -> dict[str, Any]:
    """A contract remembered by a lake landed before columns had data classes, with the shipped contract's classes.

    A column the shipped contract does not class stays unclassed, so validation names it: ingest the
    table again under a contract that declares `class` on every column.
    """
    columns = remembered.get("columns")
    if not isinstance(columns, list) or all("data_class" in c or "class" in c for c in columns):
        return remembered
    try:
        shipped = {c.name: c.data_class for c in load_contracts().get(str(remembered.get("table"))).columns}
    except KeyError:
        shipped = {}
    filled = [c if "data_class" in c or c["name"] not in shipped else {**c, "data_class": shipped[c["name"]]}
              for c in columns]  # fmt: skip
    return {**remembered, "columns": filled}


def lake_table_sql(settings: Settings, table: str, contracts: ContractSet | None = None) -> str:
    """SQL for the current rows of a lake table: the newest drop's version of each key."""
    manifest = read_manifest(settings)  # read once: the files and the contract of the same landing
    files = lake_files(settings, table, manifest)
    if not files:
        raise IngestError(f"table {table} has not been ingested into {settings.lake_dir}")
    contract = contracts.get(table) if contracts is not None else lake_contract(settings, table, manifest)
    src = _read_parquet_sql(files)
    # One drop holds each key once (ingestion moves later copies to quarantine): nothing to pick.
    if not contract.key or len(files) <= 1:
        return f"SELECT * FROM {src}"
    key = ", ".join(f'"{k}"' for k in contract.key)
    return (
        f"SELECT * FROM {src} QUALIFY row_number() OVER (PARTITION BY {key} "
        f"ORDER BY _drop_as_of DESC, _drop_id DESC) = 1"
    )


def read_lake_table(
    settings: Settings, table: str, contracts: ContractSet | None = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """The current rows of a lake table as a data frame (only `columns`, when given)."""
    for attempt in range(3):
        sql = lake_table_sql(settings, table, contracts)
        if columns is not None:
            names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
            sql = f"SELECT {names} FROM ({sql})"
        try:
            with duckdb.connect() as con:
                return con.sql(sql).df()
        except duckdb.IOException:
            # A landing committed meanwhile and removed the version this read had resolved: resolve again.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def read_quarantine(settings: Settings, table: str) -> pd.DataFrame:
    """Every failed check recorded for a table, across its committed drops."""
    paths = [
        (d, p) for d, folder in quarantine_partitions(settings, table) for p in sorted(folder.glob("issues-*.parquet"))
    ]
    if not paths:
        return ISSUE_SCHEMA.empty_table().to_pandas()
    return pd.concat([pd.read_parquet(p).assign(drop=d) for d, p in paths], ignore_index=True)
