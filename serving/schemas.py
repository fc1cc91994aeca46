"""Typed requests and responses of the scoring service.

Requests are strict: unknown fields, NaN and infinities are refused with the field named, and
types are not coerced: a number is a JSON number (never a boolean or a string), a category and a
key are strings, `k` and `top` integers. Whether a feature must be a number or a category depends
on the model: `Runtime.feature_row` checks it against the served model's inputs (422).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    model_validator,
)

FeatureValue = StrictFloat | StrictInt | StrictStr | None
CustomerKey = str


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_explicit_nulls(cls, data: Any) -> Any:
        """An optional field is left out, not sent as null (the OpenAPI document declares none nullable)."""
        if isinstance(data, dict):
            nulls = [k for k, v in data.items() if v is None and k in cls.model_fields]
            if nulls:
                raise ValueError(f"{nulls[0]}: null is not a value here; leave the field out")
        return data


class ScoreRequest(_Request):
    """One customer: by key (features from the online store), or with the features in the body."""

    # what `_something_to_score` enforces, declared in the OpenAPI document
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["customer_key"]},
                {"required": ["features"], "properties": {"features": {"minProperties": 1}}},
            ]
        }
    )

    customer_key: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    features: dict[str, FeatureValue] | None = Field(
        default=None, description="Model inputs by name; they override the online store's values."
    )

    @model_validator(mode="after")
    def _something_to_score(self) -> ScoreRequest:
        if self.customer_key is None and not self.features:
            raise ValueError("give a customer_key or features")
        return self


class BatchScoreRequest(_Request):
    """Many customers in one call."""

    customers: list[ScoreRequest] = Field(min_length=1)


class PropensityRequest(ScoreRequest):
    """One customer's purchase propensity for some products (default: every product not held)."""

    product_ids: list[str] | None = Field(default=None, min_length=1, max_length=500)
    top: StrictInt = Field(default=5, ge=1, le=500)


class BatchPropensityRequest(_Request):
    """Many customers' propensities in one call."""

    customers: list[PropensityRequest] = Field(min_length=1)


class RecommendRequest(_Request):
    """Top-k products for one customer."""

    customer_key: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    k: StrictInt = Field(default=10, ge=1, le=50)
    exclude: list[str] = Field(default_factory=list, max_length=500, description="Products not to offer now.")


class BatchRecommendRequest(_Request):
    """Many customers' recommendations in one call."""

    customers: list[RecommendRequest] = Field(min_length=1)


class ModelRef(BaseModel):
    """The model version that answered."""

    name: str
    version: str
    alias: str


class Reason(BaseModel):
    """One feature's contribution to a score (log-odds; positive pushes the score up)."""

    feature: str
    contribution: float
    value: FeatureValue = None


Status = Literal["scored", "suppressed", "not_found"]  # not_found: only in batch answers (alone: HTTP 404)


class ScoreResponse(BaseModel):
    """A churn score and its decision against the recorded threshold, or a suppression."""

    customer_key: str | None
    status: Status
    purpose: str
    suppressed_reason: str | None = None
    error: str | None = Field(default=None, description="Why a batch item could not be answered (not_found).")
    score: float | None = None
    decision: bool | None = Field(default=None, description="score >= threshold: contact this customer")
    threshold: float | None = None
    model: ModelRef
    reasons: list[Reason] = Field(default_factory=list)


class BatchScoreResponse(BaseModel):
    """One answer per customer, in request order."""

    results: list[ScoreResponse]


class ProductScore(BaseModel):
    """One product's purchase probability."""

    product_id: str
    score: float


class PropensityResponse(BaseModel):
    """A customer's products by purchase probability, or a suppression."""

    customer_key: str | None
    status: Status
    purpose: str
    suppressed_reason: str | None = None
    error: str | None = Field(default=None, description="Why a batch item could not be answered (not_found).")
    products: list[ProductScore] = Field(default_factory=list)
    model: ModelRef


class BatchPropensityResponse(BaseModel):
    """One answer per customer, in request order."""

    results: list[PropensityResponse]


class Recommendation(BaseModel):
    """One recommended product."""

    product_id: str
    rank: int
    score: float
    source: str = Field(description="als, or popularity for a customer with too little history")


class RecommendResponse(BaseModel):
    """Top-k products after the business rules and frequency caps, or a suppression."""

    customer_key: str
    status: Status
    purpose: str
    suppressed_reason: str | None = None
    error: str | None = Field(default=None, description="Why a batch item could not be answered (not_found).")
    items: list[Recommendation] = Field(default_factory=list)
    fallback: bool = Field(default=False, description="served from popularity: too little history")
    capped: list[str] = Field(default_factory=list, description="left out: shown too often recently")
    model: ModelRef


class BatchRecommendResponse(BaseModel):
    """One answer per customer, in request order."""

    results: list[RecommendResponse]


class ServedModelInfo(BaseModel):
    """One model the service answers with."""

    family: str
    name: str
    version: str
    alias: str
    loaded_at: str
    threshold: float | None = None
    card: str | None = None


