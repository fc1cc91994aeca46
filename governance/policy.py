"""The governance policy: which groups are audited, the limits per model family, and what a failure does.

A versioned YAML file (the shipped `policy.yaml`, or `CUSTINTEL_GOVERNANCE_POLICY`),
validated into `GovernancePolicy`. Its digest (sha256 of the validated content) goes into
every gate decision, so a decision can always be traced to the exact rules it applied.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from custintel.yaml_config import load_yaml_model

FAMILIES = ("churn", "propensity", "uplift", "recommendation")
Family = Literal["churn", "propensity", "uplift", "recommendation"]
Purpose = Literal["profiling", "marketing", "analytics"]  # the consent purposes of the consent contract

# Between-group summaries the audit computes (see governance.audit). `*_ratio` are
# smallest / largest group value (1 = equal); `*_difference` largest - smallest.
CLASSIFIER_METRICS = {
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "tpr_difference",
    "fpr_difference",
    "precision_difference",
    "auc_difference",
    # smallest / largest of the groups' observed-to-predicted ratios (O/E): 1 when every group is
    # off by the same factor; overall calibration is the `calibration` check's (a performance check)
    "calibration_ratio",
}
# Metrics a policy may no longer name, and what to write instead (said in the error).
RETIRED_METRICS = {
    "calibration_gap": "it was the largest |observed - predicted| of any one group, so a model miscalibrated "
    "for everyone (a base-rate shift) read as unfair. Rename it to calibration_ratio (smallest / largest of the "
    "groups' observed-to-predicted ratios, e.g. {min: 0.8}) and limit overall calibration with the family's "
    "`calibration` rule (e.g. calibration: {observed_to_predicted: {min: 0.8, max: 1.25}})",
}
UPLIFT_METRICS = {"demographic_parity_difference", "demographic_parity_ratio"}  # per-row effects are unobserved
RECOMMENDER_METRICS = {"hit_rate_ratio", "hit_rate_difference", "coverage_ratio", "fallback_share_difference"}
PERFORMANCE_METRICS = {"auc", "pr_auc", "qini", "ndcg_at_k", "recall_at_k"}
CALIBRATED_FAMILIES = ("churn", "propensity")  # their scores are probabilities of an outcome the test rows hold


class PolicyError(ValueError):
    """The governance policy file is missing or invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limit(_Strict):
    """Bounds on one audit metric: fail below `min` or above `max`."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Limit:
        if self.min is None and self.max is None:
            raise ValueError("a limit needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def breached(self, value: float, margin: float = 0.0) -> str | None:
        """Why `value` breaks the limit by more than `margin` (sampling noise), or None."""
        if self.min is not None and value + margin < self.min:
            return f"{value:.3f} < {self.min:g}"
        if self.max is not None and value - margin > self.max:
            return f"{value:.3f} > {self.max:g}"
        return None


class SensitiveFeature(_Strict):
    """Where a sensitive attribute comes from. It is joined for the audit only."""

    source: Literal["golden_records", "features"] = Field(
        description="golden_records: the identity store's golden record; features: a column of the test rows."
    )
    column: str = Field(min_length=1)
    age_bands: list[int] | None = Field(
        default=None, description="For a birth date: band edges in years, e.g. [25, 35, 50, 65] -> '<25', ..."
    )
    model_input_allowed: bool = Field(
        default=False, description="Whether a model may use it as an input; otherwise the gate fails a model that does."
    )

    @model_validator(mode="after")
    def _bands(self) -> SensitiveFeature:
        if self.age_bands is not None and (not self.age_bands or sorted(set(self.age_bands)) != self.age_bands):
            raise ValueError("age_bands must be a non-empty, strictly increasing list of ages")
        return self


class PerformanceRule(_Strict):
    """The challenger may not be worse than the champion on the same test rows beyond `tolerance`."""

    metric: str
    tolerance: float = Field(default=0.01, ge=0)

    @model_validator(mode="after")
    def _known(self) -> PerformanceRule:
        if self.metric not in PERFORMANCE_METRICS:
            raise ValueError(f"unknown performance metric {self.metric!r}; known: {sorted(PERFORMANCE_METRICS)}")
        return self


class CalibrationRule(_Strict):
    """Overall calibration on the test rows: observed rate against mean prediction, beyond sampling noise.

    A performance check, not a fairness one: a model off by the same factor for everyone
    (the base rate moved) fails here, waivably, while the fairness audit compares groups.
    """

    observed_to_predicted: Limit | None = Field(
        default=None, description="Band for observed rate / mean prediction (O/E), e.g. {min: 0.8, max: 1.25}."
    )
    max_gap: float | None = Field(default=None, gt=0, description="Largest |observed rate - mean prediction|.")

    @model_validator(mode="after")
    def _some_limit(self) -> CalibrationRule:
        if self.observed_to_predicted is None and self.max_gap is None:
            raise ValueError("a calibration rule needs `observed_to_predicted`, `max_gap` or both")
        return self


class DataQualityRule(_Strict):
    """What the training set must satisfy."""

    min_rows: int = Field(default=1000, ge=1)
    min_positives: int = Field(default=50, ge=0)
    max_missing_share: float = Field(
        default=0.98, gt=0, le=1, description="No input column may be missing in more than this share of rows."
    )
    max_duplicate_share: float = Field(default=0.0, ge=0, le=1, description="Rows repeating an (id, as-of) pair.")


class FamilyPolicy(_Strict):
    """The rules for one model family."""

    sensitive_features: list[str] = Field(min_length=1)
    intersections: list[list[str]] = Field(default_factory=list)
    selection: Literal["threshold", "top_share"] = Field(
        default="threshold",
        description="Who the model selects: score >= the recorded threshold, or the `top_share` highest scores.",
    )
    top_share: float = Field(default=0.1, gt=0, lt=1)
    fairness: dict[str, Limit] = Field(min_length=1)
    performance: PerformanceRule
    calibration: CalibrationRule | None = Field(
        default=None,
        description="Overall calibration limits (classifier families); without it calibration is reported only.",
    )
    data_quality: DataQualityRule = Field(default_factory=DataQualityRule)
    on_failure: Literal["block", "waiver"] = Field(
        default="block",
        description="block: a failed fairness or performance check stops the promotion; waiver: a named approver "
        "with a reason may let it through (data-quality and signature failures are never waivable).",
    )
    purpose: Purpose | None = Field(
        default=None,
        description="The consent purpose the family's use needs: training, validation, test, calibration and "
        "reference rows leave out customers who withdrew it before each row's cutoff (None: consent not applied).",
    )
    intended_use: str = Field(min_length=1)
    out_of_scope: list[str] = Field(default_factory=list)
    caveats: list[str] = Field(default_factory=list)


class ErasurePolicy(_Strict):
    """What an erasure request means for the model versions trained or tested on an erased person's rows."""

    retrain: Literal["required", "not_required"] = Field(
        default="not_required",
        description="required: a flagged version must be retrained before it serves again (the tag and the card "
        "say so); not_required: the flag informs, the model keeps what it learned.",
    )


