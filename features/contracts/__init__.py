"""Data contracts: what each source table must look like to enter the lake.

A contract is declarative (YAML, validated here) so a data owner can read and
change it without reading code; `features.ingest` compiles it to SQL.
"""

from __future__ import annotations

import datetime as dt
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.data_classes import DATA_CLASSES, DataClass, check_data_class

ColumnType = Literal["string", "int", "float", "bool", "date", "timestamp"]
DEFAULT_FORMATS: dict[str, list[str]] = {
    "date": ["%Y-%m-%d"],
    "timestamp": ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z"],
}
# Longest text value a column takes unless its contract says otherwise: far above any real name, address
# or ticket subject, far below a value that would bloat the lake and every report that shows it.
DEFAULT_MAX_TEXT_LENGTH = 1000
# `sep` of a file whose columns are separated by runs of spaces or tabs.
WHITESPACE = "whitespace"


class ColumnRule(BaseModel):
    """One column: where it comes from, its type, its data class and the checks it must pass."""

    # `class` in YAML (a Python keyword, so `data_class` here; both are accepted).
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(description="Name in the lake.")
    data_class: DataClass = Field(
        alias="class",
        description="What kind of personal data the column is (features.data_classes): "
        + ", ".join(DATA_CLASSES)
        + ". Decides what may be logged and exported.",
    )
    source: str | None = Field(default=None, description="Column name in the source file, if different.")
    type: ColumnType = "string"
    nullable: bool = True
    formats: list[str] | None = Field(default=None, description="strptime formats for dates and timestamps.")
    allowed: list[str] | None = Field(default=None, description="Allowed codes (after trimming).")
    map: dict[str, str] | None = Field(default=None, description="Source code -> lake code; keys are allowed.")
    references: str | None = Field(default=None, description="'table.column' whose values are allowed.")
    min: float | str | None = None
    max: float | str | None = None
    pattern: str | None = Field(default=None, description="Regular expression a string must match.")
    max_length: int | None = Field(
        default=None,
        ge=1,
        description="Most characters a text value may have (default: the contract's max_text_length).",
    )
    not_in_future: bool = Field(default=False, description="Must not be later than the drop's export time.")
    on_invalid: Literal["reject", "null"] = Field(
        default="reject",
        description="reject: the row goes to quarantine; null: the value is emptied, the row kept and "
        "the issue logged (for soft fields such as a birth date, where losing the row costs more).",
    )
    description: str = ""

    @property
    def source_name(self) -> str:
        """The column's name in the source file."""
        return self.source or self.name

    @property
    def date_formats(self) -> list[str]:
        """Formats tried in order for dates and timestamps."""
        return self.formats or DEFAULT_FORMATS.get(self.type, [])

    @model_validator(mode="before")
    @classmethod
    def _class_named(cls, data: object) -> object:
        """A missing or unknown class names the column and the allowed values (pydantic's own message would not)."""
        if isinstance(data, dict):
            check_data_class(data.get("class", data.get("data_class")), f"column {data.get('name', '?')}")
        return data

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:  # not a ValueError, so pydantic would let it escape unnamed
                raise ValueError(f"pattern {v!r} is not a valid regular expression: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ColumnRule:
        if self.formats and self.type not in ("date", "timestamp"):
            raise ValueError(f"column {self.name}: formats only apply to dates and timestamps")
        if self.not_in_future and self.type not in ("date", "timestamp"):
            raise ValueError(f"column {self.name}: not_in_future only applies to dates and timestamps")
        for bound in (self.min, self.max):
            if isinstance(bound, str):
                if self.type not in ("date", "timestamp"):
                    raise ValueError(f"column {self.name}: a text bound needs a date or timestamp column")
                dt.date.fromisoformat(bound[:10])
            elif bound is not None and self.type not in ("int", "float"):
                raise ValueError(f"column {self.name}: a numeric bound needs a numeric column")
        if self.references and "." not in self.references:
            raise ValueError(f"column {self.name}: references must be 'table.column'")
        return self


class Contract(BaseModel):
    """The contract of one source table."""

    table: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    system: str
    description: str = ""
    version: int = 1
    files: str = Field(description="Glob, relative to the drop folder, of the files holding the table.")
    format: Literal["csv", "parquet"] = "csv"
    sep: str = Field(
        default=",",
        description="Column separator: one character, or 'whitespace' for columns separated by runs of "
        "spaces or tabs (aligned text files; values then cannot hold spaces).",
    )
    header: bool = Field(
        default=True,
        description="The file's first row names the columns; false: it holds data, and the columns are "
        "the contract's, in order (by their source names).",
    )
    encoding: str = "utf-8"
    required: bool = Field(default=True, description="A drop without this table fails the ingestion.")
    key: list[str] = Field(default_factory=list, description="Columns whose values identify a row.")
    max_text_length: int = Field(
        default=DEFAULT_MAX_TEXT_LENGTH,
        ge=1,
        description="Most characters any text value of this table may have; a column's max_length overrides it.",
    )
    columns: list[ColumnRule]

    @model_validator(mode="before")
    @classmethod
    def _every_column_classed(cls, data: object) -> object:
        """A column without a class, or with an unknown one, is named with its table (one line)."""
        if isinstance(data, dict) and isinstance(data.get("columns"), list):
            for column in data["columns"]:
                if isinstance(column, dict):
                    where = f"{data.get('table', '?')}: column {column.get('name', '?')}"
                    check_data_class(column.get("class", column.get("data_class")), where)
        return data

    @field_validator("sep")
    @classmethod
    def _one_character_or_whitespace(cls, v: str) -> str:
        if v != WHITESPACE and len(v) != 1:
            raise ValueError(f"sep must be one character or '{WHITESPACE}', not {v!r}")
        return v

    @model_validator(mode="after")
    def _key_columns_exist(self) -> Contract:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.table}: duplicate column names")
        missing = [k for k in self.key if k not in names]
        if missing:
            raise ValueError(f"{self.table}: key columns {missing} are not declared")
        return self

    def max_length(self, rule: ColumnRule) -> int:
        """The most characters a text value of this column may have."""
        return rule.max_length or self.max_text_length

    def column(self, name: str) -> ColumnRule:
        """The rule for a column by its lake name."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def dependencies(self) -> set[str]:
        """Tables this contract's references point at."""
        return {c.references.split(".")[0] for c in self.columns if c.references}


