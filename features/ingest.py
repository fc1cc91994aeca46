"""Check source rows against their contract: the compute half of ingestion.

A contract compiles to one SQL statement over an Arrow batch of raw rows. For
every column it parses the text (dates in the source's own formats, numbers,
booleans), translates codes, and yields the first check that fails as a
readable reason. Rows with a failing `reject` column go to quarantine whole;
`null` columns are emptied and the issue logged. Nothing here touches files;
`features.lake` does the reading and writing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from features.contracts import ColumnRule, Contract

ROW = "_row_number"
_REASON = "__reason__"
_VALUE = "__value__"
ISSUE_SCHEMA = pa.schema(
    [
        ("row_number", pa.int64()),
        ("field", pa.string()),
        ("check", pa.string()),
        ("reason", pa.string()),
        ("value", pa.string()),
        ("action", pa.string()),
    ]
)
SHOWN_CHARS = 100  # of an over-long value, in its quarantine issue
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")
SQL_TYPES = {
    "string": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}


class ContractViolation(ValueError):
    """A whole file breaks its contract (a missing column): nothing of it can be ingested."""


@dataclass
class ValidationContext:
    """What checks need beyond the contract: the drop's time and reference values."""

    as_of: dt.datetime
    reference_values: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class BatchResult:
    """One batch split into accepted rows, rejected raw rows and field issues."""

    accepted: pa.Table
    rejected: pa.Table
    issues: pa.Table


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in_list(values: list[str]) -> str:
    return "(" + ", ".join(_lit(v) for v in values) + ")"


def _shown(values: list[str], limit: int = 12) -> str:
    head = ", ".join(values[:limit])
    return head + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _parse_expr(rule: ColumnRule, raw: str, is_text: bool) -> str:
    """SQL that turns the raw value into the rule's type, NULL when it cannot."""
    t = rule.type
    if not is_text:
        if t == "float":
            return f"CASE WHEN isfinite(TRY_CAST({raw} AS DOUBLE)) THEN TRY_CAST({raw} AS DOUBLE) END"
        return f"TRY_CAST({raw} AS {SQL_TYPES[t]})"
    if t == "string":
        return raw
    if t == "int":
        d = f"TRY_CAST({raw} AS DOUBLE)"
        return f"CASE WHEN isfinite({d}) AND {d} = trunc({d}) THEN CAST({d} AS BIGINT) END"
    if t == "float":
        d = f"TRY_CAST({raw} AS DOUBLE)"
        return f"CASE WHEN isfinite({d}) THEN {d} END"
    if t == "bool":
        return (
            f"CASE WHEN lower({raw}) IN {_in_list(list(_TRUE))} THEN TRUE "
            f"WHEN lower({raw}) IN {_in_list(list(_FALSE))} THEN FALSE END"
        )
    cast = "DATE" if t == "date" else "TIMESTAMP"
    parts = [f"CAST(TRY_STRPTIME({raw}, {_lit(f)}) AS {cast})" for f in rule.date_formats]
    return parts[0] if len(parts) == 1 else "COALESCE(" + ", ".join(parts) + ")"


def _bound(rule: ColumnRule, bound: float | str) -> str:
    if isinstance(bound, str):
        return f"CAST({_lit(bound)} AS {SQL_TYPES[rule.type]})"
    return repr(float(bound)) if rule.type == "float" else str(int(bound) if float(bound).is_integer() else bound)


def _shown_bound(bound: float | str) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _checks(
    rule: ColumnRule, raw: str, parsed: str, ctx: ValidationContext, key: bool, max_length: int | None
) -> list[tuple[str, str, str]]:
    """(condition, check name, reason SQL) in the order they are tried."""
    out: list[tuple[str, str, str]] = []
    shown_raw = f"CAST({raw} AS VARCHAR)"
    if not rule.nullable or key:
        out.append((f"{raw} IS NULL", "missing", _lit("required value is missing")))
    if max_length is not None:  # first, so no later reason repeats an over-long value
        out.append(
            (
                f"length({raw}) > {max_length}",
                "too_long",
                f"'text of ' || CAST(length({raw}) AS VARCHAR) || ' characters is longer than the limit {max_length}'",
            )
        )
    fmt = f" (expected {' or '.join(rule.date_formats)})" if rule.type in ("date", "timestamp") else ""
    out.append(
        (
            f"{raw} IS NOT NULL AND {parsed} IS NULL",
            "invalid_type",
            f"{_lit(f'not a valid {rule.type}{fmt}: ')} || {_lit(chr(39))} || {shown_raw} || {_lit(chr(39))}",
        )
    )
    codes: list[str] | None = None
    if rule.map is not None:
        codes = list(rule.map)
    elif rule.allowed is not None:
        codes = rule.allowed
    if codes is not None:
        out.append(
            (
                f"{parsed} NOT IN {_in_list(codes)}",
                "unknown_code",
                f"'unknown code ''' || {shown_raw} || ''' (allowed: {_shown(codes)})'",
            )
        )
    if rule.references:
        values = ctx.reference_values.get(rule.references, [])
        cond = f"{parsed} NOT IN {_in_list(values)}" if values else "TRUE"
        out.append((cond, "unknown_reference", f"'no such {rule.references}: ''' || {shown_raw} || ''''"))
    if rule.pattern:
        out.append(
            (
                f"NOT regexp_full_match({parsed}, {_lit(rule.pattern)})",
                "pattern",
                f"'does not look like a valid {rule.name}: ''' || {shown_raw} || ''''",
            )
        )
    if rule.min is not None:
        out.append(
            (
                f"{parsed} < {_bound(rule, rule.min)}",
                "below_minimum",
                f"'value ' || {shown_raw} || ' is below the minimum {_shown_bound(rule.min)}'",
            )
        )
    if rule.max is not None:
        out.append(
            (
                f"{parsed} > {_bound(rule, rule.max)}",
                "above_maximum",
                f"'value ' || {shown_raw} || ' is above the maximum {_shown_bound(rule.max)}'",
            )
        )
    if rule.not_in_future:
        limit = ctx.as_of + dt.timedelta(days=1)
        out.append(
            (
                f"CAST({parsed} AS TIMESTAMP) > TIMESTAMP {_lit(limit.strftime('%Y-%m-%d %H:%M:%S'))}",
                "in_future",
                f"'' || {shown_raw} || ' is later than the drop''s export time "
                f"{ctx.as_of.strftime('%Y-%m-%d %H:%M:%S')}'",
            )
        )
    return out


