"""Ingestion's I/O: read a drop, stage checked tables, swap them into the lake.

Layout under the custintel home::

    lake/<table>/drop=<drop_id>/data.parquet         accepted rows, typed, with lineage columns
    quarantine/<table>/drop=<drop_id>/issues-*.parquet every failed check: row, field, reason, value
    quarantine/<table>/drop=<drop_id>/rows-*.parquet   rejected rows exactly as read (one file per source file)
    quarantine/<table>/drop=<drop_id>/duplicates.parquet later copies of a key, typed
    reports/ingest/<drop_id>.json                    counts per table (read = accepted + quarantined)

A drop is identified by the content of its files, so ingesting the same drop
again replaces its partitions with identical ones (idempotent), and nothing is
swapped in until every table of the drop has been read and checked: a drop that
fails (unreadable file, missing column) leaves the lake exactly as it was.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from custintel.settings import Settings
from features.contracts import Contract, ContractSet, load_contracts
from features.ingest import (
    ISSUE_SCHEMA,
    ROW,
    SQL_TYPES,
    ContractViolation,
    ValidationContext,
    check_columns,
    validate_batch,
)

CSV_BYTES_PER_ROW = 64  # a generous guess, to turn a row budget into pyarrow's block size
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
    nulled_values: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def reconciles(self) -> bool:
        """Every row read was either accepted or quarantined."""
        return self.read == self.accepted + self.quarantined


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

    @property
    def reconciles(self) -> bool:
        """Counts reconcile for every table."""
        return all(t.reconciles for t in self.tables.values())

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


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


def _drop_identity(drop_dir: Path, files: dict[str, list[Path]]) -> tuple[str, dt.datetime]:
    """Content-derived id, and the drop's export time (manifest, else newest file)."""
    h = hashlib.sha256()
    every = sorted({p for ps in files.values() for p in ps})
    for p in every:
        h.update(str(p.relative_to(drop_dir)).encode())
        h.update(file_digest(p).encode())
    manifest = drop_dir / "manifest.json"
    as_of: dt.datetime | None = None
    if manifest.is_file():
        try:
            export = json.loads(manifest.read_text()).get("export_date")
            as_of = dt.datetime.fromisoformat(export) if export else None
        except (ValueError, TypeError) as exc:
            raise IngestError(f"manifest.json in {drop_dir} is not readable: {exc}") from exc
    if as_of is None:
        newest = max((p.stat().st_mtime for p in every), default=0.0)
        as_of = dt.datetime.fromtimestamp(newest, dt.UTC).replace(tzinfo=None, microsecond=0)
    return f"{as_of:%Y%m%d}-{h.hexdigest()[:16]}", as_of


