"""The feature side's personal stores: the lake, the quarantine, identity, the offline and online feature stores.

Each implements `custintel.personal.PersonalStore`: `find` returns what a place holds about
each subject (rows as JSON values, the place a file relative to the home), `erase` removes
the subjects' rows. Matching is by sets, for a whole batch of subjects at once: the subjects'
identifiers become small DuckDB tables, and each file is joined to them once per kind of
identifier (record ids, emails, phones, customer keys, raw values), never scanned per subject.
An erasure rewrites only files that hold a hit, once per batch, each atomically (a new file
beside, then a rename), removing the rows by their position in the file, so every other row
keeps its values and its order. Killed half-way, a rerun finishes the job; a second run
removes nothing.

An email or phone only matches a row of an identity source (the CRM, billing) when the
identity crosswalk does not give that row's record to another customer: a family's shared
email is not a reason to erase the other members' accounts.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from custintel.atomic_files import replace_atomically, write_text_atomically
from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from custintel.sql import text as sql_text
from features.identity.normalise import normalise_emails, normalise_phones
from features.lake import lake_lock, read_manifest
from features.person_links import PersonColumns, person_columns

_POS = "file_row_number"
_MIN_PHONE_DIGITS = 7
_WRITERS = 2  # files rewritten at once
_IDENTITY_FILES = ("records", "match_records", "links", "crosswalk", "golden_records", "conflicts", "key_events")
# SQL forms of the identity layer's normalisers (`features.identity.normalise`), close enough to
# compare a held value with a subject's normalised emails and phones without leaving DuckDB.
_MACROS = r"""
CREATE OR REPLACE MACRO email_lower(x) AS lower(trim(CAST(x AS VARCHAR)));
CREATE OR REPLACE MACRO email_domain(e) AS
    CASE regexp_extract(e, '@([^@]*)$', 1) WHEN 'googlemail.com' THEN 'gmail.com'
    ELSE regexp_extract(e, '@([^@]*)$', 1) END;
CREATE OR REPLACE MACRO email_local(e) AS regexp_replace(regexp_extract(e, '^(.*)@[^@]*$', 1), '\+.*$', '');
CREATE OR REPLACE MACRO email_norm(x) AS
    CASE WHEN regexp_full_match(email_lower(x), '[^@\s]+@[^@\s]+\.[^@\s]+') THEN
        (CASE WHEN email_domain(email_lower(x)) = 'gmail.com' THEN replace(email_local(email_lower(x)), '.', '')
         ELSE email_local(email_lower(x)) END) || '@' || email_domain(email_lower(x))
    END;
CREATE OR REPLACE MACRO phone_digits(x) AS regexp_replace(CAST(x AS VARCHAR), '[^0-9]', '', 'g');
"""


def personal_stores(settings: Settings) -> list[PersonalStore]:
    """The feature side's stores, in the order an erasure should walk them."""
    return [
        LakeStore(settings),
        QuarantineStore(settings),
        IdentityStore(settings),
        OfflineFeatureStore(settings),
        OnlineFeatureStore(settings),
    ]


# --------------------------------------------------------------------------------------------
# The subjects' identifiers as tables, and matching a file against them


def _digits(value: str) -> list[str]:
    """A phone's digits as a held value may show them: a North American number with and without its leading 1.

    (Held values are compared by their digits alone, one regular expression per value.)
    """
    d = "".join(ch for ch in value if ch.isdigit())
    if len(d) == 10:
        return [d, "1" + d]
    if len(d) == 11 and d.startswith("1"):
        return [d, d[1:]]
    return [d]


