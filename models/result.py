"""What a trainer hands to the registry: the model, its scores, figures and lineage. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
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
    fit_seconds: float = 0.0

    @property
    def primary(self) -> LoggedModel:
        """The model that is registered first (the family's main model)."""
        return self.models[0]
