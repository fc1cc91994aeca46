"""Typed requests and responses of the scoring service.

Requests are strict: unknown fields, NaN and infinities are refused with the field named, and
types are not coerced: a number is a JSON number (never a boolean or a string), a category and a
key are strings, `k` and `top` integers. Whether a feature must be a number or a category depends
on the model: `Runtime.feature_row` checks it against the served model's inputs (422).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, model_validator

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