class GovernancePolicy(_Strict):
    """The whole policy."""

    version: str = Field(min_length=1)
    owner: str = Field(min_length=1, description="Who answers for the models and this policy.")
    min_group_size: int = Field(
        default=100, ge=1, description="Smaller groups are reported but not gated (their rates are too noisy)."
    )
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1,
        description="A limit fails only when passed by more than sampling noise at this one-sided confidence "
        "(0.5: the raw value decides).",
    )
    sensitive_features: dict[str, SensitiveFeature] = Field(min_length=1)
    unknown_consent: dict[Purpose, Literal["allow", "exclude"]] = Field(
        default_factory=dict,
        description="Per purpose, training rows of a customer with no decision recorded before the cutoff: allow "
        "(default, kept) or exclude.",
    )
    families: dict[Family, FamilyPolicy]
    erasure: ErasurePolicy = Field(default_factory=ErasurePolicy)

    @model_validator(mode="after")
    def _consistent(self) -> GovernancePolicy:
        for name, family in self.families.items():
            named = {f for group in family.intersections for f in group} | set(family.sensitive_features)
            unknown = sorted(named - set(self.sensitive_features))
            if unknown:
                raise ValueError(
                    f"families.{name}: unknown sensitive feature(s) {unknown}; "
                    f"defined: {sorted(self.sensitive_features)}"
                )
            for group in family.intersections:
                if len(group) < 2:
                    raise ValueError(f"families.{name}.intersections: {group} needs two or more features")
            retired = sorted(set(family.fairness) & set(RETIRED_METRICS))
            if retired:
                raise ValueError(f"families.{name}.fairness.{retired[0]}: retired: {RETIRED_METRICS[retired[0]]}")
            known = {"recommendation": RECOMMENDER_METRICS, "uplift": UPLIFT_METRICS}.get(name, CLASSIFIER_METRICS)
            if family.calibration is not None and name not in CALIBRATED_FAMILIES:
                raise ValueError(
                    f"families.{name}.calibration: only families scored as probabilities of an observed outcome "
                    f"({', '.join(CALIBRATED_FAMILIES)}) have a calibration to limit"
                )
            bad = sorted(set(family.fairness) - known)
            if bad:
                raise ValueError(f"families.{name}.fairness: unknown metric(s) {bad}; known: {sorted(known)}")
        return self

    def family(self, name: str) -> FamilyPolicy:
        """The rules of one family; a family the policy does not cover cannot be promoted."""
        if name not in self.families:
            raise PolicyError(f"the policy has no rules for the {name!r} family; covered: {sorted(self.families)}")
        return self.families[name]

    @property
    def digest(self) -> str:
        """sha256 of the validated policy: the same rules give the same digest, whatever the file's layout."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def load_policy(path: Path | None = None) -> GovernancePolicy:
    """Read and validate the policy (the shipped default when `path` is None)."""
    return load_yaml_model(
        GovernancePolicy,
        path,
        ("governance", "policy.yaml"),
        PolicyError,
        "governance policy",
        "'version', 'owner', 'sensitive_features' and 'families'",
    )
