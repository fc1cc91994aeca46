"""Next-best-action decision policies: typed, validated, versioned by their digest.

A policy file lists the actions a customer may be offered (their channels, consent purpose,
value, levers, contact caps and cool-downs, service-recovery triggers), each channel's daily
capacity, the exploration share, the equity floor and the fallback. It is validated into
`DecisionPolicy`; every problem raises `PolicyError` naming the field path and the reason, so a
reviewer can fix the file without reading code.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from custintel.settings import Settings
from custintel.yaml_config import error_message

Channel = Literal["web", "app", "call_centre", "email"]
Purpose = Literal["profiling", "marketing", "analytics"]
ActionKind = Literal["retention_offer", "cross_sell", "service_recovery", "none"]

CHANNELS: tuple[str, ...] = get_args(Channel)
PURPOSES: tuple[str, ...] = get_args(Purpose)
ACTION_KINDS: tuple[str, ...] = get_args(ActionKind)
SALES_KINDS = frozenset({"retention_offer", "cross_sell"})
DEFAULT_POLICY = ("decisions", "policy.yaml")


class PolicyError(ValueError):
    """A decision policy cannot be used; the message names the field path and the reason."""


def _one_of(options: tuple[str, ...], what: str) -> Any:
    """A before-validator that names the bad value and the allowed ones ("'fax' is not a channel")."""

    def check(value: Any) -> Any:
        if value not in options:
            raise ValueError(f"{value!r} is not {what} (one of {', '.join(options)})")
        return value

    return BeforeValidator(check)


ChannelName = Annotated[Channel, _one_of(CHANNELS, "a channel")]
PurposeName = Annotated[Purpose, _one_of(PURPOSES, "a consent purpose")]
KindName = Annotated[ActionKind, _one_of(ACTION_KINDS, "an action kind")]


class _Strict(BaseModel):
    """Unknown keys are errors (a typo must not silently switch a rule off); models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ActionSpec(_Strict):
    """One action the policy may choose: where it runs, what it needs, what it is worth, how often."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    kind: KindName
    purpose: PurposeName | None = Field(
        default=None, description="Consent purpose the action needs; None for service recovery and no action."
    )
    channels: list[ChannelName] = Field(min_length=1)
    target: Literal["uplift", "churn_risk"] = Field(
        default="uplift",
        description="Retention offer: P is the predicted uplift (persuadable customers first) or, for comparison, "
        "the churn risk (the merely risky first).",
    )
    value: float = Field(default=0.0, ge=0, description="Value of one success (currency), when no signal gives it.")
    value_signal: str | None = Field(
        default=None, description="Signal holding the customer's own value of one success (e.g. yearly value)."
    )
    cost: float = Field(default=0.0, ge=0, description="Cost of making the offer once (currency).")
    lever: float = Field(default=1.0, gt=0, description="Business weight in the priority P x V x L.")
    product: str | None = Field(default=None, description="Product offered (a one-product cross-sell).")
    products: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="A product family's cross-sell: product -> value of one sale when the caller gives no margin; "
        "the customer's best product not held is offered.",
    )
    prompt: str = Field(default="", max_length=500, description="Short agent prompt; {placeholders} allowed.")
    max_per_customer: int = Field(default=1, ge=1, description="Contacts with this action per customer ...")
    window_days: int = Field(default=30, ge=1, description="... within this many days (the contact cap).")
    cooldown_days: int = Field(default=0, ge=0, description="Days after one contact before the next.")
    triggers: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Service recovery: signal -> threshold; the action fires when any signal reaches its threshold.",
    )
    context_reasons: list[str] = Field(
        default_factory=list,
        description="Service recovery: the action also fires when the contact's context reason is one of these.",
    )

    @model_validator(mode="after")
    def _kind_rules(self) -> ActionSpec:
        """Each kind carries the fields its rules need, and only those."""
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels lists a channel twice")
        if self.kind in SALES_KINDS and self.purpose is None:
            raise ValueError(f"purpose: a {self.kind} needs a consent purpose")
        if self.kind in ("service_recovery", "none") and self.purpose is not None:
            raise ValueError(f"purpose: a {self.kind} action needs no consent purpose; remove it")
        if self.kind == "cross_sell" and not self.product and not self.products:
            raise ValueError("product: a cross_sell action needs the product (or the products) it offers")
        if self.product and self.products:
            raise ValueError("products: give one product or a family of products, not both")
        if self.kind != "cross_sell" and (self.product is not None or self.products):
            raise ValueError(f"product: only a cross_sell action offers a product, not a {self.kind}")
        if self.kind == "service_recovery" and not (self.triggers or self.context_reasons):
            raise ValueError("triggers: a service_recovery action needs triggers or context_reasons")
        if self.kind != "service_recovery" and (self.triggers or self.context_reasons):
            raise ValueError(f"triggers: only service_recovery actions have triggers, not a {self.kind}")
        if self.kind != "retention_offer" and self.target != "uplift":
            raise ValueError(f"target: only a retention_offer has a target, not a {self.kind}")
        if self.kind == "none" and (self.value or self.cost):
            raise ValueError("value: a 'none' action has no value or cost")
        return self

    def offered(self) -> dict[str, float]:
        """The products a cross-sell offers, each with its value when the caller gives no margin."""
        if self.product:
            return {self.product: self.value}
        return dict(self.products)


class EquitySpec(_Strict):
    """The equity check: allocation rates per group of `attribute`, per action kind."""

    attribute: str = Field(min_length=1, description="Protected attribute (a feature column, e.g. gender, age_band).")
    floor: float = Field(gt=0, le=1, description="Minimum ratio of the lowest to the highest group allocation rate.")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Significance of the sampling-noise test.")
    min_group_size: int = Field(default=30, ge=1, description="Groups with fewer eligible customers are not judged.")


class MinorsSpec(_Strict):
    """Customers under `age_below` get no consent-based (sales or profiling) actions."""

    age_below: int = Field(default=18, ge=1, le=30)
    action: Literal["suppress"] = "suppress"

    def applies(self, age_years: float | None) -> bool:
        """Whether a customer of this age is a minor here (an unknown age is not taken as a minor)."""
        return age_years is not None and age_years == age_years and age_years < self.age_below


class DecisionPolicy(_Strict):
    """A whole next-best-action policy: the actions, their limits, capacity, exploration, equity and fallback."""

    name: str = Field(default="custintel-nba", pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    description: str = ""
    actions: list[ActionSpec] = Field(min_length=1)
    capacity: dict[ChannelName, Annotated[int, Field(ge=0)]] = Field(
        description="Contacts per channel per day (no-action decisions use none)."
    )
    exploration: float = Field(default=0.05, ge=0, le=0.5, description="Share of decisions that explore.")
    equity: EquitySpec
    fallback: str = Field(description="Action chosen when nothing else is eligible or a champion is missing.")
    minors: MinorsSpec = Field(default_factory=MinorsSpec)
    signals: dict[str, str] = Field(default_factory=dict, description="Signal name -> feature column.")
    max_actions: int = Field(default=1, ge=1, le=5, description="Actions returned per decision.")

    @model_validator(mode="after")
    def _cross_checks(self) -> DecisionPolicy:
        """Names are unique, the fallback exists and needs no consent, every used channel has a capacity."""
        seen: set[str] = set()
        for i, action in enumerate(self.actions):
            if action.name in seen:
                raise ValueError(f"actions[{i}].name: {action.name!r} is used by an earlier action")
            seen.add(action.name)
            for signal in [*action.triggers, *([action.value_signal] if action.value_signal else [])]:
                if signal not in self.signals:
                    raise ValueError(f"actions[{i}]: signal {signal!r} is not defined under signals")
            missing = [c for c in action.channels if c not in self.capacity]
            if missing and action.kind != "none":
                raise ValueError(f"capacity: channel {missing[0]!r} (used by actions[{i}]) has no daily capacity")
        by_name = {a.name: a for a in self.actions}
        if self.fallback not in by_name:
            raise ValueError(f"fallback: {self.fallback!r} is not one of the actions ({', '.join(by_name)})")
        fallback = by_name[self.fallback]
        if fallback.purpose is not None:
            raise ValueError(f"fallback: {self.fallback!r} needs consent for {fallback.purpose}; a fallback needs none")
        used = {c for a in self.actions for c in a.channels}
        uncovered = sorted(used - set(fallback.channels))
        if uncovered:
            raise ValueError(f"fallback: {self.fallback!r} is not offered on {', '.join(uncovered)}")
        return self

    def feature_columns(self) -> list[str]:
        """The feature columns a caller reads to build customer states: the signals' and the equity attribute."""
        return list(dict.fromkeys([*self.signals.values(), self.equity.attribute]))

    def signal_values(self, row: Mapping[str, Any]) -> dict[str, float]:
        """The policy's signals from one customer's feature row (missing, empty or non-numeric values left out)."""
        values: dict[str, float] = {}
        for signal, column in self.signals.items():
            value = row.get(column)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                values[signal] = float(value)
        return values

    def action(self, name: str) -> ActionSpec:
        """The action called `name` (KeyError naming it otherwise)."""
        for a in self.actions:
            if a.name == name:
                return a
        raise KeyError(f"no action {name!r} in policy {self.name!r}")

    def canonical_json(self) -> str:
        """The policy as canonical JSON (sorted keys, no spaces): what the digest and the registry hold."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """sha256 of the canonical JSON: two files meaning the same policy share a digest."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


