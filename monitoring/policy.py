"""The monitoring policy: how drift is judged, what counts as a data-quality failure, what triggers a retrain.

A versioned YAML file (the shipped `policy.yaml`, or `CUSTINTEL_MONITORING_POLICY`), validated
into `MonitoringPolicy`. Its digest goes into every trigger decision.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from custintel.yaml_config import load_yaml_model

MONITORED = ("churn", "propensity", "recommendation")
Monitored = Literal["churn", "propensity", "recommendation"]
# Drift tests, named as Evidently names them; "auto" is Evidently's own choice per column.
DriftMethod = Literal["auto", "wasserstein", "jensenshannon", "psi", "ks", "chisquare", "z"]
PerformanceMetric = Literal["auc"]  # calibration and precision at the threshold are reported beside it
# Which logged training rows the served window is compared with (see monitoring.baseline).
ReferenceRows = Literal["newest_cutoff", "all_cutoffs"]


class MonitoringPolicyError(ValueError):
    """The monitoring policy file is missing or invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnTest(_Strict):
    """One column's drift test."""

    method: DriftMethod = "auto"
    threshold: float | None = Field(default=None, gt=0, description="Drift above (distances) or below (p-values) it.")


class NaturalMovement(_Strict):
    """How far each input may move on its own (ageing, seasons) between the reference and the served cutoff."""

    enabled: bool = True
    lookback_months: int = Field(
        default=12, ge=1, le=120, description="Logged cutoffs at most this many months before the reference one."
    )
    permutations: int = Field(
        default=3, ge=1, le=50, description="Shuffles per pair of cutoffs that measure the sampling noise."
    )
    seed: int = Field(default=0, ge=0)


class DriftPolicy(_Strict):
    """How each column's drift is judged."""

    method: DriftMethod = "auto"
    threshold: float | None = Field(default=None, gt=0)
    per_column: dict[str, ColumnTest] = Field(default_factory=dict)
    min_rows: int = Field(default=1000, ge=30, description="Fewer served rows: no verdict, no trigger.")
    drift_share: float = Field(default=0.5, gt=0, le=1)
    reference: ReferenceRows = Field(
        default="newest_cutoff",
        description="newest_cutoff: the logged rows of the newest training cutoff; all_cutoffs: every logged row.",
    )
    natural_movement: NaturalMovement = Field(default_factory=NaturalMovement)

    def test_for(self, column: str) -> ColumnTest:
        """The test of one column: its own entry, else the policy-wide one."""
        return self.per_column.get(column, ColumnTest(method=self.method, threshold=self.threshold))


class DataQualityPolicy(_Strict):
    """What in the current window is a data failure (alert) rather than drift (retrain)."""

    min_rows: int = Field(default=100, ge=1, description="Fewer served rows: no data-quality verdict.")
    max_missing_columns: int = Field(default=0, ge=0)
    max_null_rate_increase: float = Field(default=0.2, ge=0, le=1)
    max_type_errors: float = Field(default=0.01, ge=0, le=1)


class PerformanceTrigger(_Strict):
    """Labels arrived: the metric fell below the training figure by more than `max_drop`."""

    metric: PerformanceMetric
    max_drop: float = Field(gt=0, le=1)
    min_labelled: int = Field(default=500, ge=30)


class Triggers(_Strict):
    """What makes a family retrain (null or false: that trigger is off)."""

    drifted_share: float | None = Field(default=0.3, gt=0, le=1)
    key_feature_drift: bool = True
    prediction_drift: bool = True
    performance: PerformanceTrigger | None = None
    max_age_days: float | None = Field(default=180, gt=0)


class FamilyMonitoring(_Strict):
    """One family's key features and triggers."""

    key_features: list[str] = Field(default_factory=list)
    triggers: Triggers = Field(default_factory=Triggers)


class RetrainPolicy(_Strict):
    """When a fired trigger may retrain, and what follows."""

    enabled: bool = True
    min_interval_hours: float = Field(default=24, ge=0)
    min_new_months: int = Field(default=1, ge=0)
    trials: int | None = Field(default=None, ge=1)
    promote: bool = True


class MonitoringPolicy(_Strict):
    """The whole monitoring policy."""

    version: int = Field(ge=1)
    window_days: float = Field(default=7, gt=0)
    reference_rows: int = Field(default=100_000, ge=1000, description="Logged rows of the newest training cutoff.")
    history_rows: int = Field(
        default=20_000, ge=100, description="Logged rows of each earlier cutoff (they measure the natural movement)."
    )
    report_rows: int = Field(default=20_000, ge=1000)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    data_quality: DataQualityPolicy = Field(default_factory=DataQualityPolicy)
    families: dict[Monitored, FamilyMonitoring]
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)

    @model_validator(mode="after")
    def _consistent(self) -> MonitoringPolicy:
        # What each family's answers let monitoring measure (see monitoring.monitor).
        for name, family in self.families.items():
            t = family.triggers
            if name == "recommendation" and (family.key_features or t.key_feature_drift or t.drifted_share is not None):
                raise ValueError(
                    "families.recommendation: the recommender takes no feature row; "
                    "set key_features: [], key_feature_drift: false, drifted_share: null"
                )
            if name != "churn" and (t.prediction_drift or t.performance is not None):
                raise ValueError(
                    f"families.{name}.triggers: prediction_drift and performance are measured for churn only "
                    "(one calibrated score per answer); set prediction_drift: false, performance: null"
                )
        return self

    def family(self, name: str) -> FamilyMonitoring:
        """The rules of one family."""
        if name not in self.families:
            raise MonitoringPolicyError(
                f"the monitoring policy has no rules for {name!r}; covered: {sorted(self.families)}"
            )
        return self.families[name]

    @property
    def digest(self) -> str:
        """sha256 of the validated policy."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def load_policy(path: Path | None = None) -> MonitoringPolicy:
    """Read and validate the policy (the shipped default when `path` is None)."""
    return load_yaml_model(
        MonitoringPolicy,
        path,
        ("monitoring", "policy.yaml"),
        MonitoringPolicyError,
        "monitoring policy",
        "'version', 'families' and optionally 'drift', 'data_quality', 'retrain'",
    )