class ContractSet(BaseModel):
    """All contracts of a deployment, in dependency order."""

    contracts: list[Contract]

    @model_validator(mode="after")
    def _known_references(self) -> ContractSet:
        tables = {c.table for c in self.contracts}
        if len(tables) != len(self.contracts):
            raise ValueError("two contracts declare the same table")
        for c in self.contracts:
            unknown = c.dependencies - tables
            if unknown:
                raise ValueError(f"{c.table}: references unknown tables {sorted(unknown)}")
        return self

    def ordered(self) -> list[Contract]:
        """Contracts with referenced tables first (a topological order)."""
        done: list[Contract] = []
        pending = {c.table: c for c in self.contracts}
        while pending:
            ready = [c for c in pending.values() if c.dependencies <= {d.table for d in done}]
            if not ready:
                raise ValueError(f"circular references among {sorted(pending)}")
            for c in sorted(ready, key=lambda c: c.table):
                done.append(c)
                del pending[c.table]
        return done

    def get(self, table: str) -> Contract:
        """One contract by table name."""
        for c in self.contracts:
            if c.table == table:
                return c
        raise KeyError(table)


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    where = ".".join(str(p) for p in loc)
    msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def load_contracts(folder: Path | None = None) -> ContractSet:
    """Load every `*.yaml` contract file in `folder` (default: the contracts shipped here)."""
    if folder is None:
        base = resources.files("features.contracts")
        texts = sorted((p.name, p.read_text()) for p in base.iterdir() if p.name.endswith(".yaml"))
    else:
        texts = sorted((p.name, p.read_text()) for p in Path(folder).glob("*.yaml"))
    contracts: list[Contract] = []
    for name, text in texts:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"contract file {name} is not valid YAML: {exc}") from exc
        items = doc.get("contracts", [doc]) if isinstance(doc, dict) else doc
        if not isinstance(items, list) or not items:
            raise ValueError(f"contract file {name} holds no contract (expected a mapping or a 'contracts' list)")
        for item in items:
            try:
                contracts.append(Contract.model_validate(item))
            except ValidationError as exc:  # one line: each problem where it is, without pydantic's banner
                problems = "; ".join(_problem(e["loc"], e["msg"]) for e in exc.errors())
                raise ValueError(f"contract file {name}: {problems}") from exc
            except ValueError as exc:
                raise ValueError(f"contract file {name}: {exc}") from exc
    return ContractSet(contracts=contracts)