def parse_policy(data: Any, origin: str = "policy") -> DecisionPolicy:
    """Validate an already-parsed mapping into a `DecisionPolicy` (PolicyError naming each bad field)."""
    if not isinstance(data, dict):
        raise PolicyError(f"{origin} must hold a mapping with name, actions, capacity, equity and fallback")
    try:
        return DecisionPolicy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{origin}: " + "; ".join(error_message(e, "policy") for e in exc.errors())) from exc


def load_policy(path_or_text: Path | str | None = None) -> DecisionPolicy:
    """Read a decision policy from a file, from YAML text, or (None) the packaged default.

    A `Path` is a file; a `str` is YAML text unless it names an existing file (a one-line string
    without a colon is taken as a path). Raises `PolicyError` naming the field path and reason.
    """
    if path_or_text is None:
        package, name = DEFAULT_POLICY
        text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
        origin = f"the default {name}"
    elif isinstance(path_or_text, Path) or ("\n" not in path_or_text and ":" not in path_or_text):
        path = Path(path_or_text)
        if not path.is_file():
            raise PolicyError(f"decision policy {path} does not exist")
        text = path.read_text(encoding="utf-8")
        origin = str(path)
    else:
        text = path_or_text
        origin = "policy text"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{origin} is not valid YAML: {exc}") from exc
    return parse_policy(data, origin)


def default_policy_text() -> str:
    """The packaged default policy file's text (what `make demo` registers)."""
    package, name = DEFAULT_POLICY
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def policy_from_settings(settings: Settings) -> DecisionPolicy:
    """The policy `CUSTINTEL_DECISION_POLICY` names, or the packaged default when unset."""
    return load_policy(settings.decision_policy)
