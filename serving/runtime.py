"""What the scoring service does, without the web layer: models by alias, features, consent, caps, the log.

`Runtime` loads each family's `@champion` when the service starts (never at import),
polls the registry and swaps in a newly promoted version only once it has loaded (a
request sees either the old model or the new one, never none), and keeps serving what
it has when the registry cannot be reached (reported as degraded). Answers pass the
consent and regulated-segment rules before anything is scored.
"""

from __future__ import annotations

import copy
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import orjson
import pandas as pd
from mlflow import MlflowClient
from scipy.special import expit
from sklearn.pipeline import Pipeline

from custintel.settings import Settings
from features.featurestore.online import OnlineStore, SQLiteOnlineStore
from features.featurestore.store import open_online_store
from governance.store import GATE_TAG_PREFIX
from serving.consent import ConsentStore, CustomerConsent, consent_store_path
from serving.policy import ServingPolicy
from serving.snapshot import Snapshot, Snapshots, build_snapshot

log = logging.getLogger("custintel.serving")

FAMILIES = {
    "churn": "custintel-churn",
    "propensity": "custintel-propensity",
    "recommendation": "custintel-recommendation",
}
ALIAS = "champion"
WIDE_K = 60  # recommendations drawn before caps and exclusions cut them to k


class ServingError(Exception):
    """A request the service refuses: HTTP status, the field at fault and why."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.field, self.reason = status, field, reason

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"field": self.field, "reason": self.reason}}


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

    @cached_property
    def inputs(self) -> list[str]:
        """The columns the model reads from a customer's features (the signature's, but the product)."""
        return [c for c in self.columns if c != "product_id"]

    def input_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """The model's inputs taken from a customer's features (a missing one as None)."""
        try:
            taken = self._take(values)  # one C call for the whole row
        except KeyError:
            return {c: values.get(c) for c in self.inputs}
        return dict(zip(self.inputs, taken, strict=False)) if self._several else {c: taken for c in self.inputs}

    @cached_property
    def numeric_inputs(self) -> frozenset[str] | None:
        """The inputs the model's preparation step reads as numbers (None: not a `FramePreparer` pipeline)."""
        pipeline = inner_pipeline(self.model) if self.family != "recommendation" else None
        numeric = getattr(pipeline[0], "numeric", None) if pipeline is not None else None
        return None if numeric is None else frozenset(numeric)

    @cached_property
    def _several(self) -> bool:
        return len(self.inputs) != 1

    @cached_property
    def _take(self) -> Any:
        return itemgetter(*self.inputs) if self.inputs else (lambda _: ())


def load_served(client: MlflowClient, family: str, name: str, version: str) -> ServedModel:
    """Load one registered version the way it will be served."""
    uri = f"models:/{name}/{version}"
    mv = client.get_model_version(name, version)
    info = mlflow.models.get_model_info(uri)
    signature = info.signature
    columns = signature.inputs.input_names() if signature is not None and signature.inputs is not None else []
    wide = None
    if family == "recommendation":
        model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
        wide = copy.copy(model)
        wide.k = WIDE_K
    else:
        model = mlflow.sklearn.load_model(uri)
        inner = inner_pipeline(model)
        if inner is not None and hasattr(inner[-1], "n_jobs"):
            # One request is a few rows: LightGBM's thread start-up costs more than it saves, and the
            # service's own threads already use the cores.
            inner[-1].set_params(n_jobs=1)
    threshold = None
    if mv.run_id:
        threshold = client.get_run(mv.run_id).data.metrics.get("threshold")
    return ServedModel(
        family, name, str(version), model, [str(c) for c in columns], threshold,
        mv.tags.get(GATE_TAG_PREFIX + "card"), dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), wide,
    )  # fmt: skip