@dataclass
class _Wanted:
    """Every identifier of a batch of subjects, as frames keyed by the subject's position."""

    subjects: Sequence[Subject]
    records: pd.DataFrame = field(init=False)  # s, record_table, record_id
    emails: pd.DataFrame = field(init=False)  # s, value (lower-case as held, and normalised)
    phones: pd.DataFrame = field(init=False)  # s, value (digits, NANP with the leading 1)
    raw: pd.DataFrame = field(init=False)  # s, value (tokens and phones as held, trimmed)
    keys: pd.DataFrame = field(init=False)  # s, value (customer keys)

    def __post_init__(self) -> None:
        rec, em, ph, raw, keys = [], [], [], [], []
        for i, s in enumerate(self.subjects):
            rec += [(i, t, r) for t, r in s.source_records]
            emails = [e.strip() for e in s.emails if e and e.strip()]
            em += [(i, e) for e in emails]
            phones = [p.strip() for p in s.phones if p and p.strip()]
            ph += [(i, p) for p in phones]
            raw += [(i, t.strip()) for t in (*s.tokens(), *phones) if t.strip()]
            keys += [(i, k) for k in s.customer_keys]
        # every subject's emails and phones normalised in one call each (a call per subject costs more than the work)
        em_frame = pd.DataFrame(em, columns=["s", "value"])
        em = [(i, str(e).lower()) for i, e in em]
        em += [(int(i), str(e)) for i, e in zip(em_frame["s"], normalise_emails(em_frame["value"]), strict=True)
               if isinstance(e, str)]  # fmt: skip
        ph_frame = pd.DataFrame(ph, columns=["s", "value"])
        normalised = normalise_phones(ph_frame["value"]).tolist() if len(ph_frame) else []
        ph = [(i, d) for i, p in ph for d in _digits(p) if len(d) >= _MIN_PHONE_DIGITS]
        ph += [(int(i), d) for i, p in zip(ph_frame["s"], normalised, strict=True) if isinstance(p, str)
               for d in _digits(p)]  # fmt: skip
        self.records = pd.DataFrame(rec, columns=["s", "record_table", "record_id"]).drop_duplicates()
        self.emails = pd.DataFrame(em, columns=["s", "value"]).drop_duplicates()
        self.phones = pd.DataFrame(ph, columns=["s", "value"]).drop_duplicates()
        self.raw = pd.DataFrame(raw, columns=["s", "value"]).drop_duplicates()
        self.keys = pd.DataFrame(keys, columns=["s", "value"]).drop_duplicates()
        for frame in (self.records, self.emails, self.phones, self.raw, self.keys):
            frame["s"] = frame["s"].astype("int64")

    def record_keys(self) -> set[str]:
        """`<table>:<id>`, the identity layer's record keys."""
        return {f"{t}:{r}" for t, r in zip(self.records["record_table"], self.records["record_id"], strict=True)}

    def customer_keys(self) -> set[str]:
        """Every subject's customer keys."""
        return set(self.keys["value"])

    def bare_ids(self) -> set[str]:
        """Record ids without their table: a user's own table keys its rows by them."""
        return set(self.records["record_id"])

    def subjects_of(self, values: Collection[str], by: str) -> dict[str, list[int]]:
        """Which subjects hold each of these customer keys (`keys`) or bare record ids (`ids`)."""
        frame = self.keys.rename(columns={"value": "v"}) if by == "keys" else self.records.rename(
            columns={"record_id": "v"}
        )  # fmt: skip
        wanted = set(values)
        out: dict[str, list[int]] = {}
        for s, v in zip(frame["s"], frame["v"], strict=True):
            if v in wanted and s not in out.setdefault(v, []):
                out[v].append(int(s))
        return out

    def open(self, crosswalk: Path | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection holding the identifiers (w_*), the SQL normalisers and, if given, the crosswalk."""
        con = duckdb.connect()
        con.execute("SET threads = 2")
        con.execute(_MACROS)
        for name in ("records", "emails", "phones", "raw", "keys"):
            con.register(f"w_{name}", getattr(self, name))
        if crosswalk is not None and crosswalk.is_file():
            con.execute(f"CREATE TABLE xw AS SELECT record_key, customer_key FROM read_parquet({sql_text(crosswalk)})")
        else:
            con.execute("CREATE TABLE xw (record_key VARCHAR, customer_key VARCHAR)")
        return con


@dataclass(frozen=True)
class _Rules:
    """How the rows of one file say whose they are."""

    links: dict[str, str] = field(default_factory=dict)  # column -> identity record table of its ids
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    owner: tuple[str, str] | None = None  # (record table, id column): whose record the crosswalk says a row is
    raw: tuple[str, ...] = ()  # text columns matched as held against every token, email and phone
    keys: tuple[str, ...] = ()  # columns holding customer keys

    @classmethod
    def of(cls, person: PersonColumns, identity_sources: set[str]) -> _Rules:
        """The lake's rules for a table (an identity source's email and phone matches are guarded)."""
        owner = None
        if person.table in identity_sources:
            owner = next(((t, c) for c, t in person.links.items() if t == person.table), None)
        return cls(links=dict(person.links), emails=person.emails, phones=person.phones, owner=owner)


def _col(name: str) -> str:
    return 't."' + name.replace('"', '""') + '"'


def _pairs_sql(src: str, rules: _Rules, columns: set[str]) -> str | None:
    """SQL giving (n, s): the position of each matching row and the subject it belongs to."""
    parts = []
    for column, table in rules.links.items():
        if column in columns:
            parts.append(
                f"SELECT t.{_POS} AS n, w.s FROM {src} t JOIN w_records w ON w.record_table = {sql_text(table)} "
                f"AND w.record_id = CAST({_col(column)} AS VARCHAR)"
            )
    guard = ""
    owner_join = ""
    if rules.owner is not None and rules.owner[1] in columns:
        table, id_column = rules.owner
        owner_join = f" LEFT JOIN xw ON xw.record_key = {sql_text(table + ':')} || CAST({_col(id_column)} AS VARCHAR)"
        guard = (
            " WHERE xw.customer_key IS NULL OR EXISTS (SELECT 1 FROM w_keys k WHERE k.s = w.s "
            "AND k.value = xw.customer_key)"
        )
    for column in rules.emails:
        if column in columns:
            for expr in (f"email_lower({_col(column)})", f"email_norm({_col(column)})"):
                parts.append(f"SELECT t.{_POS} AS n, w.s FROM {src} t JOIN w_emails w ON w.value = {expr}"
                             f"{owner_join}{guard}")  # fmt: skip
    for column in rules.phones:
        if column in columns:
            parts.append(
                f"SELECT t.{_POS} AS n, w.s FROM {src} t JOIN w_phones w ON w.value = phone_digits({_col(column)})"
                f"{owner_join}{guard}"
            )
    raw = [c for c in rules.raw if c in columns]
    cte = ""
    if raw:  # every text value once, as (position, value): four joins over it instead of four per column
        listed = ", ".join(f'"{c.replace(chr(34), chr(34) * 2)}"' for c in raw)
        picked = ", ".join(f'CAST({_col(c)} AS VARCHAR) AS "{c.replace(chr(34), chr(34) * 2)}"' for c in raw)
        cte = (
            f"WITH v AS MATERIALIZED (SELECT n, trim(value) AS value FROM (UNPIVOT (SELECT t.{_POS} AS n, {picked} "
            f"FROM {src} t) ON {listed} INTO NAME col VALUE value) WHERE trim(value) <> '') "
        )
        parts += [
            "SELECT v.n, w.s FROM v JOIN w_raw w ON w.value = v.value",
            "SELECT v.n, w.s FROM v JOIN w_emails w ON w.value = email_lower(v.value) WHERE contains(v.value, '@')",
            "SELECT v.n, w.s FROM v JOIN w_emails w ON w.value = email_norm(v.value) WHERE contains(v.value, '@')",
            f"SELECT v.n, w.s FROM v JOIN w_phones w ON w.value = phone_digits(v.value) "
            f"AND length(w.value) >= {_MIN_PHONE_DIGITS}",
        ]
    for column in rules.keys:
        if column in columns:
            parts.append(
                f"SELECT t.{_POS} AS n, w.s FROM {src} t JOIN w_keys w ON w.value = CAST({_col(column)} AS VARCHAR)"
            )
    if not parts:
        return None
    return cte + "SELECT DISTINCT n, s FROM (" + " UNION ALL ".join(parts) + ")"


def _src(path: Path) -> str:
    return f"read_parquet({sql_text(path)}, file_row_number = true, hive_partitioning = false)"


def _file_columns(path: Path) -> dict[str, pa.DataType]:
    """A Parquet file's column names and types (from its footer)."""
    schema = pq.read_schema(path)
    return {f.name: f.type for f in schema}


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _matches(con: duckdb.DuckDBPyConnection, path: Path, rules: _Rules) -> dict[int, list[int]]:
    """Positions of the rows of a file that belong to the subjects, each with its subjects."""
    sql = _pairs_sql(_src(path), rules, set(_file_columns(path)))
    if sql is None:
        return {}
    out: dict[int, list[int]] = {}
    for n, s in con.sql(sql + " ORDER BY n, s").fetchall():
        out.setdefault(int(n), []).append(int(s))
    return out


