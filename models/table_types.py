"""What each column of a user's own table holds, decided from its values, and why.

A CSV is read as text (`read_text_table`), so nothing is decided by the parser: a
charges column with a few blank cells stays numeric (the blanks and any stray text
become missing, and the share is reported), ids keep their leading zeros, and a US or
European date is recognised as a date instead of becoming a category. `type_columns`
decides one type per column (numeric, boolean, date, id, text, categorical or drop)
and one role (id, label, split, duration, weight, feature, dropped), with the reason,
so the schema can be shown and logged before anything is trained. A `--schema` file
(`read_schema_overrides`) overrides the inference per column. Only pandas and NumPy
are imported here: the command line checks a table with it in a second or two,
before any orchestration starts.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml

from features.data_classes import DATA_CLASSES, DIRECT_IDENTIFIER, infer_data_class

ColumnType = Literal["numeric", "categorical", "boolean", "date", "id", "text", "drop"]
COLUMN_TYPES: tuple[str, ...] = ("numeric", "categorical", "boolean", "date", "id", "text", "drop")
Role = Literal["id", "label", "split", "duration", "weight", "feature", "dropped"]

STRING = pd.StringDtype("pyarrow")
MISSING_TOKENS = frozenset({"", "na", "n/a", "null", "nan", "?"})  # compared stripped and lower-cased
NUMERIC_SHARE = 0.95  # a column is numeric when at least this share of its non-blank cells parse as numbers
MAX_CATEGORIES = 200  # more distinct strings than this is free text, not a category
MAX_MISSING = 0.98  # a column missing on more rows than this is left out
MIN_DISTINCT_FOR_ID = 20  # all-distinct strings on at least this many rows look like an identifier
TRUE_VALUES = frozenset({"1", "true", "yes", "y", "t", "1.0"})
FALSE_VALUES = frozenset({"0", "false", "no", "n", "f", "0.0"})
_TIME_NAME = re.compile(r"(time|date|timestamp|epoch|period|quarter|_at$|_ts$|^ts$|^dt$|_dt$|_on$)", re.IGNORECASE)
_ID_NAME = re.compile(r"((^|[_\s.-])(id|key|num|number|no|code)$)|([a-z](ID|Id)$)|(^ID$)")
_ISO = re.compile(r"^\d{4}[-/]\d{1,2}[-/]\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$")
_MONTHS = r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\b"
_MONTH_NAME = re.compile(rf"(?i){_MONTHS}.*\d|\d.*{_MONTHS}")  # a month's name beside a number
_FORMATTED_NUMBER = r"^[-+]?[$€£¥]?\s?[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?\s?%?$"
_DMY = re.compile(
    r"^(?P<a>\d{1,2})(?P<sep>[/.-])(?P<b>\d{1,2})[/.-](?P<y>\d{4}|\d{2})"
    r"(?:[ T]+(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?\s*(?P<ampm>[AaPp][Mm])?)?$"
)


class TableTypeError(ValueError):
    """A column cannot be read as its role needs; the message names the file, the column and the reason."""


@dataclass(frozen=True)
class ColumnReport:
    """One column's inferred type, its role in training, and why (printed and logged before training)."""

    column: str
    type: str
    role: str
    note: str = ""
    data_class: str = ""  # features.data_classes: set by --schema, else inferred from the name and type

    def as_row(self) -> dict[str, str]:
        """JSON-ready, for the console table and the run's schema artifact."""
        return {"column": self.column, "type": self.type, "role": self.role, "class": self.data_class,
                "note": self.note}  # fmt: skip


@dataclass(frozen=True)
class TypedTable:
    """A table with its columns converted to their inferred types, and the report of each decision.

    `frame` holds ids as strings, numbers and 0/1 booleans as floats, dates as datetimes
    and categories as strings; `numeric` and `categorical` are the model's feature columns.
    """

    frame: pd.DataFrame
    columns: tuple[ColumnReport, ...]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def dropped(self) -> dict[str, str]:
        """Columns left out as features (not ids, labels or other roles), with the reason."""
        return {c.column: c.note for c in self.columns if c.role == "dropped"}

    def describe(self) -> list[dict[str, str]]:
        """One row per column: column, type, role, class, note."""
        return [c.as_row() for c in self.columns]

    @property
    def data_classes(self) -> dict[str, str]:
        """Each column's data class."""
        return {c.column: c.data_class for c in self.columns}


