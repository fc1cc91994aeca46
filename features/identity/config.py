"""Identity-resolution configuration: which tables say who a customer is, and the rules.

Declarative (YAML, validated here) so that bringing your own tables, changing the
trust order or a survivorship rule is an edit to a file, not to code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from custintel.yaml_config import load_yaml_model

# Identity fields a source may provide (full_name is split into first and last name).
IDENTITY_FIELDS = (
    "first_name", "last_name", "email", "phone", "birth_date", "address",
    "postcode", "city", "state", "gender", "billing_key", "national_id",
)  # fmt: skip
SOURCE_FIELDS = (*IDENTITY_FIELDS, "full_name", "updated_at")
# Attributes a golden record carries.
GOLDEN_ATTRIBUTES = (
    "first_name", "last_name", "email", "phone", "birth_date", "gender", "address", "postcode", "city", "state",
)  # fmt: skip
DeterministicRule = Literal["email", "phone", "billing_key"]
SurvivorshipRule = Literal["most_trusted", "most_recent", "most_frequent", "non_null"]
DETERMINISTIC_RULES: tuple[DeterministicRule, ...] = ("email", "phone", "billing_key")
# match: deterministic rules, then the probabilistic model on what they left apart.
# ids_only: no model; each source id is a customer, linked to others only by the exact
# rules the `deterministic` section names (for sources with ids and no names).
IdentityMode = Literal["match", "ids_only"]
# Golden-record attributes each mappable source field feeds.
_FIELD_ATTRIBUTES: dict[str, tuple[str, ...]] = {"full_name": ("first_name", "last_name")}


class IdentityConfigError(ValueError):
    """The identity configuration is missing, unreadable or inconsistent."""


class SourceMapping(BaseModel):
    """One source table and which of its columns hold each identity field."""

    model_config = ConfigDict(extra="forbid")

    table: str
    id: str = Field(description="Column holding the source's own record id.")
    columns: dict[str, str] = Field(default_factory=dict, description="identity field -> source column")
    repeated_ids: bool = Field(
        default=False,
        description="The table holds many rows per id (e.g. one per purchase): each id is one record, "
        "taken from its most recently updated row (`updated_at`), else its last row.",
    )

    @model_validator(mode="after")
    def _check(self) -> SourceMapping:
        unknown = sorted(set(self.columns) - set(SOURCE_FIELDS))
        if unknown:
            raise ValueError(
                f"source {self.table!r}: unknown identity field(s) {unknown}; known: {list(SOURCE_FIELDS)}"
            )
        if "full_name" in self.columns and ({"first_name", "last_name"} & set(self.columns)):
            raise ValueError(f"source {self.table!r}: map either full_name or first_name/last_name, not both")
        return self


class DeterministicConfig(BaseModel):
    """Exact rules, and how many records may share a value before it stops identifying anyone."""

    model_config = ConfigDict(extra="forbid")

    rules: list[DeterministicRule] = Field(default_factory=lambda: list(DETERMINISTIC_RULES))
    max_group: int = Field(default=6, ge=2)


class AttributeRule(BaseModel):
    """How one golden-record attribute is chosen."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    rule: SurvivorshipRule | None = None
    with_: str | None = Field(default=None, alias="with", description="Take the value from this attribute's winner.")

    @model_validator(mode="after")
    def _one(self) -> AttributeRule:
        if (self.rule is None) == (self.with_ is None):
            raise ValueError("give exactly one of 'rule' or 'with'")
        return self


class IdentityConfig(BaseModel):
    """The whole identity-resolution configuration."""

    model_config = ConfigDict(extra="forbid")

    mode: IdentityMode = "match"
    sources: list[SourceMapping] = Field(min_length=1)
    deterministic: DeterministicConfig = Field(default_factory=DeterministicConfig)
    survivorship: dict[str, AttributeRule] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> IdentityConfig:
        tables = [s.table for s in self.sources]
        if len(set(tables)) != len(tables):
            raise ValueError(f"a source table is listed twice: {tables}")
        unknown = sorted(set(self.survivorship) - set(GOLDEN_ATTRIBUTES))
        if unknown:
            raise ValueError(f"survivorship: unknown attribute(s) {unknown}; known: {list(GOLDEN_ATTRIBUTES)}")
        missing = [a for a in GOLDEN_ATTRIBUTES if a in self.mapped_attributes and a not in self.survivorship]
        if missing:
            raise ValueError(f"survivorship: no rule for attribute(s) {missing} (a source maps them)")
        for name, rule in self.survivorship.items():
            if rule.with_ is not None:
                target = self.survivorship.get(rule.with_)
                if target is None or target.with_ is not None:
                    raise ValueError(
                        f"survivorship.{name}: 'with: {rule.with_}' must name an attribute that has its own rule"
                    )
        return self

    @property
    def mapped_attributes(self) -> set[str]:
        """Golden-record attributes some source maps (only these need a survivorship rule)."""
        fields = {f for s in self.sources for f in s.columns}
        return {a for f in fields for a in _FIELD_ATTRIBUTES.get(f, (f,))} & set(GOLDEN_ATTRIBUTES)

    @property
    def deterministic_rules(self) -> tuple[str, ...]:
        """The exact rules to run: as configured; in ids_only mode only those the config names."""
        if self.mode == "ids_only" and "deterministic" not in self.model_fields_set:
            return ()
        return tuple(self.deterministic.rules)

    @property
    def trust_order(self) -> list[str]:
        """Source tables, most trusted first."""
        return [s.table for s in self.sources]


def load_identity_config(path: Path | None = None) -> IdentityConfig:
    """Read and validate an identity configuration; the shipped default when `path` is None."""
    return load_yaml_model(
        IdentityConfig,
        path,
        ("features.identity", "identity.yaml"),
        IdentityConfigError,
        "identity config",
        "'sources' and 'survivorship'",
    )