def _rows_at(con: duckdb.DuckDBPyConnection, path: Path, positions: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The rows at these positions, as JSON values."""
    if not positions:
        return {}
    con.register("wanted_positions", pd.DataFrame({"n": sorted(positions)}, dtype="int64"))
    try:
        table = con.sql(
            f"SELECT * FROM {_src(path)} WHERE {_POS} IN (SELECT n FROM wanted_positions) ORDER BY {_POS}"
        ).to_arrow_table()
    finally:
        con.unregister("wanted_positions")
    rows = table.to_pylist()
    return {int(r.pop(_POS)): _jsonable(r) for r in rows}


def _jsonable(value: Any) -> Any:
    """A value JSON can hold: dates and times as ISO text, decimals and numpy scalars as numbers, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.hex()
    return value


def rewrite_without(path: Path, positions: set[int]) -> int:
    """Rewrite a Parquet file without the rows at these positions (atomically, streamed); return the rows removed.

    Every other row keeps its values, its types and its place; a file left with no row keeps its schema.
    """
    if not positions:
        return 0
    stale = path.with_name(f".{path.name}.tmp")
    stale.unlink(missing_ok=True)
    gone = np.array(sorted(positions), dtype=np.int64)
    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    removed = [0]

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            start = 0
            for batch in source.iter_batches(batch_size=1 << 19):
                index = np.arange(start, start + batch.num_rows, dtype=np.int64)
                keep = ~np.isin(index, gone)
                removed[0] += int((~keep).sum())
                writer.write_batch(batch.filter(pa.array(keep)))
                start += batch.num_rows
            if start == 0:
                writer.write_table(schema.empty_table())

    replace_atomically(path, write)
    source.close()
    return removed[0]


def _in_parallel(tasks: Sequence[Callable[[], int]]) -> list[int]:
    """Run rewrites two at a time (Arrow's decoding and encoding release the GIL); results in task order."""
    if len(tasks) <= 1:
        return [t() for t in tasks]
    with ThreadPoolExecutor(max_workers=_WRITERS) as pool:
        return list(pool.map(lambda t: t(), tasks))


def _place(settings: Settings, path: Path) -> str:
    return str(path.relative_to(settings.home_dir))


def _holdings(
    store: str, place: str, subjects: Sequence[Subject], found: dict[int, list[int]], rows: dict[int, dict[str, Any]]
) -> list[Holding]:
    """One Holding per subject with rows in this place."""
    per: dict[int, list[dict[str, Any]]] = {}
    for n, owners in sorted(found.items()):
        for s in owners:
            per.setdefault(s, []).append(rows[n])
    return [Holding(store, place, subjects[s].request, r) for s, r in sorted(per.items())]


# --------------------------------------------------------------------------------------------
# The lake and its quarantine


def _lake_folders(settings: Settings) -> list[tuple[str, Path, Path | None]]:
    """(table, lake partition folder, its quarantine folder) of every partition on disk.

    Committed partitions come from the manifest; folders a killed landing left (the next
    ingestion removes them) are searched too, since they may hold the same rows.
    """
    manifest = read_manifest(settings)
    out: dict[Path, tuple[str, Path, Path | None]] = {}
    for table, parts in manifest.tables.items():
        for p in parts:
            q = settings.quarantine_dir / table / p.quarantine if p.quarantine else None
            out[settings.lake_dir / table / p.lake] = (table, settings.lake_dir / table / p.lake, q)
    if settings.lake_dir.is_dir():
        for folder in sorted(settings.lake_dir.glob("*/drop=*")):
            if folder.is_dir() and folder not in out:
                q = settings.quarantine_dir / folder.parent.name / folder.name
                out[folder] = (folder.parent.name, folder, q if q.is_dir() else None)
    return sorted(out.values(), key=lambda x: str(x[1]))


def _lake_rules(settings: Settings, con: duckdb.DuckDBPyConnection, files: dict[str, list[Path]]) -> dict[str, _Rules]:
    """Each lake table's rules, from its columns and the identity and feature configurations."""
    from features.identity.config import load_identity_config

    # every partition's columns: a later drop may carry a column the first did not
    tables = {t: sorted({c for p in ps for c in _file_columns(p)}) for t, ps in files.items() if ps}
    sources = {s.table for s in load_identity_config(settings.identity_config).sources}
    return {t: _Rules.of(p, sources) for t, p in person_columns(settings, tables).items()}


def _issue_files(folder: Path | None) -> list[Path]:
    return sorted(folder.glob("issues-*.parquet")) if folder is not None and folder.is_dir() else []


def _issues_of_rows(
    con: duckdb.DuckDBPyConnection, issues: Path, rows: dict[tuple[str, int], list[int]]
) -> dict[int, list[int]]:
    """Positions of the issues about these rows ((source file, row number) -> subjects), with their subjects."""
    if not rows:
        return {}
    frame = pd.DataFrame(
        [(f, r, s) for (f, r), owners in rows.items() for s in owners], columns=["f", "r", "s"]
    ).astype({"r": "int64", "s": "int64"})
    if "_source_file" not in _file_columns(issues):
        return {}
    con.register("erased_rows", frame)
    try:
        pairs = con.sql(
            f"SELECT DISTINCT t.{_POS}, e.s FROM {_src(issues)} t JOIN erased_rows e "
            "ON e.f = t._source_file AND e.r = t.row_number ORDER BY 1, 2"
        ).fetchall()
    finally:
        con.unregister("erased_rows")
    out: dict[int, list[int]] = {}
    for n, s in pairs:
        out.setdefault(int(n), []).append(int(s))
    return out


def _issues_of_lake_rows(
    con: duckdb.DuckDBPyConnection, issues: Path, lake: Path, links: dict[str, str]
) -> dict[int, list[int]]:
    """Positions of the issues about lake rows of the subjects (a value emptied on the way in), with their subjects.

    Joined from the issues' side: only the rows they refer to are looked up in the (large) lake partition.
    """
    columns = _file_columns(issues)
    if not links or "_source_file" not in columns or "action" not in columns:
        return {}
    lake_columns = _file_columns(lake)
    parts = [
        f"SELECT i.{_POS} AS n, w.s FROM {_src(issues)} i "
        f"JOIN read_parquet({sql_text(lake)}, hive_partitioning = false) t "
        "ON t._source_file = i._source_file AND t._row_number = i.row_number "
        f"JOIN w_records w ON w.record_table = {sql_text(table)} AND w.record_id = CAST({_col(column)} AS VARCHAR) "
        "WHERE i.action = 'nulled'"
        for column, table in links.items()
        if column in lake_columns
    ]
    if not parts or "_row_number" not in lake_columns:
        return {}
    out: dict[int, list[int]] = {}
    for n, s in con.sql("SELECT DISTINCT n, s FROM (" + " UNION ALL ".join(parts) + ") ORDER BY n, s").fetchall():
        out.setdefault(int(n), []).append(int(s))
    return out


def _row_ids(
    con: duckdb.DuckDBPyConnection, path: Path, found: dict[int, list[int]]
) -> dict[tuple[str, int], list[int]]:
    """(source file, row number) of the rows at these positions (what their issues refer to)."""
    columns = _file_columns(path)
    if not found or "_source_file" not in columns or "_row_number" not in columns:
        return {}
    con.register("wanted_positions", pd.DataFrame({"n": sorted(found)}, dtype="int64"))
    try:
        rows = con.sql(
            f"SELECT {_POS}, _source_file, _row_number FROM {_src(path)} "
            f"WHERE {_POS} IN (SELECT n FROM wanted_positions)"
        ).fetchall()
    finally:
        con.unregister("wanted_positions")
    return {(str(f), int(r)): found[int(n)] for n, f, r in rows if r is not None}


def _owned(values: pa.ChunkedArray, lookup: dict[str, list[int]]) -> dict[int, list[int]]:
    """Positions of the values the lookup holds, each with the subjects it gives."""
    if not lookup:
        return {}
    strings = values.cast(pa.string())
    hit = pc.is_in(strings, pa.array(sorted(lookup), pa.string())).to_numpy(zero_copy_only=False).astype(bool)
    positions = np.flatnonzero(hit)
    held = strings.take(pa.array(positions, pa.int64())).to_pylist() if len(positions) else []
    return {int(n): list(lookup[str(v)]) for n, v in zip(positions, held, strict=True)}


def _merge(into: dict[int, list[int]], more: dict[int, list[int]]) -> dict[int, list[int]]:
    for n, owners in more.items():
        into[n] = sorted({*into.get(n, []), *owners})
    return into


class LakeStore:
    """Accepted rows in the lake: every partition of every table (consent history included).

    A row is the subject's when one of its record-id columns holds one of their source
    records (`crm_id` in the CRM, in tickets and in consent events), or its email or phone
    column one of their emails or phones. Erasing a row also erases the quarantine's notes
    about it (a value emptied on the way in), first, so a rerun after a kill still finds them.
    """

    name = "lake"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _walk(
        self, subjects: Sequence[Subject]
    ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str, Path, Path | None, _Rules]]:
        wanted = _Wanted(subjects)
        con = wanted.open(self.settings.identity_dir / "crosswalk.parquet")
        try:
            folders = _lake_folders(self.settings)
            files = {t: [f / "data.parquet" for tt, f, _ in folders if tt == t and (f / "data.parquet").is_file()]
                     for t, _, _ in folders}  # fmt: skip
            rules = _lake_rules(self.settings, con, files)
            for table, folder, quarantine in folders:
                path = folder / "data.parquet"
                if path.is_file() and table in rules:
                    yield con, table, path, quarantine, rules[table]
        finally:
            con.close()

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each subject's rows, per lake partition."""
        out = []
        for con, _, path, _, rules in self._walk(subjects):
            found = _matches(con, path, rules)
            if found:
                out += _holdings(
                    self.name, _place(self.settings, path), subjects, found, _rows_at(con, path, list(found))
                )
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Rewrite each partition holding a subject's row without it (and its quarantine notes)."""
        out: list[Erased] = []

        def rewrite(path: Path, found: set[int], notes: list[tuple[Path, set[int]]]) -> list[Erased]:
            done = []
            for issues, positions in notes:  # the notes first: a rerun finds them through the rows
                n = rewrite_without(issues, positions)
                if n:
                    done.append(Erased(self.name, _place(self.settings, issues), n, "notes on the erased rows"))
            return [*done, Erased(self.name, _place(self.settings, path), rewrite_without(path, found))]

        with lake_lock(self.settings), ThreadPoolExecutor(max_workers=_WRITERS) as pool:
            jobs = []
            for con, _, path, quarantine, rules in self._walk(subjects):
                found = _matches(con, path, rules)
                if not found:
                    continue
                rows = _row_ids(con, path, found)
                notes = [(i, set(_issues_of_rows(con, i, rows))) for i in _issue_files(quarantine)]
                jobs.append(pool.submit(rewrite, path, set(found), notes))  # written while the next is searched
            for job in jobs:
                out += job.result()
        return out


