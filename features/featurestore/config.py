"""Feature-layer configuration: which lake tables feed each canonical activity source.

Feature definitions are written once against canonical sources (accounts, profiles,
products, transactions, tickets, surveys, web, offers) with canonical column names;
this file says which of your tables and columns those are. Bringing your own data is
an edit to a YAML file, not to the feature code. Without accounts, a customer is anyone
with a transaction (from their first one); without a catalogue, the products are the ones
transactions name; without `kind`, a transaction is a purchase, or a refund when its
amount is negative; with `quantity`, `amount` is the unit price.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from custintel.yaml_config import load_yaml_model
from features.data_classes import DataClass, check_data_class

SourceKind = Literal["accounts", "profiles", "products", "transactions", "tickets", "surveys", "web", "offers"]

# Canonical columns per source; the first ones listed as required must be mapped.
CANONICAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "accounts": ("opened_at", "closed_at"),
    "profiles": ("created_at", "segment", "region", "acquisition_channel"),
    "products": ("product_id", "is_plan", "is_recurring", "monthly_price"),
    "transactions": ("event_time", "arrival_time", "kind", "product", "amount", "quantity"),
    "tickets": ("event_time", "channel", "category", "first_contact_resolution", "resolved_at", "csat"),
    "surveys": ("event_time", "score"),
    "web": ("event_time", "arrival_time", "event_type", "page"),
    "offers": ("assigned_at", "group", "outcome", "outcome_window_end"),
    # From the identity layer's golden records (not configurable here): attributes for audits.
    "golden": ("birth_date", "gender"),
}
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "accounts": ("opened_at",),
    "profiles": ("created_at",),
    "products": ("product_id",),
    "transactions": ("event_time", "amount"),
    "tickets": ("event_time",),
    "surveys": ("event_time", "score"),
    "web": ("event_time", "event_type"),
    "offers": ("assigned_at", "group", "outcome"),
}
# Canonical codes the definitions test for.
CANONICAL_CODES: dict[tuple[str, str], tuple[str, ...]] = {
    ("transactions", "kind"): ("purchase", "plan_change", "discount", "refund"),
    ("web", "event_type"): ("session", "page_view", "micro_conversion", "self_service_failed"),
    ("offers", "group"): ("treatment", "control"),
}


class FeatureConfigError(ValueError):
    """The feature configuration is missing, unreadable or inconsistent."""


class SourceTable(BaseModel):
    """One lake table feeding a canonical source."""

    model_config = ConfigDict(extra="forbid")

    table: str
    record_table: str | None = Field(
        default=None, description="Identity source table whose ids `ref` holds (crosswalk key prefix)."
    )
    ref: str | None = Field(default=None, description="Column holding the identity record id.")
    columns: dict[str, str] = Field(description="canonical column -> lake column")
    values: dict[str, dict[str, str]] = Field(default_factory=dict, description="canonical column -> {code: canonical}")
    required: bool = True


class LabelConfig(BaseModel):
    """What churn means for this business, and the label horizons.

    `contractual` (subscriptions, telecom, banking): a customer churns when the last of
    their accounts closes. `non_contractual` (retail, e-commerce): nobody closes anything;
    `churn_<h>d` is "no purchase within h days of the cutoff", and time to churn is the
    time until the customer has gone `inactivity_days` without a purchase.
    """

    model_config = ConfigDict(extra="forbid")

    churn_definition: Literal["contractual", "non_contractual"] = Field(
        default="contractual",
        description="contractual: the last account closes; non_contractual: no purchase within the horizon.",
    )
    churn_horizons_days: list[int] = Field(default_factory=lambda: [30, 90], min_length=1)
    inactivity_days: int | None = Field(
        default=None,
        ge=1,
        description="non_contractual: days without a purchase after which a customer has churned (time to churn, "
        "survival); default the longest churn horizon.",
    )
    purchase_horizon_days: int = Field(default=90, ge=1)

    @model_validator(mode="after")
    def _positive(self) -> LabelConfig:
        if any(h < 1 for h in self.churn_horizons_days):
            raise ValueError("churn_horizons_days must be positive")
        if self.inactivity_days is not None and self.churn_definition != "non_contractual":
            raise ValueError("inactivity_days applies to churn_definition: non_contractual only")
        return self

    @property
    def lapse_days(self) -> int:
        """Days without a purchase that make a non-contractual customer churned."""
        return self.inactivity_days or max(self.churn_horizons_days)

    def definition(self) -> dict[str, object]:
        """The labels' definition as stored in the offline store's manifest.

        The contractual default keeps the shape stores were built with before non-contractual
        churn existed, so existing stores stay readable under the same version.
        """
        base: dict[str, object] = {
            "churn_horizons_days": list(self.churn_horizons_days),
            "purchase_horizon_days": self.purchase_horizon_days,
        }
        if self.churn_definition == "contractual":
            return base
        return {**base, "churn_definition": self.churn_definition, "inactivity_days": self.lapse_days}

    def describe_churn(self, horizon_days: int) -> str:
        """The churn label's meaning in words, for runs and cards."""
        if self.churn_definition == "contractual":
            return f"the customer's last account closes within {horizon_days} days of the cutoff (contractual)"
        return f"no purchase within {horizon_days} days of the cutoff (non-contractual)"


