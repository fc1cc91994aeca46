"""Feature profiles (for the manifest) and data-quality checks (that fail a build).

A build fails on impossible values (outside a feature's declared bounds, or not a
finite number) and on a collapsed feature (every value empty, or one value for every
customer) once the build has enough rows for that to mean something.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from features.featurestore.definitions import Feature


class FeatureQualityError(ValueError):
    """A built feature set failed its data-quality checks; the message names each feature."""


def profile_columns(table: pa.Table, columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per column: null rate, distinct values, and min, max, mean (numbers) or the most common value."""
    rows = table.num_rows
    out: dict[str, dict[str, Any]] = {}
    if not columns:
        return out
    with duckdb.connect() as con:
        con.register("t", table.select(list(columns)))
        for name in columns:
            col = f'"{name}"'
            numeric = pa.types.is_integer(table.schema.field(name).type) or pa.types.is_floating(
                table.schema.field(name).type
            )
            stats: dict[str, Any]
            if numeric:
                finite = f"isfinite(CAST({col} AS DOUBLE))"
                row = con.sql(
                    f"SELECT count({col}), count(DISTINCT {col}), min({col}) FILTER (WHERE {finite}), "
                    f"max({col}) FILTER (WHERE {finite}), avg({col}) FILTER (WHERE {finite}), "
                    f"count(*) FILTER (WHERE {col} IS NOT NULL AND NOT {finite}) FROM t"
                ).fetchall()[0]
                stats = {"min": _num(row[2]), "max": _num(row[3]), "mean": _num(row[4]), "non_finite": int(row[5])}
            else:
                row = con.sql(f"SELECT count({col}), count(DISTINCT {col}), mode({col}) FROM t").fetchall()[0]
                stats = {"most_common": None if row[2] is None else str(row[2])}
            nulls = rows - int(row[0])
            out[name] = {"null_rate": round(nulls / rows, 6) if rows else None, "distinct": int(row[1]), **stats}
    return out


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)


def _show(value: Any) -> str:
    """A number as people write it: 0 not 0.0, 1.5 as 1.5."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def quality_problems(
    set_key: str, features: Sequence[Feature], profile: dict[str, dict[str, Any]], rows: int, min_rows: int | None
) -> list[str]:
    """Problems of one built feature set, each naming `set.feature`, what is wrong and what was seen.

    Collapse is judged from `min_rows` rows on; with None it is not judged at all (bounds still are).
    """
    problems: list[str] = []
    for f in features:
        p = profile[f.name]
        where = f"{set_key}.{f.name}"
        if p.get("non_finite"):
            problems.append(f"{where}: {p['non_finite']} values are not finite numbers (NaN or infinity)")
        if f.lower is not None and p.get("min") is not None and p["min"] < f.lower:
            problems.append(f"{where}: impossible values below {_show(f.lower)} (min {_show(p['min'])})")
        if f.upper is not None and p.get("max") is not None and p["max"] > f.upper:
            problems.append(f"{where}: impossible values above {_show(f.upper)} (max {_show(p['max'])})")
        if min_rows is not None and (why := collapse(p, rows, min_rows)):
            problems.append(f"{where}: {why}")
    return problems


def collapse(profile: dict[str, Any], rows: int, min_rows: int) -> str | None:
    """Why a feature's profile is collapsed (every value empty, or one value for everyone), else None.

    Judged only from `min_rows` rows on: a tiny build is not called collapsed.
    """
    if rows < min_rows:
        return None
    if profile["null_rate"] == 1.0:
        return f"collapsed, every one of {rows} values is empty"
    if profile["distinct"] == 1:
        value = _show(profile.get("min", profile.get("most_common")))
        return f"collapsed, every non-empty value of {rows} is the same ({value})"
    return None