class QuarantineStore:
    """Rejected rows, later copies of a key, and the issues recorded about them (and about lake rows).

    A rejected row may have no valid id, so its raw values are matched against every token
    of the subject (ids, keys, emails, phones as held) and their normalised emails and phones.
    An issue is the subject's when its row is, when its value is one of their identifiers, or
    (a row that could not be split into fields) when its text holds one of their tokens.
    """

    name = "quarantine"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _plan(self, con: duckdb.DuckDBPyConnection, wanted: _Wanted, lake_rules: dict[str, _Rules]) -> Iterator[
        tuple[Path, dict[int, list[int]]]
    ]:  # fmt: skip
        """(file, matched positions) for every quarantine file: row files first, then their issues."""
        lake_of = {q: (t, f) for t, f, q in _lake_folders(self.settings) if q is not None}
        if not self.settings.quarantine_dir.is_dir():
            return
        for folder in sorted(p for p in self.settings.quarantine_dir.glob("*/drop=*") if p.is_dir()):
            table = folder.parent.name
            referred: dict[tuple[str, int], list[int]] = {}
            row_files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("issues-"))
            for path in row_files:
                columns = _file_columns(path)
                text = tuple(c for c, kind in columns.items() if _is_text(kind) and c != "_source_file")
                base = lake_rules.get(table, _Rules())
                rules = _Rules(links=base.links, emails=base.emails, phones=base.phones, raw=text)
                found = _matches(con, path, rules)
                for key, owners in _row_ids(con, path, found).items():
                    referred[key] = sorted({*referred.get(key, []), *owners})
                yield path, found
            lake = lake_of.get(folder, (table, self.settings.lake_dir / table / folder.name))[1] / "data.parquet"
            links = lake_rules[table].links if lake.is_file() and table in lake_rules else {}
            for issues in _issue_files(folder):
                found = _issues_of_rows(con, issues, referred)
                _merge(found, _issues_of_lake_rows(con, issues, lake, links))
                _merge(found, _matches(con, issues, _Rules(raw=("value",))))
                _merge(found, self._bad_rows(con, issues))
                yield issues, found

    @staticmethod
    def _bad_rows(con: duckdb.DuckDBPyConnection, issues: Path) -> dict[int, list[int]]:
        """Unsplittable rows whose text holds a token (their whole text is in the reason)."""
        pairs = con.sql(
            f"SELECT DISTINCT t.{_POS}, w.s FROM {_src(issues)} t JOIN w_raw w ON contains(t.reason, w.value) "
            f"WHERE t.\"check\" = 'bad_row_shape' AND length(w.value) >= 4 ORDER BY 1, 2"
        ).fetchall()
        out: dict[int, list[int]] = {}
        for n, s in pairs:
            out.setdefault(int(n), []).append(int(s))
        return out

    def _open(self, subjects: Sequence[Subject]) -> tuple[_Wanted, duckdb.DuckDBPyConnection, dict[str, _Rules]]:
        wanted = _Wanted(subjects)
        con = wanted.open(self.settings.identity_dir / "crosswalk.parquet")
        folders = _lake_folders(self.settings)
        files = {t: [f / "data.parquet" for tt, f, _ in folders if tt == t and (f / "data.parquet").is_file()]
                 for t, _, _ in folders}  # fmt: skip
        return wanted, con, _lake_rules(self.settings, con, files)

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each subject's quarantined rows and issues, per file."""
        wanted, con, rules = self._open(subjects)
        out = []
        try:
            for path, found in self._plan(con, wanted, rules):
                if found:
                    rows = _rows_at(con, path, list(found))
                    out += _holdings(self.name, _place(self.settings, path), subjects, found, rows)
        finally:
            con.close()
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Rewrite each quarantine file holding a subject's row or issue without them."""
        out = []
        with lake_lock(self.settings):
            wanted, con, rules = self._open(subjects)
            try:
                planned = [(p, f) for p, f in self._plan(con, wanted, rules) if f]
                # issues first: they are found through their rows, which a kill must not remove before them
                for phase in (True, False):
                    todo = [(p, f) for p, f in planned if p.name.startswith("issues-") == phase]
                    counts = _in_parallel([partial(rewrite_without, p, set(f)) for p, f in todo])
                    out += [
                        Erased(self.name, _place(self.settings, p), n)
                        for (p, _), n in zip(todo, counts, strict=True)
                        if n
                    ]
            finally:
                con.close()
        return out