class QualityConfig(BaseModel):
    """Data-quality thresholds, and what a collapsed feature does to the build."""

    model_config = ConfigDict(extra="forbid")

    min_rows: int = Field(default=100, ge=1)
    collapsed: Literal["warn", "fail"] = Field(
        default="warn",
        description="A feature with one value for everyone (or none): warn drops it from its set with a "
        "warning and the reason in the manifest; fail fails the build naming it.",
    )


class FeatureConfig(BaseModel):
    """The whole feature-layer configuration."""

    model_config = ConfigDict(extra="forbid")

    sources: dict[SourceKind, list[SourceTable]]
    ticket_channels: list[str] = Field(default_factory=list)
    ticket_categories: list[str] = Field(default_factory=list)
    key_pages: list[str] = Field(default_factory=list)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    exclude_features: list[str] = Field(
        default_factory=list, description="Features not to build (names as in the feature sets), e.g. 'plan'."
    )
    classes: dict[str, DataClass] = Field(
        default_factory=dict,
        description="Feature name -> data class, overriding the class its definition declares (e.g. a region "
        "that identifies in a small market: sensitive). Every feature has a class; this only changes one.",
    )

    @model_validator(mode="before")
    @classmethod
    def _classes_named(cls, data: object) -> object:
        """An unknown class names the feature and the allowed values."""
        if isinstance(data, dict) and isinstance(data.get("classes"), dict):
            for name, value in data["classes"].items():
                check_data_class(value, f"classes: feature {name}")
        return data

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        for kind, tables in self.sources.items():
            for t in tables:
                where = f"sources.{kind} table {t.table!r}"
                unknown = sorted(set(t.columns) - set(CANONICAL_COLUMNS[kind]))
                if unknown:
                    raise ValueError(f"{where}: unknown column(s) {unknown}; known: {list(CANONICAL_COLUMNS[kind])}")
                missing = [c for c in REQUIRED_COLUMNS[kind] if c not in t.columns]
                if missing:
                    raise ValueError(f"{where}: required column(s) {missing} are not mapped")
                if kind != "products" and not (t.ref and t.record_table):
                    raise ValueError(f"{where}: 'ref' and 'record_table' are required (they link rows to customers)")
                bad_values = sorted(set(t.values) - set(t.columns))
                if bad_values:
                    raise ValueError(f"{where}: values given for unmapped column(s) {bad_values}")
        if not self.sources.get("accounts") and not self.sources.get("transactions"):
            raise ValueError(
                "sources.accounts or sources.transactions is required: accounts define who is a customer; "
                "without them a customer is anyone with a transaction"
            )
        if len(set(self.exclude_features)) != len(self.exclude_features):
            raise ValueError("exclude_features lists a feature twice")
        for name in ("ticket_channels", "ticket_categories", "key_pages"):
            codes: list[str] = getattr(self, name)
            if len(set(codes)) != len(codes):
                raise ValueError(f"{name} lists a code twice")
            bad = [c for c in codes if not c.replace("_", "").isalnum()]
            if bad:
                raise ValueError(f"{name}: codes must be letters, digits and '_' (they name features): {bad}")
        return self


def load_feature_config(path: Path | None = None) -> FeatureConfig:
    """Read and validate the feature configuration (the shipped default when `path` is None)."""
    return load_yaml_model(
        FeatureConfig,
        path,
        ("features.featurestore", "features.yaml"),
        FeatureConfigError,
        "feature config",
        "a 'sources' section",
    )