def compile_contract(contract: Contract, schema: pa.Schema, ctx: ValidationContext) -> str:
    """One SELECT over table `batch` giving typed values, reasons and offending raw values."""
    selects = [_q(ROW)]
    for rule in contract.columns:
        src = _q(rule.source_name)
        is_text = pa.types.is_string(schema.field(rule.source_name).type) or pa.types.is_large_string(
            schema.field(rule.source_name).type
        )
        raw = f"NULLIF(TRIM({src}), '')" if is_text else src
        parsed = _parse_expr(rule, raw, is_text)
        max_length = contract.max_length(rule) if is_text else None
        checks = _checks(rule, raw, parsed, ctx, rule.name in contract.key, max_length)
        # Nullable columns with an empty value pass every check.
        whens = [f"WHEN {cond} THEN '{name}' || chr(31) || ({msg})" for cond, name, msg in checks]
        if rule.nullable and rule.name not in contract.key:
            whens.insert(0, f"WHEN {raw} IS NULL THEN NULL")
        reason = "CASE " + " ".join(whens) + " END"
        value = parsed
        if rule.map is not None:
            value = (
                "CASE " + " ".join(f"WHEN {parsed} = {_lit(k)} THEN {_lit(v)}" for k, v in rule.map.items()) + " END"
            )
        selects.append(f"{reason} AS {_q(_REASON + rule.name)}")
        shown = f"CAST({raw} AS VARCHAR)"
        if max_length is not None:  # the issue keeps the start of an over-long value, and its length
            shown = (
                f"CASE WHEN length({raw}) > {max_length} THEN left({raw}, {SHOWN_CHARS}) || '... ('"
                f" || CAST(length({raw}) AS VARCHAR) || ' characters)' ELSE {shown} END"
            )
        selects.append(f"{shown} AS {_q(_VALUE + rule.name)}")
        selects.append(f"CAST({value} AS {SQL_TYPES[rule.type]}) AS {_q(rule.name)}")
    return "SELECT " + ",\n  ".join(selects) + " FROM batch"


def check_columns(contract: Contract, schema: pa.Schema, file_label: str) -> list[str]:
    """Fail on a missing column, naming it; return the file's undeclared extra columns."""
    present = set(schema.names)
    missing = [r.source_name for r in contract.columns if r.source_name not in present]
    if missing:
        raise ContractViolation(
            f"{contract.table}: {file_label} lacks required column(s) {', '.join(missing)} "
            f"(found: {', '.join(schema.names)})"
        )
    declared = {r.source_name for r in contract.columns}
    return [n for n in schema.names if n not in declared and n != ROW]


def validate_batch(
    con: duckdb.DuckDBPyConnection, batch: pa.Table, contract: Contract, ctx: ValidationContext
) -> BatchResult:
    """Split one batch (raw columns plus `_row_number`) by the contract."""
    sql = compile_contract(contract, batch.schema, ctx)
    con.register("batch", batch)
    try:
        result = con.sql(sql).to_arrow_table()
    finally:
        con.unregister("batch")
    names = [r.name for r in contract.columns]
    rejected_mask = pa.array([False] * result.num_rows, pa.bool_())
    issue_parts = []
    for rule in contract.columns:
        reason = result.column(_REASON + rule.name)
        has = pc.is_valid(reason)
        if not pc.any(has).as_py():
            continue
        rejects = rule.on_invalid == "reject" or rule.name in contract.key
        if rejects:
            rejected_mask = pc.or_(rejected_mask, has)
        rows = result.filter(has)
        split = pc.split_pattern(rows.column(_REASON + rule.name), chr(31), max_splits=1)
        issue_parts.append(
            pa.table(
                {
                    "row_number": rows.column(ROW).cast(pa.int64()),
                    "field": pa.array([rule.name] * rows.num_rows, pa.string()),
                    "check": pc.list_element(split, 0),
                    "reason": pc.list_element(split, 1),
                    "value": rows.column(_VALUE + rule.name),
                    "action": pa.array(["rejected" if rejects else "nulled"] * rows.num_rows, pa.string()),
                },
                schema=ISSUE_SCHEMA,
            )
        )
        if not rejects:  # the value is emptied, the row stays
            idx = result.schema.get_field_index(rule.name)
            col = result.column(idx)
            result = result.set_column(idx, rule.name, pc.if_else(has, pa.nulls(len(col), col.type), col))
    accepted = result.filter(pc.invert(rejected_mask)).select([ROW, *names])
    rejected = batch.filter(rejected_mask)
    issues = pa.concat_tables(issue_parts) if issue_parts else ISSUE_SCHEMA.empty_table()
    return BatchResult(accepted, rejected, issues)
