"""What a request needs, without the web layer: the champions, their inputs, consent, caps and the log.

`Runtime` composes the service's parts, one per module: the served models (`champions`),
consent decisions (`consent`), frequency caps (`caps`), the inference log (`inference_log`)
and LightGBM's threads for a batch (`scoring`). What it does itself is find a model's
inputs: a customer's features from the online store (whose reader parses its own
documents), or from the model's in-memory snapshot of it (`snapshot`), overridden by the
request's own values. It is thread-safe for concurrent requests.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from custintel.settings import Settings
from features.featurestore.online import OnlineStore, SetView, SQLiteOnlineStore, StoredFeatures, set_view
from features.featurestore.store import open_online_store
from models.config import FAMILIES
from serving.caps import open_frequency_caps
from serving.champions import Champions, ServedModel, registered_names
from serving.consent import ConsentChecks, ConsentStore, consent_store_path
from serving.errors import ServingError
from serving.inference_log import InferenceLog, audit_entries, audit_entry
from serving.policy import ServingPolicy
from serving.scoring import ScoringThreads, fast_route, inner_pipeline
from serving.snapshot import Snapshot, Snapshots, build_snapshot

SETS_SECONDS = 1.0  # how long the runtime reuses the online sets' metadata before reading it again


class Runtime:
    """Everything a request needs; thread-safe for concurrent requests."""

    def __init__(
        self, settings: Settings, policy: ServingPolicy, families: Sequence[str] = (*FAMILIES, "uplift")
    ) -> None:
        self.settings, self.policy = settings, policy
        self.champions = Champions(settings, registered_names(settings, families))
        self.consent = ConsentChecks(ConsentStore(consent_store_path(settings)), policy)
        cap = policy.frequency_cap
        self.caps = open_frequency_caps(settings, cap.max_impressions, cap.window_days)
        salt = settings.serving_log_salt or "custintel"
        self.log = InferenceLog(settings.inference_log_dir, policy.audit.customer_key, salt)
        self.snapshots = Snapshots(policy.snapshot.max_customers) if policy.snapshot.enabled else None
        # A batch scored alone may use this worker's share of the cores for LightGBM's contributions.
        self.scoring_threads = ScoringThreads(max(1, (os.cpu_count() or 1) // settings.serving_workers))
        self._local = threading.local()
        self._sets: tuple[float, dict[str, dict[str, Any]]] | None = None  # (read at, the online sets' metadata)
        self._views: dict[tuple[str, str, int], SetView] = {}
        self.champions.refresh()

    # -- features ----------------------------------------------------------------------------------------
    def _online(self) -> OnlineStore:
        store = getattr(self._local, "online", None)
        if store is None:
            store = open_online_store(self.settings)
            if isinstance(store, SQLiteOnlineStore):
                store.map_for_reads()  # measured: a third less time per lookup than the default page cache
            self._local.online = store
        return store

    def customer_features(self, customer_key: str) -> dict[str, Any] | None:
        """The online store's features of a customer, merged over sets (None when unknown)."""
        return self._online().merged(customer_key)

    def features_many(self, customer_keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Many customers' features merged over every set, one round trip (customers the store lacks left out)."""
        return self._online().merged_many(customer_keys).rows

    def model_features(self, model: ServedModel, customer_keys: Sequence[str]) -> StoredFeatures:
        """What the online store holds for many customers, as one model reads it: one round trip.

        Only the sets holding the model's inputs are read and parsed (for churn that leaves out
        the per-product lists, nearly half the bytes), and where those sets' documents hold exactly
        the model's inputs the answer keeps each customer's inputs as JSON text, which the
        inference log writes as it is.
        """
        return self._online().merged_many(customer_keys, self._view(model))

    def snapshot_for(self, model: ServedModel) -> Snapshot | None:
        """The model's in-memory inputs when they were made from what the store holds now, else None.

        When there is none (or the store moved on), one is built in the background for the next
        batches. Only for a model whose inputs the store holds exactly, with typed numbers, and
        whose pandas-free route was checked exact (after its first scoring call).
        """
        if self.snapshots is None or not fast_route(model.model):
            return None
        view = self._view(model)
        numeric = model.numeric_inputs
        if not view.exact or view.set_keys is None or numeric is None or not numeric <= view.numeric:
            return None
        set_keys = view.set_keys
        state = self._online().state(set_keys)
        ref = f"{model.name}@{model.version}"
        found = self.snapshots.get(ref, state)
        if found is None:
            pipeline = inner_pipeline(model.model)
            snapshots = self.snapshots
            assert pipeline is not None
            self.snapshots.start(ref, state, lambda: build_snapshot(self._online(), ref, pipeline[0], set_keys,
                                                                    snapshots.max_customers))  # fmt: skip
        return found

    def online_state(self) -> tuple[tuple[str, str], ...]:
        """A token of what the online store holds: it changes when a set is materialised again or erased from.

        Over the sets whose metadata the runtime last read (again at most every `SETS_SECONDS`).
        """
        return self._online().state(list(self._metas()))

    def customer_keys(self) -> list[str]:
        """Every customer the online store holds features of, in key order."""
        return self._online().customer_keys(list(self._metas()))

    def _metas(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        cached = self._sets
        if cached is None or now - cached[0] > SETS_SECONDS:
            cached = self._sets = (now, self._online().sets())
        return cached[1]

    def _view(self, model: ServedModel) -> SetView:
        metas = self._metas()
        key = (model.name, model.version, id(metas))
        view = self._views.get(key)
        if view is None:
            if len(self._views) > 64:
                self._views.clear()
            view = self._views[key] = set_view(metas, model.inputs)
        return view

    def feature_row(
        self,
        model: ServedModel,
        customer_key: str | None,
        given: dict[str, Any] | None,
        field_name: str,
        stored: dict[str, Any] | None | Literal["lookup"] = "lookup",
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The model's inputs for one customer (the body's values override the store's), and the stored ones.

        The inputs are a mapping from which the model reads its columns (a column it lacks is
        missing; other keys are ignored). `stored` is what the online store holds for the
        customer when the caller already looked it up (None: nothing); by default it is looked
        up here.
        """
        if stored == "lookup":
            stored = self.customer_features(customer_key) if customer_key else None
        if given:  # what the body says is checked first, whoever the customer is
            self.check_features(model, given, field_name)
        if customer_key and stored is None and (not given or self._absent(model, given)):
            # an unknown customer, and no body that could be scored on its own
            raise ServingError(404, f"{field_name}.customer_key", f"unknown customer {customer_key!r}")
        if given:
            if stored is None:
                absent = self._absent(model, given)
                if absent:
                    raise ServingError(
                        422,
                        f"{field_name}.features",
                        f"{len(absent)} inputs of {model.name} are missing (at most {self.policy.absent_inputs} may "
                        f"be; send null for a value that is missing): {absent[:10]}",
                    )
            return {**(stored or {}), **given}, stored
        return (stored if stored is not None else {}), stored  # read-only from here: no copy

    def check_features(self, model: ServedModel, given: Mapping[str, Any], field_name: str) -> None:
        """Refuse (422) a body's features the model does not take, or whose type it cannot read."""
        unknown = sorted(set(given) - set(model.inputs))
        if unknown:
            raise ServingError(422, f"{field_name}.features", f"not inputs of {model.name}: {unknown[:5]}")
        check_types(model, given, field_name)

    def _absent(self, model: ServedModel, given: Mapping[str, Any]) -> list[str]:
        """The model inputs a body leaves out, when more than the policy allows (else none)."""
        absent = [c for c in model.inputs if c not in given]
        return absent if len(absent) > self.policy.absent_inputs else []

    # -- the log -------------------------------------------------------------------------------------------
    def audit(self, caller: str, endpoint: str, model: ServedModel, customer_key: str | None,
              answer: dict[str, Any], suppressed: bool, masked: bool,
              inputs: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        """Append one answer's entry to the inference log, as the policy allows (`audit_entry`)."""
        self.log.record(audit_entry(self.policy, self.log, caller, endpoint, model, customer_key, answer,
                                    suppressed, masked, inputs))  # fmt: skip

    def audit_scored(self, caller: str, endpoint: str, model: ServedModel, customer_keys: Sequence[str | None],
                     answers: Sequence[dict[str, Any]], masked: Sequence[bool],
                     inputs: Sequence[Mapping[str, Any]], ready: Sequence[Any] | None = None,
                     cutoffs: Sequence[str | None] | None = None) -> None:  # fmt: skip
        """`audit` of many answers given (not suppressed), queued as one batch: the same entries (`audit_entries`)."""
        self.log.record_many(audit_entries(self.policy, self.log, caller, endpoint, model, customer_keys, answers,
                                           masked, inputs, ready, cutoffs))  # fmt: skip

    def close(self) -> None:
        """Flush the log."""
        self.log.close()


def check_types(model: ServedModel, given: Mapping[str, Any], field_name: str) -> None:
    """Refuse a body's feature whose type the model cannot read: a number for a category, or text for a number.

    The schema already refuses booleans and anything but numbers, strings and null; which of the two
    an input takes is the model's (its preparation step's numeric inputs). Unknown for other models.
    """
    numeric = model.numeric_inputs
    if numeric is None:
        return
    for name, value in given.items():
        if value is None:
            continue
        if name in numeric and isinstance(value, str):
            raise ServingError(
                422, f"{field_name}.features.{name}", f"a number is expected, got the text {value[:40]!r}"
            )
        if name not in numeric and not isinstance(value, str):
            raise ServingError(422, f"{field_name}.features.{name}", f"a category (text) is expected, got {value!r}")