def inner_pipeline(model: Any) -> Pipeline | None:
    """The preprocessing + LightGBM pipeline inside a (possibly calibrated) classifier."""
    if isinstance(model, Pipeline):
        return model
    calibrated = getattr(model, "calibrated_classifiers_", None)
    if calibrated:
        inner = calibrated[0].estimator
        inner = getattr(inner, "estimator", inner)  # FrozenEstimator
        return inner if isinstance(inner, Pipeline) else None
    return None


_ONE_PASS: dict[int, str] = {}  # id(model) -> how its probability follows from the summed contributions


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _from_raw(model: Any, pipeline: Pipeline, raw: np.ndarray, how: str) -> np.ndarray:
    if model is pipeline:
        return _sigmoid(raw)
    calibrator = model.calibrated_classifiers_[0].calibrators[0]
    values = raw if how == "raw" else _sigmoid(raw)
    if type(calibrator).__name__ == "_SigmoidCalibration":  # its predict, without the input checks
        return np.asarray(expit(-(calibrator.a_ * values + calibrator.b_)), dtype=float)
    return np.asarray(calibrator.predict(values), dtype=float)


def score_with_reasons(
    model: Any, frame: pd.DataFrame, n_reasons: int
) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
    """P(positive) per row and, per row, the features pushing it up most (LightGBM's pred_contrib).

    One pass where it can: the contributions sum to LightGBM's raw score, from which the
    (calibrated) probability follows; the first call checks that against `predict_proba`
    and the model falls back to two passes if it ever differs.
    """
    pipeline = inner_pipeline(model)
    if pipeline is None or not n_reasons:
        return np.asarray(model.predict_proba(frame))[:, 1], [[] for _ in range(len(frame))]
    prepared = pipeline[:-1].transform(frame)
    contributions = np.asarray(pipeline[-1].predict(prepared, pred_contrib=True))
    how = _ONE_PASS.get(id(model))
    single = model is pipeline or len(getattr(model, "calibrated_classifiers_", [])) == 1
    if how is None:
        expected = np.asarray(model.predict_proba(frame))[:, 1]
        how = "slow"
        for candidate in ("raw", "proba") if single else ():
            if np.allclose(_from_raw(model, pipeline, contributions.sum(axis=1), candidate), expected, atol=1e-9):
                how = candidate
                break
        _ONE_PASS[id(model)] = how
        scores = expected
    elif how == "slow":
        scores = np.asarray(model.predict_proba(frame))[:, 1]
    else:
        scores = _from_raw(model, pipeline, contributions.sum(axis=1), how)
    return scores, _top_reasons(contributions[:, :-1], [str(c) for c in prepared.columns], n_reasons)


# Batches from this many rows may compute contributions on every core (when no other batch is being scored,
# `Runtime.scoring_threads`); smaller ones, and batches scored side by side, use one thread each.
PARALLEL_ROWS = 256
_FAST: dict[int, str] = {}  # id(model) -> "raw" | "proba" (the pandas-free route is exact) or "pandas"


def _contributions(pipeline: Pipeline, matrix: np.ndarray, threads: int = 1) -> tuple[np.ndarray, list[str]]:
    """LightGBM's contributions (the bias last) for `records_matrix` rows, and the features' names."""
    prepare, booster = pipeline[0], pipeline[-1].booster_
    contributions = np.asarray(booster.predict(matrix, pred_contrib=True, num_threads=threads))
    return contributions, [*prepare.numeric, *prepare.categorical]


def _top_reasons(features: np.ndarray, names: list[str], n: int) -> list[list[tuple[str, float]]]:
    """Per row, the (feature, contribution) pairs of its `n` largest positive contributions, largest first.

    Equal contributions keep column order (a stable sort's first `n`): `n` passes of argmax, which
    takes the first of equal maxima, cost a tenth of sorting every row.
    """
    n = min(n, features.shape[1])
    left = features.copy()
    rows = np.arange(len(left))
    top = np.empty((len(left), n), dtype=np.intp)
    values = np.empty((len(left), n))
    for k in range(n):
        top[:, k] = best = left.argmax(axis=1)
        values[:, k] = left[rows, best]
        left[rows, best] = -np.inf
    return [
        [(names[j], c) for j, c in zip(columns, contributions, strict=True) if c > 0]
        for columns, contributions in zip(top.tolist(), values.tolist(), strict=True)
    ]