# --------------------------------------------------------------------------------------------
# Identity outputs


class IdentityStore:
    """Identity resolution's outputs, and any run report naming a subject's identifier.

    Records, what the matcher saw, links, crosswalk, golden records, conflicts and key events.
    """

    name = "identity"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _positions(self, wanted: _Wanted) -> Iterator[tuple[Path, dict[int, list[int]]]]:
        by_record: dict[str, list[int]] = {}
        for s, t, r in wanted.records.itertuples(index=False):
            by_record.setdefault(f"{t}:{r}", []).append(int(s))
        by_key = wanted.subjects_of(wanted.customer_keys(), "keys")
        for name in _IDENTITY_FILES:
            path = self.settings.identity_dir / f"{name}.parquet"
            if not path.is_file():
                continue
            names = set(pq.read_schema(path).names)
            columns = [c for c in ("record_key", "record_key_l", "record_key_r", "customer_key", "related_key")
                       if c in names]  # fmt: skip
            table = pq.read_table(path, columns=columns)
            found: dict[int, list[int]] = {}
            for column in columns:
                lookup = by_key if column in ("customer_key", "related_key") else by_record
                if not lookup:
                    continue
                _merge(found, _owned(table.column(column), lookup))
            yield path, found

    def _reports(self) -> list[Path]:
        reports = sorted((self.settings.reports_dir / "identity").glob("*.json"))
        own = (self.settings.identity_dir / "run.json", self.settings.identity_dir / "model.json")
        return [p for p in (*own, *reports) if p.is_file()]

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each subject's rows in each identity output, and the run reports' values naming them."""
        wanted = _Wanted(subjects)
        out = []
        for path, found in self._positions(wanted):
            if found:
                rows = pq.read_table(path).take(pa.array(sorted(found), pa.int64())).to_pylist()
                by_position = {n: _jsonable(r) for n, r in zip(sorted(found), rows, strict=True)}
                out += _holdings(self.name, _place(self.settings, path), subjects, found, by_position)
        tokens: dict[int, list[str]] = {}
        for i, value in zip(wanted.raw["s"], wanted.raw["value"], strict=True):
            tokens.setdefault(int(i), []).append(str(value))
        every = wanted.raw["value"].tolist()
        for path in self._reports():
            data = json.loads(path.read_text(encoding="utf-8"))
            if not _json_hits(data, every):  # the usual case: counts and timings only
                continue
            for i, mine in sorted(tokens.items()):
                hits = _json_hits(data, mine)
                if hits:
                    out.append(Holding(self.name, _place(self.settings, path), subjects[i].request, hits))
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Rewrite each identity output without the subjects' rows; blank report values naming them."""
        wanted = _Wanted(subjects)
        out = []
        for path, found in self._positions(wanted):
            n = rewrite_without(path, set(found))
            if n:
                out.append(Erased(self.name, _place(self.settings, path), n))
        tokens = wanted.raw["value"].tolist()
        for path in self._reports():
            data = json.loads(path.read_text(encoding="utf-8"))
            hits = _json_hits(data, tokens)
            if hits:
                write_text_atomically(path, json.dumps(_json_blank(data, tokens), indent=2))
                out.append(Erased(self.name, _place(self.settings, path), len(hits), "values naming the subject"))
        return out


