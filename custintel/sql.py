"""Values pasted into SQL text (DuckDB, SQLite) where a statement cannot take them as parameters.

DuckDB's table functions (`read_parquet`, `COPY ... TO`) and settings (`SET temp_directory`)
take file names only as literals in the statement. A home or a source folder may hold a quote
(`/srv/o'brien/custintel`): every such value goes through `text`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def text(value: str | Path) -> str:
    """A SQL string literal: the value in single quotes, its own single quotes doubled."""
    return "'" + str(value).replace("'", "''") + "'"


def text_list(values: Iterable[str | Path]) -> str:
    """A DuckDB list of string literals, e.g. for `read_parquet([...])`."""
    return "[" + ", ".join(text(v) for v in values) + "]"