class SnapshotInfo(BaseModel):
    """A model's online inputs held in memory (`serving/snapshot.py`)."""

    model: str
    customers: int
    mib: float
    built_seconds: float


class ModelsResponse(BaseModel):
    """What is served, and whether the registry could be reached at the last poll."""

    status: Literal["ok", "degraded"]
    detail: str | None = None
    models: list[ServedModelInfo]
    snapshots: list[SnapshotInfo] = Field(
        default_factory=list, description="Models whose inputs are held in memory for batch scoring."
    )
    decision_policy: PolicyRef | None = Field(
        default=None, description="The decision policy /decide answers with (source file: none promoted yet)."
    )
    decision_policy_detail: str | None = Field(
        default=None, description="Why the last poll for a promoted decision policy did not take (if it did not)."
    )


# --- decisions (issue 21): /decide, /decide/batch, /outcomes ----------------------------------------------------

Channel = Literal["web", "app", "call_centre", "email"]
OutcomeEvent = Literal["impression", "click", "accept", "decline", "conversion", "complaint", "feedback"]
KEY_PATTERN = r"^[A-Za-z0-9_.:-]+$"


ContextValue = Annotated[StrictStr, StringConstraints(max_length=200)]
BatchKey = Annotated[StrictStr, StringConstraints(min_length=1, max_length=64, pattern=KEY_PATTERN)]


class DecideRequest(_Request):
    """One customer in a live interaction on a channel, with what the caller knows of the contact."""

    customer_key: str = Field(min_length=1, max_length=64, pattern=KEY_PATTERN)
    channel: Channel
    context: dict[str, ContextValue] = Field(
        default_factory=dict,
        max_length=20,
        description="What the caller knows of this contact, e.g. {'reason': 'failed_self_service'}; the policy's "
        "service-recovery rules read `reason`, the agent prompt may quote the values.",
    )


class DecideBatchRequest(_Request):
    """A campaign: many customers on one channel, allocated under the channel's daily capacity."""

    customer_keys: list[BatchKey] = Field(min_length=1, description="Customer keys (at most the policy's max_batch).")
    channel: Channel

    @model_validator(mode="after")
    def _once_each(self) -> DecideBatchRequest:
        if len(set(self.customer_keys)) != len(self.customer_keys):
            raise ValueError("customer_keys: a customer appears more than once")
        return self


class ChosenAction(BaseModel):
    """One action chosen for the customer, with its priority P x V x L."""

    name: str
    kind: str
    channel: str
    priority: float
    p: float = Field(description="P: predicted effect (uplift, propensity; 1 for a fired service-recovery rule)")
    v: float = Field(description="V: value of one success")
    l: float = Field(description="L: the policy's lever")  # noqa: E741
    reasons: list[str] = Field(default_factory=list)


class PolicyRef(BaseModel):
    """The decision policy that decided: its name, registered version (None: the policy file) and digest."""

    name: str
    version: str | None
    source: Literal["registry", "file"]
    digest: str


class ExperimentRef(BaseModel):
    """An experiment arm the customer is in (their first decision under it logged their exposure)."""

    experiment: str
    version: int
    arm: str


class DecideResponse(BaseModel):
    """A decision: the action(s), why, the agent prompt, and what off-policy evaluation needs."""

    customer_key: str
    channel: str
    status: Literal["decided", "not_found"] = "decided"
    error: str | None = Field(default=None, description="Why a batch item could not be decided (not_found).")
    decision_id: str | None = Field(default=None, description="Quote it in /outcomes.")
    actions: list[ChosenAction] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    prompt: str = ""
    probability: float | None = Field(default=None, description="Logged probability of the first chosen action.")
    explored: bool = False
    fallback: bool = False
    fallback_reason: str | None = None
    expected_value: float | None = None
    policy: PolicyRef
    models: list[ModelRef] = Field(default_factory=list, description="The champions the decision read.")
    experiments: list[ExperimentRef] = Field(
        default_factory=list,
        description="The experiment arms the customer is in (empty: in none, or in the global holdout).",
    )


class AllocationRow(BaseModel):
    """How many customers of a batch got an action on a channel (per equity group), against the capacity."""

    action: str
    channel: str
    group: str | None = None
    count: int
    capacity: int | None = None


class DecideBatchResponse(BaseModel):
    """Per-customer decisions (request order), the allocation, and the value given up to the constraints."""

    results: list[DecideResponse]
    allocation: list[AllocationRow]
    value: float
    unconstrained_value: float
    value_given_up: float
    policy: PolicyRef


class OutcomeRequest(_Request):
    """What happened after a decision, or frontline feedback that its output is wrong (with a reason)."""

    decision_id: str = Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")
    event: OutcomeEvent
    customer_key: str = Field(min_length=1, max_length=64, pattern=KEY_PATTERN)
    reason: str | None = Field(
        default=None, min_length=1, max_length=500, description="Required for feedback: what is wrong with the output."
    )


class OutcomeResponse(BaseModel):
    """The outcome as recorded."""

    outcome_id: str
    decision_id: str
    event: str
    action: str
    at: str
