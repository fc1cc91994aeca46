"""The models the service answers with: each family's `@champion`, polled from the registry.

`Champions` loads each family's `@champion` (churn, propensity, recommendation, and uplift: the
retention offer's effect, which the decisions read) when the service starts (never at import), is
polled for promotions and swaps in a newly promoted version only once it has loaded (a
request sees either the old model or the new one, never none), and keeps serving what it
has when the registry cannot be reached (reported as degraded). The registered names are
the training configuration's (`registered_names`).

The service reaches the registry only through `models.registry.Registry`, built from its
settings: no process-wide MLflow URI is set.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from typing import Any

from custintel.settings import Settings
from features.data_classes import direct_identifiers
from governance.store import GATE_TAG_PREFIX
from models.registry import Registry
from serving.errors import ServingError
from serving.scoring import inner_pipeline

log = logging.getLogger("custintel.serving")

ALIAS = "champion"
WIDE_K = 60  # recommendations drawn before caps and exclusions cut them to k


def registered_names(settings: Settings, families: Sequence[str]) -> dict[str, str]:
    """Each family's registered model, from the training configuration (`registered_model`).

    A family the configuration does not train (e.g. uplift without an offer test) is left out.
    """
    names = Registry(settings).registered_names()
    return {family: names[family] for family in families if family in names}


@dataclass
class ServedModel:
    """One loaded model version."""

    family: str
    name: str
    version: str
    model: Any
    columns: list[str]
    threshold: float | None
    card: str | None
    loaded_at: str
    wide: Any = None  # recommender: a copy drawing WIDE_K items
    # column -> data class, from the run's lineage: the inference log never keeps a direct identifier
    data_classes: dict[str, str] = field(default_factory=dict)

    @cached_property
    def inputs(self) -> list[str]:
        """The columns the model reads from a customer's features (the signature's, but the product)."""
        return [c for c in self.columns if c != "product_id"]

    @cached_property
    def withheld(self) -> frozenset[str]:
        """Inputs the inference log may not keep: direct identifiers (none, unless a class was changed)."""
        return frozenset(direct_identifiers(self.inputs, self.data_classes))

    @cached_property
    def logged_inputs(self) -> list[str]:
        """The inputs the inference log keeps."""
        return [c for c in self.inputs if c not in self.withheld]

    def input_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The model's inputs as the inference log keeps them, from a customer's features (a missing one as None).

        Direct identifiers are left out (`withheld`).
        """
        try:
            taken = self._take(values)  # one C call for the whole row
        except KeyError:
            return {c: values.get(c) for c in self.logged_inputs}
        names = self.logged_inputs
        return dict(zip(names, taken, strict=False)) if self._several else {c: taken for c in names}

    @cached_property
    def numeric_inputs(self) -> frozenset[str] | None:
        """The inputs the model's preparation step reads as numbers (None: not a `FramePreparer` pipeline)."""
        pipeline = inner_pipeline(self.model) if self.family != "recommendation" else None
        numeric = getattr(pipeline[0], "numeric", None) if pipeline is not None else None
        return None if numeric is None else frozenset(numeric)

    @cached_property
    def _several(self) -> bool:
        return len(self.logged_inputs) != 1

    @cached_property
    def _take(self) -> Any:
        return itemgetter(*self.logged_inputs) if self.logged_inputs else (lambda _: ())


def load_served(registry: Registry, family: str, name: str, version: str) -> ServedModel:
    """Load one registered version the way it will be served."""
    mv = registry.version(name, version)
    columns = [c for c, _ in registry.model_inputs(name, version) or []]
    wide = None
    if family == "recommendation":
        model = registry.load_model(name, version).unwrap_python_model()
        wide = copy.copy(model)
        wide.k = WIDE_K
    else:
        model = registry.load_model(name, version, "sklearn")
        inner = inner_pipeline(model)
        if inner is not None and hasattr(inner[-1], "n_jobs"):
            # One request is a few rows: LightGBM's thread start-up costs more than it saves, and the
            # service's own threads already use the cores.
            inner[-1].set_params(n_jobs=1)
    threshold = registry.run(mv.run_id).metrics.get("threshold") if mv.run_id else None
    lineage = registry.read_run_json(mv.run_id, "lineage/lineage.json") if mv.run_id else {}
    return ServedModel(
        family, name, str(version), model, columns, threshold,
        mv.tags.get(GATE_TAG_PREFIX + "card"), dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), wide,
        dict(lineage.get("data_classes") or {}),
    )  # fmt: skip


@dataclass
class RegistryState:
    """The last poll's outcome."""

    degraded: str | None = None
    polled_at: str | None = None
    swaps: list[str] = field(default_factory=list)


class Champions:
    """The model answering for each family; `refresh` polls the registry (thread-safe for readers)."""

    def __init__(self, settings: Settings, names: dict[str, str]) -> None:
        self.names = names  # family -> registered model
        self.models: dict[str, ServedModel] = {}
        self.state = RegistryState()
        self.registry = Registry(settings)

    def refresh(self) -> list[str]:
        """Load any newly promoted champion; on a registry error keep what is served and report degraded."""
        swapped = []
        try:
            for family, name in self.names.items():
                # None: no such model or alias, nothing promoted yet; any other failure is the registry's (below).
                version = self.registry.alias_version(name, ALIAS)
                if version is None:
                    continue
                current = self.models.get(family)
                if current is None or current.version != version:
                    self.models[family] = load_served(self.registry, family, name, version)  # one assignment: atomic
                    swapped.append(f"{name} v{version}")
            self.state.degraded = None
        except Exception as exc:  # noqa: BLE001 - any registry failure: keep serving, say so
            self.state.degraded = f"registry unreachable at the last poll: {type(exc).__name__}: {exc}"[:300]
            log.warning(self.state.degraded)
        self.state.polled_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.state.swaps.extend(swapped)
        return swapped

    @property
    def ready(self) -> bool:
        """Ready once the registry has been read and at least one champion loaded.

        A family with no champion yet answers 503 on its own endpoints; the others serve.
        """
        return self.state.polled_at is not None and bool(self.models)

    def served(self, family: str) -> ServedModel:
        """The model answering for a family (503 when none is promoted yet)."""
        model = self.models.get(family)
        if model is None:
            raise ServingError(503, "model", f"no @{ALIAS} of {self.names[family]} has been promoted yet")
        return model