def _csv_header(path: Path, contract: Contract) -> list[str]:
    try:
        with open(path, newline="", encoding=contract.encoding) as f:
            header = next(csv.reader(f, delimiter=contract.sep), None)
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
            skip_rows=1,
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
        reader = csv.reader(f, delimiter=contract.sep)
        next(reader, None)
        cols: list[list[str | None]] = [[] for _ in names]
        numbers: list[int] = []
        k = 0
        for rec in reader:
            if not rec:  # blank lines are not records, as for pyarrow
                continue
            k += 1
            if len(rec) != len(names):
                text = contract.sep.join(rec)[:500]
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
        if exact:
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
) -> tuple[int, int]:
    """Check one file; return (rows read, rows quarantined)."""
    bad = _BadRows()
    read = quarantined = 0
    for raw in _raw_batches(path, contract, bad, batch_rows, exact):
        res = validate_batch(con, raw, contract, ctx)
        out.checked.write(_with_file(res.accepted, rel))
        out.rejected.write(_with_file(res.rejected, rel))
        out.issues.write(_with_file(res.issues, rel))
        read += raw.num_rows
        quarantined += res.rejected.num_rows
        on_rows(raw.num_rows)
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
    return read, quarantined


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
            read, quarantined = _ingest_file(con, contract, path, rel, out, ctx, batch_rows, False, on_rows)
        except _BadShape:
            out.discard()
            done[0] = before
            out = outputs()
            read, quarantined = _ingest_file(con, contract, path, rel, out, ctx, batch_rows, True, on_rows)
        out.close()
        report.read += read
        report.quarantined += quarantined
    _drop_duplicate_keys(con, contract, work, lake_part, q_part, drop_id, ctx, report)
    issue_glob = f"{q_part}/issues-*.parquet"
    if list(q_part.glob("issues-*.parquet")):
        counts = con.sql(
            f"SELECT field || ': ' || \"check\" AS k, count(*) AS n FROM read_parquet('{issue_glob}') "
            "GROUP BY ALL ORDER BY n DESC, k"
        ).fetchall()
        report.reasons = {str(k): int(n) for k, n in counts}
        report.nulled_values = _scalar(
            con, f"SELECT count(*) FROM read_parquet('{issue_glob}') WHERE action = 'nulled'"
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
    src = f"read_parquet('{work}/checked-*.parquet', union_by_name = true)"
    if not checked or _scalar(con, f"SELECT count(*) FROM {src}") == 0:
        cols = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in _lake_types(contract))
        con.execute(
            f"COPY (SELECT {cols}, CAST(NULL AS BIGINT) AS {ROW}, CAST(NULL AS VARCHAR) AS _source_file, "
            f"{lineage} LIMIT 0) TO '{final}' (FORMAT parquet)"
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
        key_text = " || ', ' || ".join(f"'{k}=' || CAST(\"{k}\" AS VARCHAR)" for k in contract.key)
        con.execute(f"""
            COPY (SELECT {ROW} AS row_number, '{",".join(contract.key)}' AS field, 'duplicate_key' AS "check",
                   'duplicate key (' || {key_text} || '), first seen at row ' || CAST(first_row AS VARCHAR)
                     AS reason,
                   {key_text} AS value, 'rejected' AS action, _source_file
            FROM dup_rows ORDER BY _source_file, {ROW}) TO '{q_part / "issues-duplicates.parquet"}' (FORMAT parquet)""")
        con.execute(
            f"COPY (SELECT * EXCLUDE (nth, first_row) FROM dup_rows ORDER BY _source_file, {ROW}) "
            f"TO '{q_part / 'duplicates.parquet'}' (FORMAT parquet)"
        )
        con.execute(
            f"COPY (SELECT s.*, {lineage} FROM {src} s ANTI JOIN dup_rows d USING (_source_file, {ROW})) "
            f"TO '{final}' (FORMAT parquet, COMPRESSION zstd)"
        )
    else:
        con.execute(f"COPY (SELECT *, {lineage} FROM {src}) TO '{final}' (FORMAT parquet, COMPRESSION zstd)")
    report.quarantined += dups
    report.accepted = _scalar(con, f"SELECT count(*) FROM read_parquet('{final}')")


def _lake_types(contract: Contract) -> list[tuple[str, str]]:
    return [(c.name, SQL_TYPES[c.type]) for c in contract.columns]


def _swap_in(stage: Path, settings: Settings, tables: list[str], drop_id: str) -> bool:
    """Move staged partitions into place; an existing partition of the same drop is replaced."""
    replaced = False
    for area, root in (("lake", settings.lake_dir), ("quarantine", settings.quarantine_dir)):
        for table in tables:
            src = _partition(stage / area, table, drop_id)
            if not src.exists():
                continue
            dst = _partition(root, table, drop_id)
            dst.parent.mkdir(parents=True, exist_ok=True)
            old = dst.with_name(dst.name + f".old-{uuid.uuid4().hex[:8]}")
            if dst.exists():
                replaced = True
                os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old, ignore_errors=True)
    return replaced


