"""The training configuration: one validated model per family, read from YAML.

The shipped default (`training.yaml`) fits the generated world; point
`CUSTINTEL_TRAINING_CONFIG` at your own copy to change cutoffs, feature sets, search
spaces or budgets. Unknown keys are errors, so a misspelt option is never ignored.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from custintel.yaml_config import load_yaml_model

Family = Literal["churn", "propensity", "recommendation"]
FAMILIES: tuple[Family, ...] = ("churn", "propensity", "recommendation")


class TrainingConfigError(ValueError):
    """The training configuration is missing, malformed or inconsistent; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamRange(_Strict):
    """One hyperparameter's search range."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> ParamRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


class TuningConfig(_Strict):
    """An Optuna study's budget: it stops at whichever of trials and time comes first."""

    trials: int = Field(default=20, ge=1, description="Trials per study.")
    timeout_seconds: float | None = Field(default=600, gt=0, description="Wall-time budget per study.")
    seed: int = Field(default=0, ge=0, description="Seed of the TPE sampler.")
    pruning: bool = Field(default=True, description="Stop unpromising trials early (median of earlier trials).")
    workers: int = Field(
        default=1,
        ge=1,
        description="Worker processes sharing the study (more than 1 needs a study storage: PostgreSQL or journal).",
    )
    heartbeat_seconds: int = Field(
        default=10, ge=1, description="With a study storage: how often a running trial tells it is alive."
    )
    grace_seconds: int | None = Field(
        default=None,
        ge=1,
        description="A running trial silent this long is failed by the next worker (twice the heartbeat when unset).",
    )
    retries: int = Field(
        default=1, ge=0, description="Times a trial whose worker died is run again with the same parameters."
    )

    @model_validator(mode="after")
    def _grace_from_heartbeat(self) -> TuningConfig:
        """An unset grace period is twice the heartbeat, written down (a run's lineage never records a None)."""
        if self.grace_seconds is None:
            self.grace_seconds = 2 * self.heartbeat_seconds
        return self


def with_tuning_workers(config: TrainingConfig, workers: int | None) -> TrainingConfig:
    """The config with every study run by `workers` processes (unchanged when None)."""
    if workers is None:
        return config
    update: dict[str, Any] = {}
    for name in config.families():
        section = getattr(config, name)
        update[name] = section.model_copy(update={"tuning": section.tuning.model_copy(update={"workers": workers})})
    return config.model_copy(update=update)


class TimeSplit(_Strict):
    """Cutoffs to train on, to validate (tune, calibrate, set thresholds) on, and to test on."""

    train_as_of: list[dt.date] = Field(min_length=1)
    valid_as_of: list[dt.date] = Field(min_length=1)
    test_as_of: list[dt.date] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> TimeSplit:
        if max(self.train_as_of) >= min(self.valid_as_of):
            raise ValueError("every train_as_of cutoff must come before every valid_as_of cutoff")
        if max(self.valid_as_of) >= min(self.test_as_of):
            raise ValueError("every valid_as_of cutoff must come before every test_as_of cutoff")
        return self

    def all_as_of(self) -> list[dt.date]:
        """Every cutoff the split reads, oldest first."""
        return sorted({*self.train_as_of, *self.valid_as_of, *self.test_as_of})

    def check_horizon(self, horizon_days: int) -> None:
        """Raise unless each stage's labels end before the next stage's first cutoff.

        A label looks `horizon_days` past its cutoff; if a training label's window
        reached into the validation cutoff, validation would score outcomes the
        model was trained on.
        """
        span = dt.timedelta(days=horizon_days)
        for earlier, later, name in (
            (self.train_as_of, self.valid_as_of, "train_as_of"),
            (self.valid_as_of, self.test_as_of, "valid_as_of"),
        ):
            if max(earlier) + span > min(later):
                raise ValueError(
                    f"{name} cutoff {max(earlier)} + the {horizon_days}-day label horizon reaches past "
                    f"{min(later)}: the later split would score outcomes the earlier one saw"
                )


class LightGBMConfig(_Strict):
    """Fixed LightGBM parameters and the ranges Optuna searches."""

    max_trees: int = Field(default=1000, ge=10, description="Upper bound; early stopping on validation decides.")
    early_stopping_rounds: int = Field(default=50, ge=5)
    threads: int = Field(default=2, ge=1, description="LightGBM threads (set explicitly: its default oversubscribes).")
    fixed: dict[str, float | int | str | bool] = Field(default_factory=dict)
    search: dict[str, ParamRange] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> LightGBMConfig:
        both = sorted(set(self.fixed) & set(self.search))
        if both:
            raise ValueError(f"parameter(s) {both} are both fixed and searched")
        unknown = sorted((set(self.fixed) | set(self.search)) - LIGHTGBM_PARAMS)
        if unknown:
            raise ValueError(f"unknown LightGBM parameter(s) {unknown}; known: {sorted(LIGHTGBM_PARAMS)}")
        return self


