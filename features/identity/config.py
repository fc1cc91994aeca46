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


class IdentityConfigError(ValueError):
    """The identity configuration is missing, unreadable or inconsistent."""


class SourceMapping(BaseModel):
    """One source table and which of its columns hold each identity field."""

    model_config = ConfigDict(extra="forbid")

    table: str
    id: str = Field(description="Column holding the source's own record id.")
    columns: dict[str, str] = Field(description="identity field -> source column")

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

    sources: list[SourceMapping] = Field(min_length=1)
    deterministic: DeterministicConfig = Field(default_factory=DeterministicConfig)
    survivorship: dict[str, AttributeRule]

    @model_validator(mode="after")
    def _check(self) -> IdentityConfig:
        tables = [s.table for s in self.sources]
        if len(set(tables)) != len(tables):
            raise ValueError(f"a source table is listed twice: {tables}")
        unknown = sorted(set(self.survivorship) - set(GOLDEN_ATTRIBUTES))
        if unknown:
            raise ValueError(f"survivorship: unknown attribute(s) {unknown}; known: {list(GOLDEN_ATTRIBUTES)}")
        missing = sorted(set(GOLDEN_ATTRIBUTES) - set(self.survivorship))
        if missing:
            raise ValueError(f"survivorship: no rule for attribute(s) {missing}")
        for name, rule in self.survivorship.items():
            if rule.with_ is not None:
                target = self.survivorship.get(rule.with_)
                if target is None or target.with_ is not None:
                    raise ValueError(
                        f"survivorship.{name}: 'with: {rule.with_}' must name an attribute that has its own rule"
                    )
        return self

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