def score_records(
    model: Any,
    records: Sequence[dict[str, Any]],
    columns: Sequence[str],
    n_reasons: int,
    numbers_checked: bool = False,
    threads: int = 1,
) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
    """`score_with_reasons` for JSON-like records, without pandas where that is exact.

    The records go straight into a float matrix (`FramePreparer.records_matrix`) and one
    LightGBM call gives the contributions, whose sum gives the (calibrated) probability. The
    first call for a model compares this route with the pandas pipeline on the same rows and
    keeps it only if scores and reasons agree; otherwise the model is always scored through pandas.
    `numbers_checked`: the caller knows every numeric input is a JSON number or null (the
    online store's typed documents), so the values are not inspected one by one. `threads`:
    LightGBM's threads for the contributions (0: every core).
    """
    pipeline = inner_pipeline(model)
    route = _FAST.get(id(model))
    single = pipeline is not None and (model is pipeline or len(getattr(model, "calibrated_classifiers_", [])) == 1)
    fast_ok = (
        single and pipeline is not None and hasattr(pipeline[0], "records_matrix") and hasattr(pipeline[-1], "booster_")
    )
    if route is None or route == "pandas" or not fast_ok:
        scores, reasons = score_with_reasons(model, pd.DataFrame(list(records), columns=list(columns)), n_reasons)
        if route is None:
            _FAST[id(model)] = (
                _check_fast_route(model, pipeline, records, scores, reasons, n_reasons) if fast_ok else "pandas"
            )
        return scores, reasons
    assert pipeline is not None
    return score_matrix(model, pipeline[0].records_matrix(records, numbers_checked=numbers_checked), n_reasons, threads)


def score_matrix(
    model: Any, matrix: np.ndarray, n_reasons: int, threads: int = 1
) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
    """`score_records` for rows already in `records_matrix`'s form (a model's snapshot), on its pandas-free route.

    Only for a model whose route was checked exact (`fast_route`).
    """
    pipeline = inner_pipeline(model)
    route = _FAST.get(id(model))
    assert pipeline is not None and route in ("raw", "proba"), "score_matrix needs a model on the checked fast route"
    contributions, names = _contributions(pipeline, matrix, threads)
    scores = _from_raw(model, pipeline, contributions.sum(axis=1), route)
    return scores, _top_reasons(contributions[:, :-1], names, n_reasons) if n_reasons else [[] for _ in matrix]


def fast_route(model: Any) -> bool:
    """Whether the model's pandas-free route was checked exact on its first call."""
    return _FAST.get(id(model)) in ("raw", "proba")


def _check_fast_route(
    model: Any,
    pipeline: Pipeline | None,
    records: Sequence[dict[str, Any]],
    scores: np.ndarray,
    reasons: list[list[tuple[str, float]]],
    n_reasons: int,
) -> str:
    assert pipeline is not None
    try:
        contributions, names = _contributions(pipeline, pipeline[0].records_matrix(records))
    except (ValueError, TypeError, KeyError):
        return "pandas"
    for how in ("raw", "proba"):
        if np.allclose(_from_raw(model, pipeline, contributions.sum(axis=1), how), scores, atol=1e-9):
            fast = _top_reasons(contributions[:, :-1], names, n_reasons) if n_reasons else [[] for _ in records]
            same = all([f for f, _ in a] == [f for f, _ in b] for a, b in zip(fast, reasons, strict=True))
            return how if same else "pandas"
    return "pandas"