LIGHTGBM_PARAMS = frozenset(
    {
        "learning_rate", "num_leaves", "max_depth", "min_child_samples", "min_child_weight", "subsample",
        "subsample_freq", "colsample_bytree", "reg_alpha", "reg_lambda", "min_split_gain", "max_bin",
        "max_cat_to_onehot", "cat_smooth", "cat_l2", "min_data_per_group",
    }
)  # fmt: skip


class LeakageConfig(_Strict):
    """The leakage guard of a user's own table (`models.leakage`): at or above a threshold, a column is excluded."""

    label_auc: float = Field(
        default=0.98, gt=0.5, le=1, description="A column whose AUC alone (either direction) against the label "
        "reaches this gives the answer away.",
    )  # fmt: skip
    duration_spearman: float = Field(
        default=0.98, gt=0, le=1, description="With --duration: a column whose |Spearman| with the duration reaches "
        "this, alone or divided by another numeric column, is a near-deterministic function of it.",
    )  # fmt: skip


class ChurnConfig(_Strict):
    """Churn within a horizon (calibrated LightGBM) and time to churn (Cox model)."""

    registered_model: str = "custintel-churn"
    feature_sets: list[str] = Field(min_length=1)
    horizon_days: int = Field(default=90, ge=1, description="Label churn_<horizon>d of the labels set.")
    split: TimeSplit
    calibration: Literal["auto", "isotonic", "sigmoid", "none"] = Field(
        default="auto",
        description="auto: none, sigmoid or isotonic, whichever has the lowest log loss cross-fitted on the "
        "calibration rows (none unless a calibrator improves it); or one method, always applied.",
    )
    calibrate_on: Literal["newest_cutoff", "validation"] = Field(
        default="newest_cutoff",
        description="newest_cutoff: fit the calibrator on a hashed share of the test cutoffs' customers (the newest "
        "fully labelled data; the others are the test rows), so a model trained before a shift in the base rate "
        "is judged on probabilities of the present; validation: on the validation cutoffs. A user's own table "
        "(`train churn --table`) keeps its own split and calibrates on its validation rows.",
    )
    calibration_share: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Share of the test cutoffs' customers held out to calibrate on (Platt scaling has two "
        "parameters: a few thousand rows fit it; the rest keep the test figures and the audit precise).",
    )
    calibration_salt: str = Field(
        default="custintel-calibration",
        min_length=1,
        description="Salt of the customer-key hash that picks them: with the same salt and share, the same "
        "customers in every training, so a champion was never calibrated on a challenger's test customers.",
    )
    weekly_capacity: int | None = Field(
        default=None,
        ge=1,
        description="Customers the retention team can call a week, on the feature store (like its feature sets and "
        "cutoffs, not applied to a user's own table, which takes `--capacity`). CUSTINTEL_RETENTION_CALLS_PER_WEEK "
        "overrides it; with neither, the contact threshold is `contact_share` of the scored customers.",
    )
    contact_share: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Without an absolute capacity: the share of the scored customers (the newest validation "
        "snapshot) the retention team contacts.",
    )
    survival: bool = Field(default=True, description="Also fit a Cox model for time to churn.")
    survival_penalizer: float = Field(default=0.1, ge=0)
    lightgbm: LightGBMConfig = Field(default_factory=LightGBMConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)

    @model_validator(mode="after")
    def _no_leak(self) -> ChurnConfig:
        self.split.check_horizon(self.horizon_days)
        return self

    @property
    def label(self) -> str:
        """The label column in the labels set."""
        return f"churn_{self.horizon_days}d"


class UpliftConfig(_Strict):
    """The retention offer's uplift, learnt from its A/B test."""

    registered_model: str = "custintel-uplift"
    as_of: dt.date = Field(description="The cutoff at which the test assigned its groups (features from before).")
    learner: Literal["two_model", "x_learner"] = "x_learner"
    test_share: float = Field(default=0.3, gt=0, lt=1, description="Share of the experiment held out for the Qini.")
    seed: int = 0
    lightgbm: LightGBMConfig = Field(default_factory=LightGBMConfig)


