"""The serving policy: consent per purpose, regulated segments, frequency caps and what the inference log keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from custintel.yaml_config import load_yaml_model

Purpose = Literal["profiling", "marketing", "analytics"]


class ServingPolicyError(ValueError):
    """The serving policy file is missing or invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Purposes(_Strict):
    """The consent purpose each endpoint's answer is used for."""

    churn: Purpose = "profiling"
    propensity: Purpose = "marketing"
    recommend: Purpose = "marketing"


class Minors(_Strict):
    """Customers younger than `age_below` (from the golden record's birth date)."""

    age_below: int = Field(default=18, ge=0, le=30)
    action: Literal["suppress", "mask"] = "suppress"


class FrequencyCap(_Strict):
    """A product is shown to a customer at most `max_impressions` times in `window_days`."""

    max_impressions: int = Field(default=3, ge=1)
    window_days: float = Field(default=7, gt=0)


class AuditRules(_Strict):
    """What the inference log keeps."""

    customer_key: Literal["hash", "plain", "omit"] = "hash"
    log_suppressed: bool = False
    log_inputs: bool = Field(
        default=True,
        description="Keep the model inputs of each scored answer (and their cutoff): what monitoring compares "
        "with the training rows. Never for a masked (regulated) customer.",
    )


class ConsentSource(_Strict):
    """A lake table of consent events: which identity record each row belongs to, and its columns."""

    table: str
    record_table: str = Field(description="The identity records' source table (crosswalk record keys).")
    record_id: str
    purpose: str = "purpose"
    status: str = Field(default="status", description="granted or withdrawn")
    recorded_at: str = "recorded_at"


class SnapshotRules(_Strict):
    """Batch scoring from a model's inputs held in memory (`serving/snapshot.py`)."""

    enabled: bool = True
    max_customers: int = Field(
        default=2_000_000,
        ge=0,
        description="Beyond this many customers no snapshot is made (about 0.5 KiB each for 60 inputs) and batches "
        "read the online store.",
    )


class ServingPolicy(_Strict):
    """The whole serving policy."""

    purposes: Purposes = Field(default_factory=Purposes)
    unknown_consent: dict[Purpose, Literal["allow", "suppress"]] = Field(
        default_factory=dict,
        description="Per purpose, a customer with no recorded decision: allow (default) or suppress.",
    )
    minors: Minors = Field(default_factory=Minors)
    frequency_cap: FrequencyCap = Field(default_factory=FrequencyCap)
    audit: AuditRules = Field(default_factory=AuditRules)
    reasons: int = Field(default=3, ge=0, le=20)
    reasons_method: Literal["path", "treeshap"] = Field(
        default="path",
        description="How reasons are computed: path (what each feature's splits added along the row's paths "
        "through the trees; about the cost of a prediction) or treeshap (exact Shapley values; for a model of "
        "dozens of trees several times the cost of the score). Scores are the same either way.",
    )
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=600,
        description="A request not answered in this time gets 504; a batch computed later is neither served nor "
        "logged. Read when the service starts.",
    )
    absent_inputs: int = Field(
        default=0,
        ge=0,
        description="Model inputs a request scored from its body alone (no customer_key) may leave out; more get "
        "422 naming them. A value that is known to be missing is sent as null.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    consent_sources: list[ConsentSource] = Field(default_factory=list)
    snapshot: SnapshotRules = Field(default_factory=SnapshotRules)


def load_serving_policy(path: Path | None = None) -> ServingPolicy:
    """Read and validate the serving policy (the shipped default when `path` is None)."""
    return load_yaml_model(
        ServingPolicy, path, ("serving", "policy.yaml"), ServingPolicyError, "serving policy", "the serving rules"
    )