def decide_consent(
    consent: CustomerConsent, purpose: str, policy: ServingPolicy, today: dt.date
) -> tuple[str | None, bool]:
    """Why the answer must be suppressed (None: it may be given), and whether it must be masked."""
    status = consent.statuses.get(purpose)
    if status == "withdrawn":
        return f"the customer withdrew consent for {purpose}", False
    unknown = {str(k): str(v) for k, v in policy.unknown_consent.items()}
    if status is None and unknown.get(purpose, "allow") == "suppress":
        return f"no recorded consent for {purpose}", False
    age = consent.age_on(today)
    if age is not None and age < policy.minors.age_below:
        if policy.minors.action == "suppress":
            return f"a minor (under {policy.minors.age_below})", False
        return None, True
    return None, False


class FrequencyCaps:
    """Impressions per (customer, product) within a window: Redis when configured, else SQLite."""

    def __init__(self, settings: Settings, max_impressions: int, window_days: float) -> None:
        self.max, self.window = max_impressions, window_days * 86400
        self._lock = threading.Lock()
        self._redis = None
        self._namespace = settings.online_namespace
        if settings.redis_url:
            import redis

            self._redis = redis.Redis.from_url(settings.redis_url)
        else:
            path = settings.home_dir / "serving" / "caps.sqlite"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS shown (customer_key TEXT, product_id TEXT, at REAL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS shown_key ON shown (customer_key, product_id, at)")

    def counts(self, customer_key: str, products: Sequence[str], now: float) -> dict[str, int]:
        """Impressions of each product in the window."""
        since = now - self.window
        if self._redis is not None:
            pipe = self._redis.pipeline()
            for p in products:
                pipe.zcount(self._key(customer_key, p), since, "+inf")
            return dict(zip(products, (int(n) for n in pipe.execute()), strict=True))
        with self._lock:
            rows = self._db.execute(
                "SELECT product_id, count(*) FROM shown WHERE customer_key = ? AND at > ? GROUP BY product_id",
                (customer_key, since),
            ).fetchall()
        found = dict(rows)
        return {p: int(found.get(p, 0)) for p in products}

    def record(self, customer_key: str, products: Sequence[str], now: float) -> None:
        """Count one impression of each product."""
        if self._redis is not None:
            pipe = self._redis.pipeline()
            for p in products:
                key = self._key(customer_key, p)
                pipe.zadd(key, {f"{now}:{id(p)}:{time.perf_counter_ns()}": now})
                pipe.zremrangebyscore(key, "-inf", now - self.window)
                pipe.expire(key, int(self.window) + 60)
            pipe.execute()
            return
        with self._lock:
            self._db.executemany("INSERT INTO shown VALUES (?, ?, ?)", [(customer_key, p, now) for p in products])

    def _key(self, customer_key: str, product: str) -> str:
        return f"{self._namespace}:cap:{customer_key}:{product}"


def log_key(rule: str, salt: str, customer_key: str | None) -> str | None:
    """A customer key as the inference log keeps it: salted sha256 (`hash`), as is (`plain`), or not (`omit`).

    Monitoring hashes label tables the same way to join outcomes to logged answers.
    """
    if customer_key is None or rule == "omit":
        return None
    if rule == "plain":
        return customer_key
    return hashlib.sha256(f"{salt}:{customer_key}".encode()).hexdigest()[:24]


class InferenceLog:
    """Append-only JSON lines per day, written by a background thread off the request path.

    A request only appends to a queue; the writer wakes every `flush_seconds` and writes
    what has gathered in one go (waking it per entry cost the request path more than the
    write itself).
    """

    def __init__(self, folder: Path, key_rule: str, salt: str, flush_seconds: float = 0.25) -> None:
        self.folder, self.key_rule, self.salt = folder, key_rule, salt
        self.flush_seconds = flush_seconds
        self._queue: queue.SimpleQueue[dict[str, Any] | list[dict[str, Any]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="inference-log", daemon=True)
        self._thread.start()

    def key(self, customer_key: str | None) -> str | None:
        """The customer key as the policy lets the log keep it."""
        return log_key(self.key_rule, self.salt, customer_key)

    def record(self, entry: dict[str, Any]) -> None:
        """Queue one entry (never blocks the answer)."""
        self._queue.put(entry)

    def record_many(self, entries: list[dict[str, Any]]) -> None:
        """Queue many entries at once (a batch call's: one queue operation)."""
        if entries:
            self._queue.put(entries)

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        dumps, option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        while True:
            stopping = self._stop.wait(self.flush_seconds)
            lines = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, list):
                    lines.extend([dumps(e, default=str, option=option) for e in item])
                else:
                    lines.append(dumps(item, default=str, option=option))
            if lines:
                day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
                lines.append(b"")
                with (self.folder / f"{day}.jsonl").open("ab", buffering=0) as fh:
                    # Several worker processes append to the same day file: one locked write per flush keeps
                    # each one's lines whole.
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    try:
                        data = memoryview(b"\n".join(lines))
                        while data:
                            data = data[fh.write(data) or 0 :]
                    finally:
                        fcntl.flock(fh, fcntl.LOCK_UN)
            if stopping:
                return

    def close(self, timeout: float = 5) -> None:
        """Write what is queued and stop."""
        self._stop.set()
        self._thread.join(timeout)


@dataclass
class RegistryState:
    """The last poll's outcome."""

    degraded: str | None = None
    polled_at: str | None = None
    swaps: list[str] = field(default_factory=list)


class Runtime:
    """Everything a request needs; thread-safe for concurrent requests."""

    def __init__(self, settings: Settings, policy: ServingPolicy, families: Sequence[str] = tuple(FAMILIES)) -> None:
        self.settings, self.policy = settings, policy
        self.families = list(families)
        self.models: dict[str, ServedModel] = {}
        self.state = RegistryState()
        self._local = threading.local()
        self.consent = ConsentStore(consent_store_path(settings))
        self.caps = FrequencyCaps(settings, policy.frequency_cap.max_impressions, policy.frequency_cap.window_days)
        salt = settings.serving_log_salt or "custintel"
        self.log = InferenceLog(settings.inference_log_dir, policy.audit.customer_key, salt)
        self._sets: tuple[float, dict[str, dict[str, Any]]] | None = None  # (read at, the online sets' metadata)
        self._views: dict[tuple[str, str, int], SetView] = {}
        self.snapshots = Snapshots(policy.snapshot.max_customers) if policy.snapshot.enabled else None
        self._decided: dict[Any, Any] = {}  # consent decisions by (status, birth date), for one day and purpose
        self._scoring = 0  # batches being scored right now
        self._scoring_lock = threading.Lock()
        # A batch scored alone may use this worker's share of the cores for LightGBM's contributions.
        self.batch_threads = max(1, (os.cpu_count() or 1) // settings.serving_workers)
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.tracking_uri)
        self.refresh()

    # -- models -------------------------------------------------------------------------------------------
    def refresh(self) -> list[str]:
        """Load any newly promoted champion; on a registry error keep what is served and report degraded."""
        swapped = []
        try:
            client = MlflowClient()
            for family in self.families:
                name = FAMILIES[family]
                try:
                    version = str(client.get_model_version_by_alias(name, ALIAS).version)
                except mlflow.exceptions.MlflowException as exc:
                    # No such model, or no such alias (the store says which with these codes): nothing promoted
                    # yet. Any other failure is the registry's, handled below.
                    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                        continue
                    raise
                current = self.models.get(family)
                if current is None or current.version != version:
                    self.models[family] = load_served(client, family, name, version)  # one assignment: atomic
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
            raise ServingError(503, "model", f"no @{ALIAS} of {FAMILIES[family]} has been promoted yet")
        return model

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
        docs = self._online().lookup(customer_key)
        return None if docs is None else _merged(docs)

    def model_features(self, model: ServedModel, customer_keys: Sequence[str]) -> StoredFeatures:
        """What the online store holds for many customers, as one model reads it: one round trip.

        Only the sets holding the model's inputs are read and parsed (for churn that leaves out
        the per-product lists, nearly half the bytes), and where those sets' documents hold exactly
        the model's inputs the answer keeps each customer's inputs as JSON text, which the
        inference log writes as it is.
        """
        view = self._view(model)
        found = self._online().raw_documents_many(customer_keys, view.set_keys)
        return _merged_many(found, view)

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

    def _view(self, model: ServedModel) -> SetView:
        now = time.monotonic()
        cached = self._sets
        if cached is None or now - cached[0] > SETS_SECONDS:
            cached = self._sets = (now, self._online().sets())
        metas = cached[1]
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
        if customer_key and stored is None and not given:
            raise ServingError(404, f"{field_name}.customer_key", f"unknown customer {customer_key!r}")
        if given:
            unknown = sorted(set(given) - set(model.columns))
            if unknown:
                raise ServingError(422, f"{field_name}.features", f"not inputs of {model.name}: {unknown[:5]}")
            return {**(stored or {}), **given}, stored
        return (stored if stored is not None else {}), stored  # read-only from here: no copy

    def check_consent(self, customer_key: str | None, purpose: str) -> tuple[str | None, bool]:
        """Suppression reason (or None) and masking, from the consent store."""
        if customer_key is None:
            return None, False  # anonymous features in the body: no one to target
        return decide_consent(self.consent.lookup(customer_key), purpose, self.policy, dt.date.today())

    def check_consents(self, customer_keys: Sequence[str | None], purpose: str) -> list[tuple[str | None, bool]]:
        """`check_consent` for many customers, with one consent-store statement."""
        keys = [k for k in customer_keys if k is not None]
        if len(keys) <= 1:
            return [self.check_consent(k, purpose) for k in customer_keys]
        found, today = self.consent.purpose_many(keys, purpose), dt.date.today()
        # Decisions follow from (status, birth date) on a given day: kept across calls for that day (a few
        # thousand distinct pairs), since deciding costs more than the lookup.
        cache = self._decided
        if cache.get("day") != (today, purpose) or len(cache) > DECISIONS_KEPT:
            cache = self._decided = {"day": (today, purpose)}
        decided: Any = cache
        out: list[tuple[str | None, bool]] = []
        for k in customer_keys:
            if k is None:
                out.append((None, False))
                continue
            seen = found[k]
            decision = decided.get(seen)
            if decision is None:
                status, born = seen
                consent = CustomerConsent({purpose: status} if status is not None else {},
                                          dt.date.fromisoformat(born) if born else None)  # fmt: skip
                decision = decided[seen] = decide_consent(consent, purpose, self.policy, today)
            out.append(decision)
        return out

    @contextmanager
    def scoring_threads(self, rows: int) -> Iterator[int]:
        """While scoring `rows` rows: LightGBM's threads for them.

        The worker's share of the cores (`batch_threads`) for a batch from PARALLEL_ROWS rows
        scored while no other batch is; one thread otherwise.
        """
        with self._scoring_lock:
            self._scoring += 1
            alone = self._scoring == 1
        try:
            yield self.batch_threads if alone and rows >= PARALLEL_ROWS else 1
        finally:
            with self._scoring_lock:
                self._scoring -= 1

    # -- the log -------------------------------------------------------------------------------------------
    def audit(self, caller: str, endpoint: str, model: ServedModel, customer_key: str | None,
              answer: dict[str, Any], suppressed: bool, masked: bool,
              inputs: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Append one inference record as the policy allows.

        `inputs`: the mapping the model read its columns from; the record keeps the model's
        columns of it (and the stored features' cutoff) when the policy logs inputs.
        """
        if suppressed and not self.policy.audit.log_suppressed:
            entry = {"at": time.time(), "caller": caller, "endpoint": endpoint, "model": model.name,
                     "version": model.version, "status": "suppressed"}  # fmt: skip
        else:
            entry = {"at": time.time(), "caller": caller, "endpoint": endpoint, "model": model.name,
                     "version": model.version, "customer": None if masked else self.log.key(customer_key),
                     "answer": answer}  # fmt: skip
            if inputs is not None and not masked and self.policy.audit.log_inputs:
                entry["as_of"] = inputs.get(AS_OF)
                # NaN, infinities and NumPy numbers are the writer's to convert (orjson: null, numbers).
                entry["inputs"] = model.input_values(inputs)
        self.log.record(entry)

    def audit_scored(self, caller: str, endpoint: str, model: ServedModel, customer_keys: Sequence[str | None],
                     answers: Sequence[dict[str, Any]], masked: Sequence[bool],
                     inputs: Sequence[dict[str, Any]], ready: Sequence[Any] | None = None,
                     cutoffs: Sequence[str | None] | None = None) -> None:  # fmt: skip
        """`audit` of many answers given (not suppressed), queued as one batch: the same entries (`audit_entries`)."""
        self.log.record_many(audit_entries(self.policy, self.log, caller, endpoint, model, customer_keys, answers,
                                           masked, inputs, ready, cutoffs))  # fmt: skip

    def close(self) -> None:
        """Flush the log."""
        self.log.close()


AS_OF = "_as_of"  # the stored features' cutoff, kept beside them for the inference log (not a model input)


def audit_entries(policy: ServingPolicy, log: InferenceLog, caller: str, endpoint: str, model: ServedModel,
                  customer_keys: Sequence[str | None], answers: Sequence[dict[str, Any]], masked: Sequence[bool],
                  inputs: Sequence[dict[str, Any]], ready: Sequence[Any] | None = None,
                  cutoffs: Sequence[str | None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The inference-log entries of answers given (not suppressed), as `Runtime.audit` writes them one by one.

    `inputs`: per answer, the mapping the model read its columns from (with the cutoff under
    AS_OF unless `cutoffs` gives them). `ready`: per answer, those columns already as the log
    keeps them, when the caller has them: JSON text (`StoredFeatures.texts`, written as it is)
    or a mapping of exactly the model's inputs (a snapshot's); None: taken from `inputs`.
    """
    at, key, log_inputs = time.time(), log.key, policy.audit.log_inputs
    take, fragment = model.input_values, orjson.Fragment
    entries = []
    for i, (customer_key, answer, hidden, row) in enumerate(zip(customer_keys, answers, masked, inputs, strict=True)):
        entry = {"at": at, "caller": caller, "endpoint": endpoint, "model": model.name, "version": model.version,
                 "customer": None if hidden else key(customer_key), "answer": answer}  # fmt: skip
        if log_inputs and not hidden:
            entry["as_of"] = row.get(AS_OF) if cutoffs is None else cutoffs[i]
            given = ready[i] if ready is not None else None
            entry["inputs"] = take(row) if given is None else fragment(given) if type(given) is str else given
        entries.append(entry)
    return entries


def _merged(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    cutoffs = []
    for doc in docs.values():
        merged.update(doc)
        if doc.get("as_of"):
            cutoffs.append(str(doc["as_of"]))
    merged.pop("as_of", None)
    if cutoffs:
        merged[AS_OF] = max(cutoffs)
    return merged


DECISIONS_KEPT = 100_000  # consent decisions kept by (status, birth date) before the cache starts over
SETS_SECONDS = 1.0  # how long the runtime reuses the online sets' metadata before reading it again


@dataclass(frozen=True)
class SetView:
    """Which online sets a model reads, and what their documents promise.

    `set_keys`: the sets holding any of the model's inputs (None: every set, when the store does
    not record its sets' columns). `exact`: those sets are flat, share no column, and together
    hold exactly the model's inputs, so a customer's documents joined are the model's inputs
    as JSON. `numbers_checked`: moreover every numeric input is a JSON number or null in them.
    """

    set_keys: tuple[str, ...] | None
    exact: bool = False
    numeric: frozenset[str] = frozenset()


def set_view(metas: dict[str, dict[str, Any]], inputs: Sequence[str]) -> SetView:
    """The sets a model with these inputs reads, from the online store's metadata (`OnlineStore.sets`)."""
    if not metas or any(not isinstance(m.get("columns"), list) for m in metas.values()):
        return SetView(None)
    wanted = set(inputs)
    chosen = [k for k, m in sorted(metas.items()) if wanted & set(m["columns"])]
    columns = [c for k in chosen for c in metas[k]["columns"]]
    exact = (
        bool(chosen)
        and not any(metas[k].get("grouped") for k in chosen)
        and len(columns) == len(set(columns)) == len(wanted)
        and set(columns) == wanted
    )
    numeric = frozenset(c for k in chosen for c in metas[k].get("numeric", ())) if exact else frozenset()
    return SetView(tuple(chosen), exact, numeric)


@dataclass
class StoredFeatures:
    """Many customers' stored features as a model reads them (`Runtime.model_features`).

    `rows`: per customer found, the documents merged (a later set's value wins) with the
    newest cutoff under AS_OF. `texts`: per customer whose documents hold exactly the model's
    inputs (`SetView.exact`, every chosen set present), those inputs as JSON text.
    """

    rows: dict[str, dict[str, Any]]
    texts: dict[str, str] = field(default_factory=dict)
    view: SetView | None = None


_CUTOFF_FIRST = '{"as_of":"'  # how the feature store writes a document: its cutoff first


def _merged_many(found: dict[str, list[str]], view: SetView | None) -> StoredFeatures:
    """`_merged` of many customers' raw JSON documents (each customer's in set-key order), parsed in one call.

    The feature store writes each document as a flat object with its cutoff first, so a
    customer's document bodies after their cutoffs, joined into one object, are their features
    merged (a later key wins when parsed, as in `dict.update`), and each cutoff is read off its
    document's start; all customers' objects then parse as one JSON array. Anything else is
    parsed document by document. Values JSON has no word for (NaN, infinities) are read as Python's
    `json` reads them.
    """
    texts, cutoffs = [], []
    for docs in found.values():
        parts, newest = [], ""
        for doc in docs:
            end = doc.find('"', 10)
            if not doc.startswith(_CUTOFF_FIRST) or doc[-1] != "}" or end <= 10 or "\\" in doc[10:end]:
                return _merged_slowly(found)
            after = doc[end + 1]
            if after == ",":
                parts.append(doc[end + 2 : -1])
            elif after != "}":
                return _merged_slowly(found)
            cutoff = doc[10:end]
            if cutoff > newest:
                newest = cutoff
        texts.append("{" + ",".join(parts) + "}")
        cutoffs.append(newest)
    parsed: list[dict[str, Any]] = _loads("[" + ",".join(texts) + "]")
    rows = {}
    for key, row, cutoff in zip(found, parsed, cutoffs, strict=True):
        row[AS_OF] = cutoff
        rows[key] = row
    kept: dict[str, str] = {}
    if view is not None and view.exact and view.set_keys is not None:
        complete = len(view.set_keys)
        kept = {k: t for (k, docs), t in zip(found.items(), texts, strict=True) if len(docs) == complete}
    return StoredFeatures(rows, kept, view)


def _merged_slowly(found: dict[str, list[str]]) -> StoredFeatures:
    return StoredFeatures({k: _merged({str(i): _loads(d) for i, d in enumerate(v)}) for k, v in found.items()})


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN and infinities, which orjson refuses


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.floating):
        return finite(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