def ingest_drop(
    drop_dir: Path, settings: Settings, contracts: ContractSet | None = None, progress: ProgressFn | None = None
) -> IngestionReport:
    """Check every table of a drop against its contract and land it in the lake."""
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
    drop_id, as_of = _drop_identity(drop_dir, files)
    digest = hashlib.sha256(contracts.model_dump_json().encode()).hexdigest()[:16]
    report = IngestionReport(
        drop_id=drop_id,
        drop_dir=str(drop_dir),
        as_of=as_of.isoformat(),
        ingested_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        contracts_digest=digest,
        replaced_existing=False,
    )
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    stage = settings.home_dir / ".staging" / f"{drop_id}-{uuid.uuid4().hex[:8]}"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET threads = 2")
    # DuckDB would otherwise take up to 80% of RAM for the duplicate-key pass over the largest
    # table; with a limit it spills to the staging folder instead, at about the same speed.
    con.execute(f"SET memory_limit = '{settings.ingest_memory_limit}'")
    con.execute(f"SET temp_directory = '{stage / 'spill'}'")
    try:
        ctx = ValidationContext(as_of=as_of)
        for c in contracts.ordered():
            tr = TableReport(table=c.table, extra_columns=extra_columns[c.table])
            report.tables[c.table] = tr
            if not files[c.table]:
                tr.skipped = f"no file matching '{c.files}' (optional source)"
                continue
            _ingest_table(
                con, c, files[c.table], drop_dir, stage, drop_id, ctx, tr, progress, settings.ingest_batch_rows
            )
            if not tr.reconciles:
                raise IngestError(
                    f"{c.table}: counts do not reconcile: read {tr.read}, accepted {tr.accepted},"
                    f" quarantined {tr.quarantined}"
                )
            for other in contracts.contracts:
                for rule in other.columns:
                    if rule.references and rule.references.startswith(c.table + "."):
                        col = rule.references.split(".", 1)[1]
                        path = _partition(stage / "lake", c.table, drop_id) / "data.parquet"
                        ctx.reference_values[rule.references] = [
                            str(v[0])
                            for v in con.sql(
                                f"SELECT DISTINCT \"{col}\" FROM read_parquet('{path}') "
                                f'WHERE "{col}" IS NOT NULL ORDER BY 1'
                            ).fetchall()
                        ]
        report.replaced_existing = _swap_in(stage, settings, list(report.tables), drop_id)
    finally:
        con.close()
        shutil.rmtree(stage, ignore_errors=True)
    _write_report(settings, report)
    return report


def _write_report(settings: Settings, report: IngestionReport) -> None:
    out = settings.reports_dir / "ingest"
    out.mkdir(parents=True, exist_ok=True)
    text = report.to_json() + "\n"
    (out / f"{report.drop_id}.json").write_text(text)
    (out / "latest.json").write_text(text)
    settings.lake_dir.mkdir(parents=True, exist_ok=True)
    line = {
        "drop_id": report.drop_id,
        "ingested_at": report.ingested_at,
        "drop_dir": report.drop_dir,
        "replaced_existing": report.replaced_existing,
        "tables": {
            t: {"read": r.read, "accepted": r.accepted, "quarantined": r.quarantined} for t, r in report.tables.items()
        },
    }
    with open(settings.lake_dir / "_ingest_log.jsonl", "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")


def lake_table_sql(settings: Settings, table: str, contracts: ContractSet | None = None) -> str:
    """SQL for the current rows of a lake table: the newest drop's version of each key."""
    contract = (contracts or load_contracts()).get(table)
    glob = settings.lake_dir / table / "drop=*" / "data.parquet"
    src = f"read_parquet('{glob}', union_by_name = true)"
    # One drop holds each key once (ingestion moves later copies to quarantine): nothing to pick.
    if not contract.key or len(list(glob.parent.parent.glob("drop=*/data.parquet"))) <= 1:
        return f"SELECT * FROM {src}"
    key = ", ".join(f'"{k}"' for k in contract.key)
    return (
        f"SELECT * FROM {src} QUALIFY row_number() OVER (PARTITION BY {key} "
        f"ORDER BY _drop_as_of DESC, _drop_id DESC) = 1"
    )


def read_lake_table(settings: Settings, table: str, contracts: ContractSet | None = None) -> pd.DataFrame:
    """The current rows of a lake table as a data frame."""
    if not list((settings.lake_dir / table).glob("drop=*/data.parquet")):
        raise IngestError(f"table {table} has not been ingested into {settings.lake_dir}")
    with duckdb.connect() as con:
        return con.sql(lake_table_sql(settings, table, contracts)).df()


def read_quarantine(settings: Settings, table: str) -> pd.DataFrame:
    """Every failed check recorded for a table, across drops."""
    paths = sorted((settings.quarantine_dir / table).glob("drop=*/issues-*.parquet"))
    if not paths:
        return ISSUE_SCHEMA.empty_table().to_pandas()
    return pd.concat([pd.read_parquet(p).assign(drop=p.parent.name.split("=", 1)[1]) for p in paths], ignore_index=True)
