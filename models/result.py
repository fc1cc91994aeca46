"""What a trainer hands to the registry: the model, its scores, figures and lineage. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

if TYPE_CHECKING:  # types only: readers of results need not load matplotlib
    from matplotlib.figure import Figure


@dataclass
class LoggedModel:
    """One model to log in the run (and register when `registered_model` is set)."""

    name: str  # artifact name in the run
    model: Any  # a scikit-learn estimator, or an mlflow.pyfunc.PythonModel
    flavor: Literal["sklearn", "pyfunc"]
    input_example: pd.DataFrame
    predict_method: str = "predict_proba"  # what pyfunc's predict calls (sklearn flavour)
    registered_model: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)  # pyfunc artifacts: name -> local path


@dataclass
class EvaluationSet:
    """The held-out rows a model was tested on, logged with the run so a gate can re-score any version on them.

    `classifier`: features, a 0/1 `label` and maybe a `weight`; `uplift`: features, the
    outcome `label` and the `treatment`; `ranking`: one row per customer with `segment`
    and `relevant` (the items bought after the cutoff), scored at `k` over `items` products.
    """

    frame: pd.DataFrame
    kind: Literal["classifier", "uplift", "ranking"]
    features: list[str] = field(default_factory=list)
    label: str | None = None
    id_column: str = "customer_key"
    snapshot: str | None = None
    weight: str | None = None
    treatment: str | None = None
    k: int = 10
    items: int = 0

    def meta(self) -> dict[str, Any]:
        """Everything but the frame, for `evaluation/meta.json`."""
        return {
            "kind": self.kind,
            "features": self.features,
            "label": self.label,
            "id_column": self.id_column,
            "snapshot": self.snapshot,
            "weight": self.weight,
            "treatment": self.treatment,
            "k": self.k,
            "items": self.items,
            "rows": len(self.frame),
        }


@dataclass
class TrainedModel:
    """A trainer's whole output for one run."""

    family: str
    models: list[LoggedModel]
    params: dict[str, Any]
    metrics: dict[str, float]
    figures: dict[str, Figure] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # schema, threshold, study history: logged as JSON
    training_frame: pd.DataFrame | None = None  # logged as the run's dataset (lineage)
    predictions: pd.DataFrame | None = None  # held-out rows with label and score, for the oracle comparison
    evaluation: Any = None  # anything else the oracle comparison needs (e.g. the recommender's test data)
    evaluation_set: EvaluationSet | None = None  # logged for the promotion gate
    data_quality: dict[str, Any] = field(default_factory=dict)  # the training set's profile, for the gate
    reference: pd.DataFrame | None = None  # model inputs monitoring compares served traffic with (its run artifact)
    # column -> data class (features.data_classes) of the rows above: the registry strips direct identifiers
    # from every logged row (with the run lineage's `data_classes`)
    data_classes: dict[str, str] = field(default_factory=dict)
    fit_seconds: float = 0.0

    @property
    def primary(self) -> LoggedModel:
        """The model that is registered first (the family's main model)."""
        return self.models[0]