_ERASED = "[erased]"


def _json_hits(data: Any, tokens: Sequence[str], at: str = "$") -> list[dict[str, Any]]:
    """Every string in a JSON document holding one of the tokens, with its path."""
    if isinstance(data, dict):
        return [h for k, v in data.items() for h in _json_hits(v, tokens, f"{at}.{k}")] + [
            {"path": f"{at}.{k}", "key": k} for k in data if any(t in str(k) for t in tokens)
        ]
    if isinstance(data, list):
        return [h for i, v in enumerate(data) for h in _json_hits(v, tokens, f"{at}[{i}]")]
    if isinstance(data, str) and any(t in data for t in tokens):
        return [{"path": at, "value": data}]
    return []


def _json_blank(data: Any, tokens: Sequence[str]) -> Any:
    """The document with every string holding a token replaced by `[erased]` (keys holding one dropped)."""
    if isinstance(data, dict):
        return {k: _json_blank(v, tokens) for k, v in data.items() if not any(t in str(k) for t in tokens)}
    if isinstance(data, list):
        return [_json_blank(v, tokens) for v in data]
    if isinstance(data, str) and any(t in data for t in tokens):
        return _ERASED
    return data


# --------------------------------------------------------------------------------------------
# Feature stores


class OfflineFeatureStore:
    """The offline store: every stored cutoff's partition of every feature set, labels and interactions.

    Rows are keyed by customer key; a partition materialised from a user's own table is keyed
    by its own ids, so the subjects' bare record ids are looked up too. A rewritten partition's
    row count is corrected in its set's manifest.
    """

    name = "features.offline"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _files(self) -> list[Path]:
        root = self.settings.features_dir / "offline"
        return sorted(root.glob("*/v*/as_of=*/data.parquet")) if root.is_dir() else []

    def _found(self, path: Path, wanted: _Wanted) -> dict[int, list[int]]:
        if "customer_key" not in pq.read_schema(path).names:
            return {}
        keys = pq.read_table(path, columns=["customer_key"]).column("customer_key").cast(pa.string())
        lookup = wanted.subjects_of(wanted.customer_keys(), "keys")
        for value, owners in wanted.subjects_of(wanted.bare_ids(), "ids").items():
            lookup[value] = sorted({*lookup.get(value, []), *owners})
        if not lookup:
            return {}
        return _owned(keys, lookup)

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each subject's feature rows, per set version and cutoff."""
        wanted = _Wanted(subjects)
        out = []
        for path in self._files():
            found = self._found(path, wanted)
            if found:
                rows = pq.read_table(path).take(pa.array(sorted(found), pa.int64())).to_pylist()
                by_position = {n: _jsonable(r) for n, r in zip(sorted(found), rows, strict=True)}
                out += _holdings(self.name, _place(self.settings, path), subjects, found, by_position)
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Rewrite each partition holding a subject's row without it; correct the manifest's row count."""
        wanted = _Wanted(subjects)
        todo = [(path, found) for path in self._files() if (found := self._found(path, wanted))]
        counts = _in_parallel([partial(rewrite_without, p, set(f)) for p, f in todo])
        for path in self._files():
            _correct_rows(path)
        return [Erased(self.name, _place(self.settings, p), n) for (p, _), n in zip(todo, counts, strict=True) if n]


def _correct_rows(partition: Path) -> None:
    """Set the partition's row count in its set's manifest to what the file holds (after an erasure)."""
    manifest_path = partition.parent.parent / "manifest.json"
    if not manifest_path.is_file():
        return
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    day = partition.parent.name.removeprefix("as_of=")
    entry = manifest.get("partitions", {}).get(day)
    rows = pq.ParquetFile(partition).metadata.num_rows
    if isinstance(entry, dict) and entry.get("rows") != rows:
        entry["rows"] = rows
        write_text_atomically(manifest_path, json.dumps(manifest, indent=2, default=str))


class OnlineFeatureStore:
    """The online store: the SQLite file under home, and Redis when CUSTINTEL_REDIS_URL is set.

    Documents are looked up by customer key and by bare record id (a set materialised from a
    user's own table is keyed by its own ids).
    """

    name = "features.online"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _stores(self) -> Iterator[tuple[str, Any]]:
        from features.featurestore.online import RedisOnlineStore, SQLiteOnlineStore

        sqlite_path = self.settings.features_dir / "online.sqlite"
        if sqlite_path.is_file():
            with SQLiteOnlineStore(sqlite_path) as store:
                yield _place(self.settings, sqlite_path), store
        if self.settings.redis_url:
            with RedisOnlineStore(self.settings.redis_url, self.settings.online_namespace) as redis_store:
                yield f"redis:{self.settings.online_namespace}:online", redis_store

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each subject's documents, per store and set."""
        wanted = _Wanted(subjects)
        owners = wanted.subjects_of(wanted.customer_keys(), "keys")
        for value, more in wanted.subjects_of(wanted.bare_ids(), "ids").items():
            owners[value] = sorted({*owners.get(value, []), *more})
        out = []
        for place, store in self._stores():
            per: dict[tuple[int, str], list[dict[str, Any]]] = {}
            for key, docs in store.lookup_many(sorted(owners)).items():
                for set_key, doc in docs.items():
                    for s in owners[key]:
                        per.setdefault((s, set_key), []).append({"customer_key": key, **_jsonable(doc)})
            out += [
                Holding(self.name, f"{place}#{set_key}", subjects[s].request, rows)
                for (s, set_key), rows in sorted(per.items())
            ]
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Delete the subjects' documents from every set of every online store."""
        wanted = _Wanted(subjects)
        keys = sorted(wanted.customer_keys() | wanted.bare_ids())
        out = []
        for place, store in self._stores():
            for set_key, n in sorted(store.delete_customers(keys).items()):
                out.append(Erased(self.name, f"{place}#{set_key}", n))
        return out
