"""What a model served in a window, read from the service's inference log.

The log is JSON lines per UTC day (its format and layout: `serving.inference_log`): one entry
per answered customer with who, when, the model version, the customer key as the serving policy
keeps it, the answer, and the model inputs the answer was computed from (`inputs`) with the cutoff
of the stored features (`as_of`). DuckDB reads the day files of the window in one scan and casts
the inputs to the reference's types; a value that does not cast is counted as a type error
rather than failing the read, so a schema break upstream shows as a data-quality finding.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from serving.inference_log import SUPPRESSED, day_files, entries_sql

QUALITY_SAMPLE = 200_000  # rows the key-presence and type checks read (shares, so a sample is enough)


class ServedLogError(RuntimeError):
    """The inference log cannot be read."""


@dataclass
class ServedWindow:
    """One model's scored answers in [start, end): one row per answered customer."""

    model: str
    start: dt.datetime
    end: dt.datetime
    frame: pd.DataFrame  # at, version, customer, as_of, <inputs...>, plus the answer's columns
    suppressed: int = 0
    files: list[str] = field(default_factory=list)
    absent_inputs: dict[str, float] = field(default_factory=dict)  # share of sampled rows lacking the key
    type_errors: dict[str, float] = field(default_factory=dict)  # share of present values of the wrong type
    unexpected_inputs: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Scored rows in the window."""
        return len(self.frame)


def _sql_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "BOOLEAN"
    if pd.api.types.is_numeric_dtype(dtype):
        return "DOUBLE"
    return "VARCHAR"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_served(
    log_dir: Path,
    model: str,
    start: dt.datetime,
    end: dt.datetime,
    inputs: dict[str, Any],
    answer: dict[str, str],
) -> ServedWindow:
    """The scored entries of `model` in [start, end).

    `inputs` maps each model input to the reference's dtype (the cast target); `answer` maps
    an output column to a DuckDB expression over the entry's `answer` JSON, e.g.
    `{"score": "TRY_CAST(answer->>'score' AS DOUBLE)"}`.
    """
    files = day_files(log_dir, start, end)
    empty = pd.DataFrame(columns=["at", "version", "customer", "as_of", *inputs, *answer])
    if not files:
        return ServedWindow(model, start, end, empty)
    types = {name: _sql_type(dtype) for name, dtype in inputs.items()}
    where = 'model = $model AND "at" >= $start AND "at" < $end'
    params = {"model": model, "start": start.timestamp(), "end": end.timestamp()}
    outputs = ", ".join(f"{expr} AS {_quote(name)}" for name, expr in answer.items())
    try:
        with duckdb.connect() as con:
            con.execute("SET threads TO 2")
            loose = _source(files, "JSON")
            suppressed = con.execute(
                f"SELECT count(*) FROM {loose} WHERE {where} AND status = '{SUPPRESSED}'", params
            ).fetchone()
            try:  # fast: the reader casts the inputs while it parses
                typed = "STRUCT(" + ", ".join(f"{_quote(n)} {t}" for n, t in types.items()) + ")" if types else "JSON"
                frame = _scored(con, _source(files, typed), where, params, list(types), outputs, "inputs")
            except duckdb.InvalidInputException:  # a value of the wrong type: cast per value, count the misfits
                shape = json.dumps(types).replace("'", "''")
                inner = f"(SELECT *, json_transform(inputs, '{shape}') AS cast_inputs FROM {loose})"
                frame = _scored(con, inner, where, params, list(types), outputs, "cast_inputs")
            absent, wrong, unexpected = _input_checks(con, loose, where, params, types)
    except duckdb.Error as exc:
        raise ServedLogError(f"cannot read the inference log under {log_dir}: {exc}") from exc
    return ServedWindow(
        model,
        start,
        end,
        frame,
        suppressed=int(suppressed[0]) if suppressed else 0,
        files=[str(f) for f in files],
        absent_inputs=absent,
        type_errors=wrong,
        unexpected_inputs=unexpected,
    )


# The entries' fields a window reads (`serving.inference_log.ENTRY_TYPES`).
_FIELDS = ("at", "model", "version", "status", "customer", "as_of", "inputs", "answer")


def _source(files: list[Path], inputs_type: str) -> str:
    return entries_sql(files, _FIELDS, inputs_type)


def _scored(
    con: duckdb.DuckDBPyConnection,
    source: str,
    where: str,
    params: dict[str, object],
    names: list[str],
    outputs: str,
    struct: str,
) -> pd.DataFrame:
    unpacked = ", ".join(f"{struct}.{_quote(n)} AS {_quote(n)}" for n in names)
    select = ", ".join(p for p in ('"at"', "version", "customer", "as_of", unpacked, outputs) if p)
    sql = f"SELECT {select} FROM {source} WHERE {where} AND status IS DISTINCT FROM '{SUPPRESSED}' ORDER BY \"at\""
    return con.execute(sql, params).df()


def _input_checks(
    con: duckdb.DuckDBPyConnection, source: str, where: str, params: dict[str, object], types: dict[str, str]
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """On a sample drawn across the whole window: share of rows lacking each input, wrong-typed values, unknown keys.

    Each row's inputs are parsed once (its keys, and one transform to JSON values per numeric input).
    """
    if not types:
        return {}, {}, []
    numeric = [c for c, t in types.items() if t == "DOUBLE"]
    shape = json.dumps(dict.fromkeys(numeric, "JSON")).replace("'", "''")
    sample = (
        f"SELECT inputs FROM {source} WHERE {where} AND status IS DISTINCT FROM '{SUPPRESSED}' "
        f"AND inputs IS NOT NULL USING SAMPLE reservoir({QUALITY_SAMPLE} ROWS) REPEATABLE (0)"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE quality_sample AS SELECT json_keys(inputs) AS k, "
        f"json_transform(inputs, '{shape}') AS v FROM ({sample})",
        params,
    )
    row = con.execute("SELECT count(*) FROM quality_sample").fetchone()
    total = int(row[0]) if row else 0
    if total == 0:
        return dict.fromkeys(types, 0.0), dict.fromkeys(numeric, 0.0), []
    present = dict(
        con.execute("SELECT key, count(*) FROM (SELECT unnest(k) AS key FROM quality_sample) GROUP BY key").fetchall()
    )
    wrongs: tuple = ()
    if numeric:
        parts = [
            f"count_if(v.{_quote(c)} IS NOT NULL AND json_type(v.{_quote(c)}) NOT IN ('BIGINT', 'UBIGINT', 'DOUBLE', "
            f"'NULL'))"
            for c in numeric
        ]
        wrongs = con.execute(f"SELECT {', '.join(parts)} FROM quality_sample").fetchone() or ()
    absent = {c: 1 - present.get(c, 0) / total for c in types}
    wrong = {c: (w / present[c] if present.get(c) else 0.0) for c, w in zip(numeric, wrongs, strict=False)}
    return absent, wrong, sorted(set(present) - set(types))