# ---------------------------------------------------------------- reading (I/O)


def read_text_table(path: Path) -> pd.DataFrame:
    """A delimited text file as strings (missing cells NaN): the separator sniffed, runs of spaces understood.

    Leading comment lines (starting with '#') are skipped; a file without a header (its first
    row all numbers) gets columns column_1, column_2, ... Nothing is converted: `type_columns`
    decides each column's type from its values.
    """
    lines = _head(path)
    skip = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), len(lines))
    sep = detect_separator([line for line in lines[skip:] if line.strip()])
    if sep is None:
        raise TableTypeError(f"{path}: cannot tell how columns are separated (tried , ; tab | and runs of spaces)")
    frame = _read_delimited(path, sep, skip, header=True)
    names = [str(c).strip() for c in frame.columns]
    if len(names) >= 2 and pd.to_numeric(pd.Series(names), errors="coerce").notna().all():
        # A header of numbers is the first row of a file without one (MovieLens' u.data): name the columns.
        frame = _read_delimited(path, sep, skip, header=False)
        names = [f"column_{i}" for i in range(1, frame.shape[1] + 1)]
    frame.columns = names
    return frame.reset_index(drop=True).apply(_blank_to_missing)


def _read_delimited(path: Path, sep: str, skip: int, header: bool) -> pd.DataFrame:
    """Every cell as text (nothing parsed), UTF-8 or else Latin-1."""
    try:
        return _read_csv(path, sep, skip, header, "utf-8-sig")
    except UnicodeDecodeError:
        return _read_csv(path, sep, skip, header, "latin-1")


def _read_csv(path: Path, sep: str, skip: int, header: bool, encoding: str) -> pd.DataFrame:
    return pd.read_csv(
        path, sep=sep, dtype=str, keep_default_na=False, na_filter=False, encoding=encoding, skiprows=skip,
        header=0 if header else None, engine="c" if sep == r"\s+" or len(sep) == 1 else "python",
    )  # fmt: skip


def _head(path: Path, lines: int = 50) -> list[str]:
    with path.open("rb") as f:
        raw = [f.readline() for _ in range(lines)]
    return [line.decode("utf-8", errors="replace").rstrip("\r\n") for line in raw if line]


def detect_separator(lines: list[str]) -> str | None:
    r"""The column separator of these first lines: one of , ; tab |, or r'\s+' for whitespace-aligned text.

    A separator fits when the header splits into at least two fields with it (quotes
    respected) and at least 90% of the data lines into about as many (`_fitting_width`). The
    fitting one-character separator giving the most columns wins; runs of spaces are tried
    only when none fits.
    """
    if not lines:
        return None
    widths: dict[str, int] = {}
    for sep in (",", "\t", ";", "|"):
        try:
            counts = [len(row) for row in csv.reader(lines, delimiter=sep)]
        except csv.Error:  # e.g. a field longer than the csv module allows: not this separator
            continue
        if (width := _fitting_width(counts)) is not None:
            widths[sep] = width
    if widths:
        return max(widths, key=lambda s: widths[s])
    if _fitting_width([len(line.split()) for line in lines]) is not None:
        return r"\s+"
    if not any(c in line for line in lines for c in ",;\t|"):
        return ","  # a single column (its values may hold spaces)
    return None


def _fitting_width(counts: list[int]) -> int | None:
    """The header's field count when the data lines agree with it (see `detect_separator`), else None.

    Data lines may hold one field more than the header (row names) or fewer (trailing empty
    cells, read as missing), but most must be as wide as the header or one narrower.
    """
    header, data = counts[0], counts[1:] or counts
    if header < 2:
        return None
    fits = sum(2 <= n <= header + 1 for n in data) >= 0.9 * len(data)
    wide = sum(n >= header - 1 for n in data) >= 0.9 * len(data)
    return header if fits and wide else None


def _blank_to_missing(values: pd.Series) -> pd.Series:
    """Values as Arrow-backed strings, stripped; missing values and the missing tokens ('', NA, N/A, null, NaN, ?) NA.

    Arrow's string kernels keep a wide table's checks to seconds (Python string methods take ten times longer).
    """
    text = (values if values.dtype == STRING else values.astype(STRING)).str.strip()
    return text.mask(text.str.lower().isin(MISSING_TOKENS))