class PropensityConfig(_Strict):
    """Per-product purchase propensity (one LightGBM over customer x product rows) and offer uplift."""

    registered_model: str = "custintel-propensity"
    feature_sets: list[str] = Field(min_length=1)
    split: TimeSplit
    horizon_days: int = Field(default=90, ge=1)
    negative_sample: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Share of non-buying (customer, product) rows kept for training and validation; kept rows "
        "are weighted up by its inverse, so probabilities stay calibrated.",
    )
    test_negative_sample: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Share of non-buying rows kept for testing; test metrics are weighted back to the population.",
    )
    lightgbm: LightGBMConfig = Field(default_factory=LightGBMConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    uplift: UpliftConfig | None = None

    @model_validator(mode="after")
    def _no_leak(self) -> PropensityConfig:
        self.split.check_horizon(self.horizon_days)
        return self


class RecommendationConfig(_Strict):
    """Recommenders (ALS, EASE, popularity) chosen on validation, with business rules and a popularity fallback."""

    registered_model: str = "custintel-recommendation"
    train_as_of: dt.date = Field(description="History before this cutoff trains; purchases after it are held out.")
    valid_as_of: dt.date = Field(description="Tuning cutoff: history before it, purchases after it.")
    horizon_days: int = Field(default=90, ge=1)
    k: int = Field(default=10, ge=1, le=100)
    min_history: int = Field(default=1, ge=0, description="Fewer interactions than this: popularity fallback.")
    candidates: list[Literal["als", "ease", "popularity"]] = Field(
        default=["popularity", "ease", "als"],
        min_length=1,
        description="Recommenders tuned on the validation cutoff; the best validation NDCG@k is served (a tie goes "
        "to the earlier one in this list).",
    )
    ease_lambdas: list[float] = Field(
        default_factory=lambda: [10 ** (i / 5) for i in range(21)],
        min_length=1,
        description="EASE's L2 penalties tried on validation (default: 1 to 10,000, five per decade).",
    )
    ease_max_items: int = Field(
        default=10_000,
        ge=1,
        description="EASE is skipped (with a warning) above this many items: it inverts a dense items x items "
        "matrix (10,000 items: about 2.4 GB at the peak of the fit, and a 400 MB model).",
    )
    search: dict[str, ParamRange] = Field(default_factory=dict)
    tuning: TuningConfig = Field(default_factory=TuningConfig)

    @model_validator(mode="after")
    def _ordered(self) -> RecommendationConfig:
        if any(lam <= 0 for lam in self.ease_lambdas):
            raise ValueError(f"ease_lambdas must be positive, not {self.ease_lambdas}")
        if self.valid_as_of + dt.timedelta(days=self.horizon_days) > self.train_as_of:
            raise ValueError(
                f"valid_as_of {self.valid_as_of} + the {self.horizon_days}-day horizon must not pass train_as_of "
                f"{self.train_as_of}"
            )
        unknown = sorted(set(self.search) - {"factors", "regularization", "alpha", "iterations"})
        if unknown:
            raise ValueError(f"unknown ALS parameter(s) {unknown}; known: alpha, factors, iterations, regularization")
        return self


DEFAULT_REGISTERED = {
    "churn": "custintel-churn",
    "propensity": "custintel-propensity",
    "uplift": "custintel-uplift",
    "recommendation": "custintel-recommendation",
}


class TrainingConfig(_Strict):
    """The configuration of the families this deployment trains: a section per family, only those trained."""

    experiment: str = Field(default="custintel", min_length=1, description="MLflow experiment of every run.")
    churn: ChurnConfig | None = None
    propensity: PropensityConfig | None = None
    recommendation: RecommendationConfig | None = None
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)

    @model_validator(mode="after")
    def _some_family(self) -> TrainingConfig:
        if not self.families():
            raise ValueError("no family is configured: give at least one of 'churn', 'propensity', 'recommendation'")
        return self

    def families(self) -> list[Family]:
        """The configured families, in training order."""
        return [f for f in FAMILIES if getattr(self, f) is not None]

    def section(self, family: str) -> ChurnConfig | PropensityConfig | RecommendationConfig:
        """A family's section; a family without one is a `TrainingConfigError` naming the way out."""
        if family not in FAMILIES:
            raise TrainingConfigError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
        found = getattr(self, family)
        if found is None:
            raise TrainingConfigError(
                f"the training config has no '{family}' section: add one (models/training.yaml shows every option) "
                f"or train a configured family ({', '.join(self.families())})"
            )
        section: ChurnConfig | PropensityConfig | RecommendationConfig = found
        return section

    def registered_names(self) -> dict[str, str]:
        """Family -> registered model name: the section's, or the default for a family not configured here."""
        names = dict(DEFAULT_REGISTERED)
        for family in self.families():
            names[family] = getattr(self, family).registered_model
        if self.propensity is not None and self.propensity.uplift is not None:
            names["uplift"] = self.propensity.uplift.registered_model
        return names


def load_training_config(path: Path | None = None) -> TrainingConfig:
    """Read and validate the training configuration (the shipped default when `path` is None)."""
    return load_yaml_model(
        TrainingConfig,
        path,
        ("models", "training.yaml"),
        TrainingConfigError,
        "training config",
        "a section per family trained ('churn', 'propensity', 'recommendation')",
    )