def _objects(values: pd.Series) -> pd.Series:
    """Arrow strings as Python objects (NaN missing), as the rest of the platform holds text."""
    if values.dtype != STRING:
        return values
    return pd.Series(values.to_numpy(dtype=object, na_value=np.nan), index=values.index, name=values.name)


def _floats(values: pd.Series) -> pd.Series:
    """Numbers as float64 (anything unparsable NaN)."""
    return pd.to_numeric(_objects(values), errors="coerce").astype("float64")


def _sample(known: pd.Series, size: int = 5000) -> pd.Series:
    """Evenly spaced values of a long column: enough to decide its type, cheap to test."""
    return known.iloc[:: max(1, len(known) // size)]


def _zero_one(lowered: pd.Series) -> pd.Series:
    """Lower-cased boolean words as 1.0 / 0.0 (missing NaN)."""
    return lowered.isin(TRUE_VALUES).astype("float64").where(lowered.notna().to_numpy(), np.nan)


def read_schema_overrides(path: Path) -> dict[str, str]:
    """The column types a `--schema` file sets (see `read_schema`)."""
    return read_schema(path)[0]


def read_schema(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A `--schema` file (YAML or JSON), checked: (column -> type, column -> data class).

    Each column maps to a type (numeric, date:%d/%m/%Y, ...), a data class (direct_identifier,
    quasi_identifier, sensitive, behavioural, inferred), or both as `{type: ..., class: ...}`.
    """
    if not path.is_file():
        raise TableTypeError(f"--schema {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise TableTypeError(f"--schema {path} cannot be parsed: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TableTypeError(f"--schema {path}: expected a mapping of column -> type ({', '.join(COLUMN_TYPES)})")
    overrides: dict[str, str] = {}
    classes: dict[str, str] = {}
    for column, value in data.items():
        if isinstance(value, dict):
            unknown_keys = sorted(set(map(str, value)) - {"type", "class"})
            if unknown_keys:
                raise TableTypeError(
                    f"--schema {path}: column {column!r}: unknown key(s) {unknown_keys}; use type, class"
                )
            kind, data_class = value.get("type"), value.get("class")
            if "class" in value and data_class not in DATA_CLASSES:
                raise TableTypeError(
                    f"--schema {path}: column {column!r} has unknown data class {data_class!r}; "
                    f"use one of {', '.join(DATA_CLASSES)}"
                )
        elif str(value) in DATA_CLASSES:
            kind, data_class = None, str(value)
        else:
            kind, data_class = value, None
        if kind is not None:
            if str(kind).split(":", 1)[0] not in COLUMN_TYPES:
                raise TableTypeError(
                    f"--schema {path}: column {column!r} has unknown type {kind!r}; use one of "
                    f"{', '.join(COLUMN_TYPES)} (or a data class: {', '.join(DATA_CLASSES)})"
                )
            overrides[str(column)] = str(kind)
        if data_class is not None:
            classes[str(column)] = str(data_class)
    return overrides, classes


# ---------------------------------------------------------------- inference (pure)


def type_columns(
    frame: pd.DataFrame,
    roles: Mapping[str, Role],
    source: str,
    overrides: Mapping[str, str] | None = None,
    schema_file: str = "--schema",
    options: Mapping[str, str] | None = None,
    classes: Mapping[str, str] | None = None,
) -> TypedTable:
    """Each column's type from its values (or `overrides`), converted; its role; its data class; and why.

    A column's data class is `classes`' (a `--schema` file's), else inferred from its name and
    type (`features.data_classes.infer_data_class`); a direct identifier is never a feature.

    `roles` names the id, label, split, duration and weight columns (the rest are
    candidate features). Id columns are always strings. A split column must be dates; a
    duration or weight column non-negative numbers. `source` (the file) starts every error;
    `options` names the command-line option that gave a role column (e.g. '--split-by'), for the errors.
    """
    overrides = dict(overrides or {})
    classes = dict(classes or {})
    unknown = [c for c in [*overrides, *classes] if c not in frame.columns]
    if unknown:
        raise TableTypeError(f"{schema_file}: column {unknown[0]!r} is not in {source}; it has {list(frame.columns)}")
    out: dict[str, pd.Series] = {}
    reports: list[ColumnReport] = []
    numeric: list[str] = []
    categorical: list[str] = []
    for col in frame.columns:
        name = str(col)
        role = roles.get(name, "feature")
        where = f"{source}: {(options or {}).get(name, 'column')} {name!r}"
        values, kind, note = _infer(frame[col], name, role, overrides.get(name), where)
        values = _objects(values)
        out[name] = values
        final_role, why = _feature_role(values, kind, note, role)
        data_class = classes.get(name) or infer_data_class(name, kind)
        if final_role == "feature" and data_class == DIRECT_IDENTIFIER:
            final_role = "dropped"
            said = " (class from --schema)" if name in classes else ""
            why = "; ".join(p for p in (why, f"a direct identifier, never a feature{said}") if p)
        if final_role == "feature":
            (numeric if kind == "numeric" or (kind == "boolean" and values.dtype == float) else categorical).append(
                name
            )
        reports.append(ColumnReport(name, kind, final_role, why, data_class))
    return TypedTable(pd.DataFrame(out, index=frame.index), tuple(reports), tuple(numeric), tuple(categorical))


def _feature_role(values: pd.Series, kind: str, note: str, role: str) -> tuple[str, str]:
    """The role a column ends with, and the note: a candidate feature may be left out here, with the reason."""
    if role != "feature":
        return role, note
    if kind in ("drop", "id", "text", "date"):
        reason = {
            "drop": "left out (--schema)",
            "id": "an identifier, not a feature",
            "text": "free text",
            "date": "a date is never a feature (derive ages or recencies from it)",
        }[kind]
        return "dropped", "; ".join(p for p in (note, reason) if p)
    missing = float(values.isna().mean()) if len(values) else 1.0
    if missing > MAX_MISSING:
        return "dropped", f"{missing:.0%} missing"
    distinct = values.nunique(dropna=True)
    if distinct <= 1:
        value = values.dropna().iloc[0] if distinct else None
        shown = "" if value is None else f" ({value!r})" if isinstance(value, str) else f" ({value})"
        return "dropped", f"constant{shown}"
    if kind == "categorical" and distinct > MAX_CATEGORIES:
        return "dropped", f"free text ({distinct} distinct values, more than {MAX_CATEGORIES})"
    return "feature", note


def _infer(raw: pd.Series, name: str, role: str, override: str | None, where: str) -> tuple[pd.Series, str, str]:
    """(converted values, type, note) of one column; `where` (the file and column) starts every error."""
    if role == "id" or override == "id":
        return _as_ids(raw), "id", ""
    if override is not None:
        return _forced(raw, override, where)
    if role == "split":
        return _as_split(raw, name, where)
    if role in ("duration", "weight"):
        return _as_amounts(raw, role, where)
    if role == "label":
        text = _text(raw)
        return text, "boolean" if _boolean_kind(text) else "categorical", ""
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype("float64"), "boolean", ""
    if pd.api.types.is_datetime64_any_dtype(raw):
        return raw, "date", ""
    if pd.api.types.is_numeric_dtype(raw):
        return _typed_numbers(raw, name)
    return _infer_text(_text(raw), name)


def _text(raw: pd.Series) -> pd.Series:
    """Values as stripped Arrow strings, missing tokens NA (any dtype in)."""
    return _blank_to_missing(raw)


def _as_ids(raw: pd.Series) -> pd.Series:
    """Ids as strings ('007' stays '007'; a Parquet integer 7 becomes '7'), missing as NaN."""
    if pd.api.types.is_float_dtype(raw) and raw.dropna().eq(raw.dropna().round()).all():
        raw = raw.astype("Int64")  # 7.0 (a float column with gaps) is the id '7'
    return _text(raw)


def _forced(raw: pd.Series, kind: str, where: str) -> tuple[pd.Series, str, str]:
    base, _, fmt = kind.partition(":")
    note = "set by --schema"
    if base == "numeric":
        numbers, unparsed = _parse_numbers(raw if pd.api.types.is_numeric_dtype(raw) else _text(raw))
        return numbers, "numeric", "; ".join(p for p in (note, unparsed) if p)
    if base == "date":
        if fmt:
            text = _text(raw)
            formatted = pd.to_datetime(_objects(text), format=fmt, errors="coerce")
            unmatched = int((formatted.isna() & text.notna()).sum())
            if unmatched:
                raise TableTypeError(f"{where}: {unmatched} value(s) do not match the --schema date format {fmt!r}")
            return formatted, "date", f"{note} ({fmt})"
        dates, how = _parse_dates(raw, where, time_column=True)
        if dates is None:
            raise TableTypeError(f"{where} is set to date by --schema but {how}")
        return dates, "date", f"{note} ({how})"
    if base == "boolean":
        lowered = _text(raw).str.lower()
        unknown = lowered.notna() & ~lowered.isin(TRUE_VALUES | FALSE_VALUES)
        if unknown.any():
            raise TableTypeError(f"{where} is set to boolean by --schema but holds {lowered[unknown].iloc[0]!r}")
        return _zero_one(lowered), "boolean", note
    if base in ("categorical", "text", "drop"):
        return _text(raw), base, note
    raise TableTypeError(f"{where}: unknown type {kind!r}")  # read_schema_overrides checked it already


def _parse_numbers(values: pd.Series) -> tuple[pd.Series, str]:
    """Floats (unparsable cells missing) and a note on how many cells did not parse (blank or text)."""
    numbers = _floats(values)
    text = values.notna().to_numpy() & numbers.isna().to_numpy()
    blank = int(values.isna().sum())
    if not text.any() and not blank:
        return numbers, ""
    unparsed = blank + int(text.sum())
    share = unparsed / max(len(values), 1)
    if not text.any():
        return numbers, f"{blank} of {len(values)} ({share:.1%}) blank or NA: missing"
    parts = [f"{blank} blank"] if blank else []
    parts.append(f"{int(text.sum())} text, e.g. {', '.join(repr(str(v)) for v in values[text].unique()[:3])}")
    return numbers, f"unparsed {unparsed} of {len(values)} ({share:.1%}) set missing: {'; '.join(parts)}"


def _typed_numbers(raw: pd.Series, name: str) -> tuple[pd.Series, str, str]:
    """A numeric (Parquet) column: numbers, unless its name says time and its values are epoch seconds."""
    numbers = raw.astype("float64")
    if _TIME_NAME.search(name):
        parsed, how = _epoch(numbers)
        if parsed is not None:
            return parsed, "date", how
    return _numeric_or_id(numbers, name, "")


def _numeric_or_id(numbers: pd.Series, name: str, note: str) -> tuple[pd.Series, str, str]:
    """Numbers; a whole-number column whose values all differ and count up like row numbers is an identifier."""
    known = numbers.dropna()
    distinct = known.nunique()
    if distinct >= MIN_DISTINCT_FOR_ID and distinct == len(known) and known.eq(known.round()).all():
        span = known.max() - known.min() + 1
        if _ID_NAME.search(name) or span <= 1.1 * len(known):
            return numbers, "id", "; ".join(p for p in (note, f"all {distinct} values distinct whole numbers") if p)
    if known.isin([0.0, 1.0]).all() and distinct == 2:
        return numbers, "boolean", note
    return numbers, "numeric", note


def _boolean_kind(text: pd.Series) -> bool:
    values = set(text.dropna().str.lower().unique())
    return 1 <= len(values) <= 2 and values <= TRUE_VALUES | FALSE_VALUES


def _infer_text(text: pd.Series, name: str) -> tuple[pd.Series, str, str]:
    """A text column's type: boolean, numeric, date, id, free text or categorical."""
    known = text.dropna()
    if known.empty:
        return text, "categorical", "empty"
    lowered = set(known.str.lower().unique())
    if len(lowered) <= 2 and lowered <= TRUE_VALUES | FALSE_VALUES:
        if lowered <= {"0", "1", "true", "false", "0.0", "1.0"}:  # as JSON numbers and booleans serve them
            return _zero_one(text.str.lower()), "boolean", ""
        return text, "boolean", f"values {', '.join(sorted(map(str, known.unique())))}"
    if _floats(_sample(known)).notna().mean() >= NUMERIC_SHARE:
        parsed, note = _parse_numbers(text)
        if parsed.notna().sum() >= NUMERIC_SHARE * len(known):  # the sample spoke for the whole column
            if _TIME_NAME.search(name):
                epoch, how = _epoch(parsed)
                if epoch is not None:
                    return epoch, "date", how
            return _numeric_or_id(parsed, name, note)
    if _sample(known).str.match(_FORMATTED_NUMBER).mean() >= NUMERIC_SHARE:  # $1,234.50  12%  € 30
        parsed, note = _parse_numbers(text.str.replace(r"[$€£¥%\s,]", "", regex=True))
        if parsed.notna().sum() >= NUMERIC_SHARE * len(known):
            written = "numbers written with currency signs, thousands separators or %"
            return parsed, "numeric", "; ".join(p for p in (written, note) if p)
    dates, how = _parse_dates(text, name, time_column=bool(_TIME_NAME.search(name)))
    if dates is not None:
        return dates, "date", how
    if how.startswith("day/month order"):
        return text, "date", how
    distinct = int(known.nunique())
    words = known.str.contains(r"\s", regex=True).mean() >= 0.5  # sentences, not codes
    if distinct == len(known) and distinct >= MIN_DISTINCT_FOR_ID and not words:
        return text, "id", f"all {distinct} values distinct"
    if distinct > MAX_CATEGORIES or (distinct == len(known) and distinct >= MIN_DISTINCT_FOR_ID):
        return text, "text", f"{distinct} distinct values"
    return text, "categorical", ""


def _epoch(numbers: pd.Series, years: bool = False) -> tuple[pd.Series | None, str]:
    """Dates written as numbers, else None: epoch seconds or ms (1973 to 2286), YYYYMMDD, or (`years`) years."""
    known = numbers.dropna()
    if known.empty:
        return None, ""
    if known.between(1e8, 1e10).all():
        return pd.to_datetime(numbers, unit="s", errors="coerce"), "epoch seconds"
    if known.between(1e11, 1e13).all():
        return pd.to_datetime(numbers, unit="ms", errors="coerce"), "epoch ms"
    if not known.eq(known.round()).all():
        return None, ""
    digits = numbers.astype("Int64").astype(str).where(numbers.notna())
    if known.between(18_000_101, 22_001_231).all():
        compact = pd.to_datetime(digits, format="%Y%m%d", errors="coerce")
        if compact.notna().sum() >= NUMERIC_SHARE * known.size:
            return compact, "date YYYYMMDD"
    if years and known.between(1800, 2200).all():
        return pd.to_datetime(digits, format="%Y", errors="coerce"), "year"
    return None, ""


def _parse_dates(raw: pd.Series, where: str, time_column: bool) -> tuple[pd.Series | None, str]:
    """Dates from ISO, US (m/d/Y) or European (d/m/Y) text, with or without times; or (None, why not).

    The day/month order is read from the data: a first field above 12 means d/m, a second
    above 12 means m/d; with neither, the order is undecidable and the reason says so. Month
    names ('Jan 5, 2024') are read in any column; numbers (epoch, YYYYMMDD, years) and
    free forms such as quarters ('1974Q1') only in a `time_column` (given as the time split,
    or named like a time).
    """
    if pd.api.types.is_datetime64_any_dtype(raw):
        return raw, "date"
    if pd.api.types.is_numeric_dtype(raw):
        numbers = raw.astype("float64")
    else:
        text = _text(raw)
        known = text.dropna()
        if known.empty:
            return None, "it is empty"
        sample = _sample(known)
        if sample.str.match(_ISO.pattern).mean() >= NUMERIC_SHARE:
            iso = _objects(text.str.replace("/", "-", regex=False))
            parsed = pd.to_datetime(iso, format="ISO8601", errors="coerce", utc=True).dt.tz_localize(None)
            return parsed, "date ISO" + _unparsed_note(text, parsed)
        parts = sample.str.extract(_DMY.pattern)
        if parts["a"].notna().mean() >= NUMERIC_SHARE:
            return _day_month(text, str(parts["sep"].dropna().iloc[0]))
        sampled = _floats(sample)
        if sampled.notna().mean() < NUMERIC_SHARE:
            named = sample.str.contains(_MONTH_NAME.pattern).mean() >= NUMERIC_SHARE
            if named or time_column:
                free = _free_form_dates(text)
                if free is not None:
                    return free, ("date with month names" if named else "date") + _unparsed_note(text, free)
            bad = sample[sampled.isna().to_numpy()].iloc[0]
            return None, f"{bad!r} is not a date (ISO, m/d/Y, d/m/Y, month names or epoch)"
        numbers = _floats(text)
    if time_column:
        stamps, how = _epoch(numbers, years=True)
        if stamps is not None:
            return stamps, how
    return None, "numbers that are neither epoch seconds or ms, YYYYMMDD nor years"


def _free_form_dates(text: pd.Series) -> pd.Series | None:
    """Dates in whatever form pandas reads ('Jan-1-1995', '5 March 2024', '1974Q1'), when nearly all parse."""
    sample = _objects(_sample(text.dropna(), 200))
    with warnings.catch_warnings():  # pandas warns that it parses value by value: that is the point here
        warnings.simplefilter("ignore", UserWarning)
        if pd.to_datetime(sample, format="mixed", errors="coerce").notna().mean() < NUMERIC_SHARE:
            return None
        return pd.to_datetime(_objects(text), format="mixed", errors="coerce")


def _day_month(text: pd.Series, sep: str) -> tuple[pd.Series | None, str]:
    parts = text.str.extract(_DMY.pattern)
    a, b = _floats(parts["a"]), _floats(parts["b"])
    first_day, second_day = bool((a > 12).any()), bool((b > 12).any())
    if first_day and second_day:
        return None, "dates with both the first and the second field above 12 (mixed orders)"
    if not first_day and not second_day:
        return None, (
            f"day/month order undecidable (no field above 12): d{sep}m{sep}Y or m{sep}d{sep}Y? "
            f"say it in --schema, e.g. date:%d{sep}%m{sep}%Y"
        )
    day, month = (a, b) if first_day else (b, a)
    year = _floats(parts["y"])
    year = year.where(year >= 100, np.where(year < 69, 2000 + year, 1900 + year))  # strptime's %y rule
    hour = _floats(parts["h"]).fillna(0)
    pm = _objects(parts["ampm"].str.lower())
    hour = hour.where(pm.isna(), (hour % 12) + np.where(pm == "pm", 12, 0))
    stamp = pd.DataFrame({"year": year, "month": month, "day": day, "hour": hour,
                          "minute": _floats(parts["mi"]).fillna(0),
                          "second": _floats(parts["s"]).fillna(0)})  # fmt: skip
    parsed = pd.to_datetime(stamp.dropna(subset=["year", "month", "day"]), errors="coerce").reindex(text.index)
    order = f"d{sep}m{sep}Y" if first_day else f"m{sep}d{sep}Y"
    return parsed, f"date {order}" + _unparsed_note(text, parsed)


def _unparsed_note(text: pd.Series, parsed: pd.Series) -> str:
    bad = text.notna() & parsed.isna()
    if not bad.any():
        return ""
    n = int(text.notna().sum())
    return f"; unparsed {int(bad.sum())} of {n} ({bad.sum() / n:.1%}) set missing, e.g. {text[bad].iloc[0]!r}"


def _as_split(raw: pd.Series, name: str, where: str) -> tuple[pd.Series, str, str]:
    """A --split-by or --time column: dates on every row, or a one-line error saying why not."""
    parsed, how = _parse_dates(raw, where, time_column=True)
    if parsed is None:
        raise TableTypeError(f"{where} does not parse as dates: {how}")
    blank = int(parsed.isna().sum())
    if blank:
        raise TableTypeError(f"{where} has no readable date on {blank} of {len(parsed)} row(s)")
    return parsed, "date", how


def _as_amounts(raw: pd.Series, role: str, where: str) -> tuple[pd.Series, str, str]:
    """A --duration or --weight column: non-negative numbers on every row."""
    text = raw if pd.api.types.is_numeric_dtype(raw) else _text(raw)
    numbers = _floats(text)
    bad = text.notna().to_numpy() & numbers.isna().to_numpy()
    if bad.any():
        raise TableTypeError(f"{where} is not numeric: {int(bad.sum())} value(s) such as {text[bad].iloc[0]!r}")
    if numbers.isna().any():
        raise TableTypeError(f"{where} is blank on {int(numbers.isna().sum())} row(s)")
    if (numbers < 0).any():
        raise TableTypeError(
            f"{where} must not be negative: {int((numbers < 0).sum())} value(s) such as {numbers.min():g}"
        )
    return numbers, "numeric", ""
