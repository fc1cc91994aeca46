"""Next-best-action decisions at serving time: the policy served, each customer's state, the decision, its log.

`PolicySource` holds the decision policy the service decides with: the registry's `@champion`
of the policy's registered name (`custintel-nba`), polled like the models, else the policy
file from the settings (`CUSTINTEL_DECISION_POLICY`, default the packaged one), said in every
answer (`PolicyRef.source`). `Decider` builds the arbitration's `CustomerState`s for the
customers of a request from what the score endpoints read (the online store's features, the
champions' scores: churn, uplift, propensity; consent per purpose and age from the consent
file; caps and cool-downs from the decision log's history), calls `decisions.arbitration`,
writes each decision to the decision log before answering, and records outcomes.

A live decision (`/decide`) is not held to the channel's daily capacity (the customer is in
the interaction already); a campaign (`/decide/batch`) is, less what the channel's earlier
decisions of the day used (contacts: decisions whose first action is not the fallback).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd

from decisions.arbitration import CustomerState, Decision, decide, decide_batch, expected_value
from decisions.policy import DecisionPolicy, Purpose, load_policy
from decisions.states import customer_states
from serving.champions import ServedModel
from serving.consent import CustomerConsent, parse_statuses
from serving.decision_log import DecisionLog, decision_log_path, new_decision_id, new_decision_ids, now_iso, seed_of
from serving.errors import ServingError
from serving.experiments import ExperimentSource, Placement, holdout_decision
from serving.runtime import Runtime
from serving.schemas import DecideBatchRequest, DecideRequest, DecideResponse, ModelRef, OutcomeRequest, PolicyRef
from serving.scoring import fast_route, inner_pipeline, score_matrix, score_records

log = logging.getLogger("custintel.serving")
ALIAS = "champion"
PURPOSES: tuple[Purpose, ...] = ("profiling", "marketing", "analytics")


@dataclass(frozen=True)
class ServedPolicy:
    """The decision policy answering now, and where it came from."""

    policy: DecisionPolicy
    version: str | None  # the registered version; None: the policy file
    source: Literal["registry", "file"]
    digest: str
    loaded_at: str

    def ref(self) -> dict[str, Any]:
        """The `PolicyRef` document of this policy."""
        return {"name": self.policy.name, "version": self.version, "source": self.source, "digest": self.digest}


class PolicySource:
    """The promoted decision policy, polled from the registry; the settings' policy file until one is promoted.

    A registry failure keeps the policy served (`degraded` says why); a registered text that no
    longer validates is refused the same way (the previous policy keeps answering).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.settings = runtime.settings
        self.registry = runtime.champions.registry
        policy = load_policy(self.settings.decision_policy)
        self.name = policy.name
        self.current = ServedPolicy(policy, None, "file", policy.digest(), now_iso())
        self.degraded: str | None = None
        self._lock = threading.Lock()

    def refresh(self) -> str | None:
        """Load a newly promoted policy; returns what was swapped in (None: nothing changed)."""
        with self._lock:
            lookup = getattr(self.registry, "policy_version", None)  # Registry.policy_version: (version, YAML text)
            if lookup is None:
                return None
            try:
                found = lookup(self.name, ALIAS)
            except Exception as exc:  # noqa: BLE001 - keep deciding with what is served, say so
                self.degraded = f"decision policy registry unreachable: {type(exc).__name__}: {exc}"[:300]
                log.warning(self.degraded)
                return None
            self.degraded = None
            if found is None:
                return None  # nothing promoted: the file (or the last promoted version) keeps answering
            version, text = found
            if self.current.source == "registry" and self.current.version == str(version):
                return None
            try:
                policy = load_policy(text)
            except ValueError as exc:
                self.degraded = f"{self.name} v{version} does not validate, not served: {exc}"[:300]
                log.warning(self.degraded)
                return None
            self.current = ServedPolicy(policy, str(version), "registry", policy.digest(), now_iso())
            return f"{self.name} v{version}"


_PAIRS_ROUTE: dict[int, bool] = {}  # id(model) -> the propensity model's pandas-free route was checked exact
PRODUCT = "product_id"


def _pairs_matrix(model: Any, rows: Sequence[Mapping[str, Any]], products: Sequence[str], at: np.ndarray,
                  base: np.ndarray | None = None, threads: int = 1) -> np.ndarray | None:  # fmt: skip
    """P(buy) of (row, product) pairs from each customer's `records_matrix` row, the product's code set in place.

    `base`: the rows' `records_matrix` when the caller has it already. None when the model is not a
    preparation + LightGBM classifier pipeline reading `product_id` as a category.
    """
    if not hasattr(model, "steps") or len(model.steps) != 2 or not hasattr(model[-1], "booster_"):
        return None
    prepare = model[0]
    if not hasattr(prepare, "records_matrix") or PRODUCT not in list(prepare.categorical):
        return None
    column = len(prepare.numeric) + list(prepare.categorical).index(PRODUCT)
    codes = {str(v): float(i) for i, v in enumerate(prepare.categories_[PRODUCT])}
    if base is None:
        base = prepare.records_matrix(rows)
    big = base[at[:, 0]]
    big[:, column] = np.asarray([codes.get(str(p), np.nan) for p in products])[at[:, 1]]
    return np.asarray(model[-1].booster_.predict(big, num_threads=threads), dtype=float)


def score_pairs(served: ServedModel, rows: Sequence[Mapping[str, Any]], products: Sequence[str],
                at: np.ndarray, base: np.ndarray | None = None, threads: int = 1) -> np.ndarray:  # fmt: skip
    """The propensity champion's P(buy) of (customer row, product) pairs given as index pairs `at`.

    Without pandas and without copying each customer's inputs per product once that route was
    checked exact against the model's own `predict_proba` on a first call. `base`: the rows'
    `records_matrix` for the model's preparation step, when the caller made it already;
    `threads`: LightGBM's threads (the predictions are the same on any number).
    """
    model = served.model
    if _PAIRS_ROUTE.get(id(model)):
        fast = _pairs_matrix(model, rows, products, at, base, threads)
        if fast is not None:
            return fast
    records = [{**rows[i], PRODUCT: products[j]} for i, j in at.tolist()]
    slow = np.asarray(model.predict_proba(pd.DataFrame(records, columns=served.columns)))[:, 1]
    if id(model) not in _PAIRS_ROUTE:
        try:
            fast = _pairs_matrix(model, rows, products, at, base)
        except (ValueError, TypeError, KeyError, AttributeError):
            fast = None
        _PAIRS_ROUTE[id(model)] = fast is not None and np.allclose(fast, slow, atol=1e-9)
    return slow


_UPLIFT_ROUTE: dict[int, bool] = {}  # id(model) -> its pandas-free route was checked exact


def _uplift_matrix(model: Any, matrix: np.ndarray, threads: int = 1) -> np.ndarray | None:
    """An `UpliftLearner`'s predict on `records_matrix` rows, straight through its boosters (None: not one)."""
    learner = model[-1] if hasattr(model, "steps") else None
    if learner is None or not hasattr(learner, "treated_"):
        return None
    if getattr(learner, "learner", None) == "two_model":
        treated = learner.treated_.booster_.predict(matrix, raw_score=False, num_threads=threads)
        control = learner.control_.booster_.predict(matrix, raw_score=False, num_threads=threads)
        return np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    e = learner.treated_share_
    control = learner.effect_control_.booster_.predict(matrix, num_threads=threads)
    treated = learner.effect_treated_.booster_.predict(matrix, num_threads=threads)
    return e * np.asarray(control, dtype=float) + (1 - e) * np.asarray(treated, dtype=float)


def predict_uplift(served: ServedModel, rows: Sequence[Mapping[str, Any]], matrix: np.ndarray | None = None,
                   threads: int = 1) -> np.ndarray:  # fmt: skip
    """The uplift champion's predicted effect per row: pandas-free once that route was checked exact on a first call.

    A request is one or a few rows: building a frame and running the preparation step cost
    far more than the four small tree ensembles. `matrix`: the rows' `records_matrix` for the
    model's preparation step, when the caller made it already; `threads`: LightGBM's threads.
    """
    model = served.model
    prepare = model[0] if hasattr(model, "steps") else None
    checked = _UPLIFT_ROUTE.get(id(model))
    if checked and prepare is not None:
        fast = _uplift_matrix(model, prepare.records_matrix(rows) if matrix is None else matrix, threads)
        if fast is not None:
            return fast
    slow = np.asarray(model.predict(pd.DataFrame(list(rows), columns=served.inputs)), dtype=float)
    if checked is None:
        try:
            fast = _uplift_matrix(model, prepare.records_matrix(rows)) if prepare is not None else None
        except (ValueError, TypeError, KeyError):
            fast = None
        _UPLIFT_ROUTE[id(model)] = fast is not None and np.allclose(fast, slow, atol=1e-9)
    return slow


class _Matrices:
    """One request's rows as each model's preparation step makes them (`records_matrix`), each column made once.

    A step whose inputs another step of the request already made (the same numeric columns, the same
    categories in the same order) takes them from that matrix instead of reading the rows again.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.rows = rows
        self._made: list[tuple[Any, np.ndarray]] = []

    def of(self, prepare: Any) -> np.ndarray:
        """The rows' `records_matrix` for this preparation step."""
        for other, matrix in self._made:
            if other is prepare:
                return matrix
        for other, matrix in self._made:
            picked = _columns_from(other, prepare)
            if picked is not None:
                found = matrix[:, picked]
                self._made.append((prepare, found))
                return found
        made = np.asarray(prepare.records_matrix(self.rows))
        self._made.append((prepare, made))
        return made


# (id(source), id(target)) -> both steps (held, so their ids are not reused while here) and `_find_columns`
_COLUMNS: dict[tuple[int, int], tuple[Any, Any, list[int] | None]] = {}


def _columns_from(source: Any, target: Any) -> list[int] | None:
    """Where `target`'s matrix columns are in `source`'s matrix (None: not all there, or coded otherwise)."""
    found = _COLUMNS.get((id(source), id(target)))
    if found is None or found[0] is not source or found[1] is not target:
        if len(_COLUMNS) > 64:  # models replaced by newer versions: start again
            _COLUMNS.clear()
        found = _COLUMNS[(id(source), id(target))] = (source, target, _find_columns(source, target))
    return found[2]


def _find_columns(source: Any, target: Any) -> list[int] | None:
    numeric, categorical = list(source.numeric), list(source.categorical)
    where = {c: i for i, c in enumerate(numeric)}
    out = []
    for c in target.numeric:
        if c not in where:
            return None
        out.append(where[c])
    for c in target.categorical:
        if c not in categorical or list(source.categories_[c]) != list(target.categories_[c]):
            return None
        out.append(len(numeric) + categorical.index(c))
    return out


def _may_cross_sell(policy: DecisionPolicy, keys: Sequence[str], consent: Mapping[str, Mapping[Purpose, bool]],
                    minors: np.ndarray) -> np.ndarray:  # fmt: skip
    """Per customer, whether the arbitration's rules could let any cross-sell action through on some channel.

    The rules before any score (`decisions.arbitration`): an action with a consent purpose is
    refused to a minor and to a customer without that consent. A customer refused every cross-sell
    this way never has a propensity read, so it need not be scored. A purpose `consent` leaves out
    counts as given, as `customer_states` resolves it (`unknown_consent`).
    """
    actions = [a for a in policy.actions if a.kind == "cross_sell"]
    if any(a.purpose is None for a in actions):
        return np.ones(len(keys), dtype=bool)
    purposes = {a.purpose for a in actions if a.purpose is not None}
    return np.array(
        [not minor and any(consent[k].get(p, True) for p in purposes) for k, minor in zip(keys, minors.tolist(),
                                                                                            strict=True)],
        dtype=bool,
    )  # fmt: skip


def _numbers(values: list[Any]) -> np.ndarray:
    """`pd.to_numeric(values, errors="coerce")` as floats, without pandas when every value is a number or None."""
    if all(v is None or type(v) in (int, float) for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=float)
    return np.asarray(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce"), dtype=float)


def _held(stored: Mapping[str, Any]) -> frozenset[str]:
    items = stored.get("items") or []
    return frozenset(str(i["product_id"]) for i in items if isinstance(i, dict) and i.get("holds"))


def _ref(model: ServedModel) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "alias": ALIAS}


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


FAMILIES = ("churn", "uplift", "propensity")  # the champions a decision reads, in the order answers name them
CHECKPOINT_SECONDS = 1.0  # how often the decision log's WAL is checked for a checkpoint (on a thread of its own)
HOLD_STALE_SECONDS = 60.0  # a campaign's capacity hold stops counting after this (or twice the timeout, if longer)
RESOLVED_KEPT = 100_000  # distinct (decisions, birth date) pairs `_consent` keeps resolved before it starts over
FILL_CHUNK = 250  # customers scored per step when the cache is filled ahead
FILL_PAUSE = 0.01  # seconds between those steps (requests take the GIL meanwhile)
CACHE_CUSTOMERS = (
    100_000  # customers whose state parts the cache holds at most (about 1 KiB each); then it starts again
)


@dataclass(frozen=True)
class _Derived:
    """What a customer's state takes from the online store and the champions: the same until either changes."""

    held: frozenset[str]
    churn_risk: float  # NaN: no score (or no churn champion)
    uplift: float
    propensity: np.ndarray | None  # per product of `_products` (NaN: held, or not scored); None: no champion
    scores: Mapping[str, float]  # the same as {product: score}, NaN left out (what the state holds)
    scored: bool  # whether the propensities were scored (False: no cross-sell could reach them when made)
    values: tuple[Any, ...]  # the stored values of `_columns(policy)`


def _columns(policy: DecisionPolicy) -> list[str]:
    """The stored columns a state reads: the policy's signals and its equity attribute."""
    return sorted({c for c in policy.signals.values()} | {policy.equity.attribute})


_PRODUCTS: dict[tuple[int, int], tuple[DecisionPolicy, Any, list[str]]] = {}  # (id(policy), id(model)) -> products


def _products(policy: DecisionPolicy, model: ServedModel) -> list[str]:
    """The products a cross-sell may offer that the propensity champion knows (every offered one if it says none)."""
    from serving.answers import product_catalogue

    found = _PRODUCTS.get((id(policy), id(model.model)))
    if found is not None and found[0] is policy and found[1] is model.model:
        return found[2]
    catalogue = set(product_catalogue(model))
    offered = {p for a in policy.actions if a.kind == "cross_sell" for p in a.offered()}
    products = sorted(offered & catalogue if catalogue else offered)
    if len(_PRODUCTS) > 16:  # policies and models replaced by newer ones: start again
        _PRODUCTS.clear()
    _PRODUCTS[(id(policy), id(model.model))] = (policy, model.model, products)
    return products


class Decider:
    """Decisions and outcomes for the service (thread-safe for concurrent requests)."""

    def __init__(self, runtime: Runtime, fill_ahead: bool = False) -> None:
        self.runtime = runtime
        self.policies = PolicySource(runtime)
        salt = runtime.settings.serving_log_salt or "custintel"
        self.log = DecisionLog(decision_log_path(runtime.settings), runtime.policy.audit.customer_key, salt,
                               checkpoint_seconds=CHECKPOINT_SECONDS)  # fmt: skip
        self.policies.refresh()
        self.experiments = ExperimentSource(runtime.settings)
        self.fill_ahead = fill_ahead  # score the store's customers into a new cache on a thread of its own
        # (token, policy, customer -> parts of the state): see `_cache`
        self._derived: tuple[Any, DecisionPolicy, dict[str, _Derived]] | None = None
        self._resolved: dict[Any, Any] = {}  # (decisions text, birth date) -> (consent, minor), for one day: `_consent`

    # -- states --------------------------------------------------------------------------------------------------
    def _consent(self, keys: Sequence[str], today: dt.date, age_below: int) -> tuple[dict[str, dict[Purpose, bool]],
                                                                                     np.ndarray]:  # fmt: skip
        """Per customer, consent per purpose as the serving policy resolves it (unknown: its rule), and minors.

        One row per customer from the store (`summaries_many`); each distinct (decisions, birth date) pair is
        resolved once a day and its mapping shared by the customers who have it (a campaign sees a few hundred
        pairs among thousands of customers). Nobody changes a state's consent mapping.
        """
        found = self.runtime.consent.store.summaries_many(keys)
        unknown = {str(k): str(v) for k, v in self.runtime.policy.unknown_consent.items()}
        resolved = self._resolved
        if resolved.get("day") != (today, age_below) or len(resolved) > RESOLVED_KEPT:
            resolved = self._resolved = {"day": (today, age_below)}
        consent: dict[str, dict[Purpose, bool]] = {}
        minors = np.zeros(len(keys), dtype=bool)
        for i, key in enumerate(keys):
            seen = found[key]
            hit = resolved.get(seen)
            if hit is None:
                text, born = seen
                held = CustomerConsent(parse_statuses(text), dt.date.fromisoformat(born) if born else None)
                statuses = held.statuses
                given = {p: statuses[p] == "granted" if p in statuses else unknown.get(p, "allow") != "suppress"
                         for p in PURPOSES}  # fmt: skip
                age = held.age_on(today)
                hit = resolved[seen] = (given, age is not None and age < age_below)
            consent[key], minors[i] = hit
        return consent, minors

    def states(
        self, policy: DecisionPolicy, keys: Sequence[str], today: dt.date
    ) -> tuple[list[CustomerState], list[str], list[dict[str, str]]]:
        """The arbitration's states of the customers the online store knows, their keys, the champions used.

        In request order. A champion not promoted leaves its field empty (the arbitration then
        falls back, said in its answer). The stored rows are read once and made into each model's
        matrix once (`_Matrices`: a model whose inputs another's matrix holds takes its columns);
        every champion is scored on its pandas-free route once that was checked exact, and a
        batch's predictions use this worker's share of the cores when it is scored alone.
        """
        found, rows, hits = self._stored(policy, keys)
        if not found:
            return [], [], []
        states, used = self._build(policy, found, rows, today, hits)
        return states, found, used

    # -- what a state takes from the online store and the champions, kept per customer --------------------------
    def _cache(self, policy: DecisionPolicy) -> dict[str, _Derived] | None:
        """The per-customer cache valid now: the online store, the champions and the policy as they were when made.

        A new token (a set materialised again or erased from, a champion promoted, another policy served)
        starts an empty one. None when the serving policy keeps no in-memory copies (`snapshot.enabled`).
        """
        runtime = self.runtime
        if runtime.snapshots is None:
            return None
        models = runtime.champions.models
        served = tuple((f, models[f].version, id(models[f].model)) for f in FAMILIES if models.get(f) is not None)
        token = (runtime.online_state(), served)
        held = self._derived
        if held is None or held[0] != token or held[1] is not policy:
            held = self._derived = (token, policy, {})
            if self.fill_ahead:
                threading.Thread(target=self._fill, args=(held,), name="decisions-fill", daemon=True).start()
        return held[2]

    def _fill(self, held: tuple[Any, DecisionPolicy, dict[str, _Derived]]) -> None:
        """Fill a new cache with every customer of the online store, a chunk at a time (on its own thread).

        What a snapshot does for the churn batches: the champions score the store's customers once per
        store state, so a live decision or a campaign reads them from memory. Stops when the cache is
        replaced (the store, a champion or the policy moved on) or full; a failure leaves the cache to the
        requests, which fill it as they go.
        """
        _, policy, cache = held
        try:
            keys = self.runtime.customer_keys()[:CACHE_CUSTOMERS]
            for start in range(0, len(keys), FILL_CHUNK):
                if self._derived is not held:
                    return
                todo = [k for k in keys[start : start + FILL_CHUNK] if k not in cache]
                found, rows, _ = self._stored(policy, todo)
                found = [k for k in found if k in rows]  # not those a request cached meanwhile
                if not found:
                    continue
                _, _, wanted = self._reach(policy, found, dt.date.today())
                made = self._derive(policy, found, [rows[k] for k in found], wanted)
                if self._derived is not held:
                    return
                cache.update(zip(found, made, strict=True))
                time.sleep(FILL_PAUSE)  # the requests first: a chunk at a time
        except Exception as exc:  # noqa: BLE001 - the requests fill the cache themselves; say why this did not
            log.warning("decision cache not filled ahead: %s: %s", type(exc).__name__, exc)

    def _reach(
        self, policy: DecisionPolicy, keys: Sequence[str], today: dt.date
    ) -> tuple[dict[str, dict[Purpose, bool]], np.ndarray, np.ndarray]:
        """Consent per purpose and minors of the customers, and which of them a cross-sell may reach.

        None may be reached without a propensity champion.
        """
        consent, minors = self._consent(keys, today, policy.minors.age_below)
        if self.runtime.champions.models.get("propensity") is None:
            return consent, minors, np.zeros(len(keys), dtype=bool)
        return consent, minors, _may_cross_sell(policy, keys, consent, minors)

    def prefetch(self) -> None:
        """Start filling the cache for the policy served now (when it fills ahead), before the first request."""
        self._cache(self.policies.current.policy)

    def _stored(
        self, policy: DecisionPolicy, keys: Sequence[str]
    ) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, _Derived]]:
        """The customers the online store knows (request order), with what states are built from.

        The stored features of those not in the cache, and the cached parts of those in it.
        """
        cache = self._cache(policy)
        hits = {k: d for k in keys if (d := cache.get(k)) is not None} if cache else {}
        stored = self.runtime.features_many([k for k in keys if k not in hits]) if len(hits) < len(keys) else {}
        found = [k for k in keys if k in hits or k in stored]
        return found, stored, hits

    def _used(self) -> list[dict[str, str]]:
        """The champions a decision reads, as `states` lists them (for a customer decided without them)."""
        models = self.runtime.champions.models
        return [_ref(models[f]) for f in FAMILIES if models.get(f) is not None]

    def _derive(self, policy: DecisionPolicy, keys: list[str], rows: list[dict[str, Any]],
                wanted: np.ndarray) -> list[_Derived]:  # fmt: skip
        """Each customer's parts of a state from their stored features and the champions (scored as a batch)."""
        runtime = self.runtime
        matrices = _Matrices(rows)
        models = runtime.champions.models
        n = len(keys)
        churn_risk = uplift = None
        propensity: np.ndarray | None = None
        held = [_held(r) for r in rows]
        with runtime.scoring_threads.lease(n) as threads:
            prop = models.get("propensity")
            if prop is not None:
                propensity = self._propensity(policy, prop, keys, rows, dict(zip(keys, held, strict=True)), matrices,
                                              threads, wanted)  # fmt: skip
            churn = models.get("churn")
            if churn is not None:
                pipeline = inner_pipeline(churn.model)
                if fast_route(churn.model) and pipeline is not None:
                    churn_risk, _ = score_matrix(churn.model, matrices.of(pipeline[0]), 0, threads)
                else:  # the first call: checks the pandas-free route against the model
                    churn_risk, _ = score_records(churn.model, rows, churn.inputs, 0)
            up = models.get("uplift")
            if up is not None:
                prepare = up.model[0] if hasattr(up.model, "steps") else None
                ready = prepare is not None and _UPLIFT_ROUTE.get(id(up.model))
                uplift = predict_uplift(up, rows, matrices.of(prepare) if ready else None, threads)
        columns = _columns(policy)
        values = [tuple(r.get(c) for c in columns) for r in rows]
        risks = [math.nan] * n if churn_risk is None else np.asarray(churn_risk, dtype=float).tolist()
        effects = [math.nan] * n if uplift is None else np.asarray(uplift, dtype=float).tolist()
        scored = wanted.tolist()
        scores: list[Mapping[str, float]] = [{} for _ in range(n)]
        if propensity is not None:
            products = _products(policy, models["propensity"])
            scores = [{c: v for c, v in zip(products, row, strict=True) if not math.isnan(v)}
                      for row in propensity.tolist()]  # fmt: skip
        return [
            _Derived(held[i], risks[i], effects[i], None if propensity is None else propensity[i], scores[i],
                     scored[i], values[i])
            for i in range(n)
        ]  # fmt: skip

    def _build(self, policy: DecisionPolicy, found: list[str], rows: Mapping[str, dict[str, Any]], today: dt.date,
               hits: Mapping[str, _Derived] | None = None,
               ) -> tuple[list[CustomerState], list[dict[str, str]]]:  # fmt: skip
        """`states` of customers the store knows: from the cache (`hits`) or their stored features (`rows`).

        Consent, age and the contact history are read for every customer, every time; a cached customer whose
        propensities were not scored (no cross-sell could reach them then) and now may be reached is scored anew.
        """
        hits = hits or {}
        models = self.runtime.champions.models
        consent, minors, wanted = self._reach(policy, found, today)
        prop = models.get("propensity")
        stale = [k for k, w in zip(found, wanted.tolist(), strict=True) if w and k in hits and not hits[k].scored]
        if stale:  # read again: their features were not fetched
            rows = {**rows, **self.runtime.features_many(stale)}
            hits = {k: d for k, d in hits.items() if k not in set(stale)}
        missing = [i for i, k in enumerate(found) if k not in hits]
        parts: dict[str, _Derived] = dict(hits)
        if missing:
            keys = [found[i] for i in missing]
            made = self._derive(policy, keys, [rows[k] for k in keys], wanted[missing])
            parts.update(zip(keys, made, strict=True))
            cache = self._cache(policy)
            if cache is not None:
                if len(cache) + len(keys) > CACHE_CUSTOMERS:
                    cache.clear()
                cache.update(zip(keys, made, strict=True))
        derived = [parts[k] for k in found]
        used = self._used()
        churn_risk = None if models.get("churn") is None else np.array([d.churn_risk for d in derived], dtype=float)
        uplift = None if models.get("uplift") is None else np.array([d.uplift for d in derived], dtype=float)
        propensity: list[Mapping[str, float]] | None = None
        if prop is not None:  # the customers no cross-sell may reach now: no propensity
            none: Mapping[str, float] = {}
            propensity = [d.scores if w else none for d, w in zip(derived, wanted.tolist(), strict=True)]
        columns = _columns(policy)
        signal_columns = set(policy.signals.values())
        data: dict[str, Any] = {"customer_key": found}  # the columns `customer_states` reads, without a frame
        for j, c in enumerate(columns):
            values = [d.values[j] for d in derived]
            data[c] = _numbers(values) if c in signal_columns else values
        window = max((max(a.window_days, a.cooldown_days) for a in policy.actions), default=1)
        idle = [a.name for a in policy.actions if a.kind == "none"]  # no cap or cool-down reads them
        history = self.log.history(found, since=today - dt.timedelta(days=window), skip=idle)
        group_values = np.asarray(data[policy.equity.attribute], dtype=object)
        groups = group_values if any(g is not None for g in group_values) else None
        held = {k: d.held for k, d in zip(found, derived, strict=True)}
        states = customer_states(
            policy, data, churn_risk=churn_risk, uplift=uplift, propensity=propensity, margins={},
            consent=consent, minors=minors, groups=groups, history=history, products_held=held,
        )  # fmt: skip
        return states, used

    @staticmethod
    def _propensity(policy: DecisionPolicy, model: ServedModel, keys: Sequence[str], rows: Sequence[dict[str, Any]],
                    held: Mapping[str, frozenset[str]], matrices: _Matrices | None = None,
                    threads: int = 1, wanted: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """P(buy) of each cross-sell product (`_products`) a customer does not hold (NaN: held, or not scored).

        Every (customer, product) pair in one scoring pass (`score_pairs`: pandas-free where exact),
        the pairs found with NumPy (customer-major, as the products are sorted). `wanted`: per
        customer, whether any cross-sell may be offered at all (`_may_cross_sell`); the others are
        not scored (no rule lets their scores matter).
        """
        products = _products(policy, model)
        column = {p: j for j, p in enumerate(products)}
        holds = np.zeros((len(keys), len(products)), dtype=bool)
        for i, k in enumerate(keys):
            for p in held[k]:
                j = column.get(p)
                if j is not None:
                    holds[i, j] = True
        if wanted is not None:
            holds[~wanted] = True
        matrix = np.full((len(keys), len(products)), np.nan)
        at = np.argwhere(~holds)
        if len(at):
            prepare = model.model[0] if hasattr(model.model, "steps") else None
            base = matrices.of(prepare) if matrices is not None and _PAIRS_ROUTE.get(id(model.model)) else None
            matrix[at[:, 0], at[:, 1]] = score_pairs(model, rows, products, at, base, threads)
        return matrix  # a row per customer, a column per product of `_products`

    # -- decisions -----------------------------------------------------------------------------------------------
    def _entries(self, served: ServedPolicy, decided: Sequence[Decision], ids: Sequence[str], channel: str,
                 models: list[dict[str, str]], placements: Mapping[str, Placement] | None = None,
                 context: Mapping[str, Any] | None = None,
                 ) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:  # fmt: skip
        """Each decision's answer (a `DecideResponse` document, by customer key), its log row and its exposures' rows.

        Straight from the decisions to plain dicts and the log's tuples (`LoggedDecision.row`'s values, JSON
        columns serialised with orjson), what is the same for every decision (the policy's and models'
        references, the models' JSON, the context's) made once: a campaign's thousand answers are built and
        logged without a validating model or an intermediate object per customer.
        """
        policy = served.policy
        ref = served.ref()
        dumps = orjson.dumps
        models_json = dumps({m["name"]: m["version"] for m in models}).decode()
        context_json = dumps(dict(context or {})).decode()
        key, fallback, name, version = self.log.key, policy.fallback, policy.name, served.version
        answers: dict[str, dict[str, Any]] = {}
        rows: list[tuple[Any, ...]] = []
        exposures: list[tuple[Any, ...]] = []
        no_place: list[dict[str, object]] = []
        at = now_iso()  # the moment of the call: every decision of a campaign is made at once
        for decision, decision_id in zip(decided, ids, strict=True):
            chosen: list[dict[str, Any]] = []
            logged: list[dict[str, Any]] = []
            value = 0.0
            for c in decision.actions:
                reasons = list(c.reasons)
                kind, ch = c.kind, str(c.channel)
                priority, p, v, lever = _finite(c.priority), _finite(c.p), _finite(c.v), _finite(c.l)
                chosen.append({"name": c.action, "kind": kind, "channel": ch, "priority": priority, "p": p, "v": v,
                               "l": lever, "reasons": reasons})  # fmt: skip
                logged.append({"action": c.action, "kind": kind, "channel": ch, "priority": priority, "p": p, "v": v,
                               "l": lever, "reasons": reasons})  # fmt: skip
                value += _finite(expected_value(c))
            customer_key = decision.customer_key
            placement = placements.get(customer_key) if placements is not None else None
            probability, explored, is_fallback = float(decision.probability), bool(decision.explored), \
                bool(decision.fallback)  # fmt: skip
            reasons_all = list(decision.reasons)
            answers[customer_key] = {
                "customer_key": customer_key, "channel": channel, "status": "decided", "error": None,
                "decision_id": decision_id, "actions": chosen, "reasons": reasons_all, "prompt": decision.prompt,
                "probability": probability, "explored": explored, "fallback": is_fallback,
                "fallback_reason": decision.fallback_reason, "expected_value": value, "policy": ref, "models": models,
                "experiments": placement.refs() if placement else no_place,
            }  # fmt: skip
            logged_key = key(customer_key)
            rows.append((
                decision_id, logged_key, channel, name, version,
                decision.actions[0].action if decision.actions else fallback, dumps(logged).decode(), probability,
                dumps(decision.action_probabilities).decode(), int(explored),  # names -> Python floats already
                int(is_fallback), decision.fallback_reason, dumps(reasons_all).decode(), context_json, at, value,
                models_json,
            ))  # fmt: skip
            if placement is not None and logged_key is not None:
                # one per experiment arm the customer is in (the log keeps the first); none when the log keeps
                # no customer keys (the audit rule `omit`): an exposure nobody can be found by is of no use
                exposures += [(a.experiment, int(a.version), a.arm, logged_key, decision_id, channel, at)
                              for a in placement.assignments]  # fmt: skip
        return answers, rows, exposures

    def decide_one(self, request: DecideRequest) -> dict[str, Any]:
        """One live decision (a `DecideResponse` document), logged before it is answered; 404 for an unknown key."""
        served = self.policies.current
        today = dt.date.today()
        found, rows, hits = self._stored(served.policy, [request.customer_key])
        if not found:
            raise ServingError(404, "customer_key", f"unknown customer {request.customer_key!r}")
        decision_id = new_decision_id()
        placement = self.experiments.place([request.customer_key])[request.customer_key]
        if placement.held_out:  # the fallback whatever the state: no state is built
            models = self._used()
            decision = holdout_decision(served.policy, request.customer_key, request.channel, served.version)
        else:
            states, models = self._build(served.policy, found, rows, today, hits)
            decision = decide(served.policy, states[0], request.channel, today, seed=seed_of(decision_id),
                              context=dict(request.context), policy_version=served.version,
                              withheld=placement.withheld or None)  # fmt: skip
        answers, logged, exposures = self._entries(served, [decision], [decision_id], request.channel, models,
                                                   {request.customer_key: placement}, request.context)  # fmt: skip
        self.log.write_rows(logged, exposures)
        return answers[request.customer_key]

    def decide_many(self, request: DecideBatchRequest) -> dict[str, Any]:
        """A campaign's decisions under the channel's capacity left today (a `DecideBatchResponse` document)."""
        served = self.policies.current
        policy = served.policy
        today = dt.date.today()
        found, rows, hits = self._stored(policy, request.customer_keys)
        placements = self.experiments.place(found)
        # the global holdout takes no capacity and gets the fallback whatever its state: decided apart, no state built
        held_out = [k for k in found if placements[k].held_out]
        if held_out:
            found = [k for k in found if not placements[k].held_out]
        states: list[CustomerState] = []
        models = self._used() if held_out else []  # no customer found: the answers name no champion
        if found:
            states, models = self._build(policy, found, rows, today, hits)
        left: dict[str, int] | None = None
        hold: str | None = None
        if request.channel in policy.capacity and states:  # held while decided: see `DecisionLog.hold_capacity`
            stale = max(HOLD_STALE_SECONDS, 2 * self.runtime.policy.timeout_seconds)
            hold, free = self.log.hold_capacity(request.channel, policy.fallback, dt.date.today(),
                                                policy.capacity[request.channel], len(states), stale)  # fmt: skip
            left = {request.channel: free}
        try:
            withheld = {k: p.withheld for k, p in placements.items() if p.withheld}
            batch_id = new_decision_id()
            batch = decide_batch(policy, states, request.channel, today, seed=seed_of(batch_id), capacity=left,
                                 policy_version=served.version, withheld=withheld or None) \
                if states else None  # fmt: skip
            decided = list(batch.decisions) if batch is not None else []
            decided += [holdout_decision(policy, k, request.channel, served.version) for k in held_out]
            answers, logged, exposures = self._entries(served, decided, new_decision_ids(len(decided)),
                                                       request.channel, models, placements)  # fmt: skip
            self.log.write_rows(logged, exposures, release=hold)
        except BaseException:
            self.log.release(hold)
            raise
        results = []
        unknown: dict[str, Any] | None = None
        for key in request.customer_keys:
            found_answer = answers.get(key)
            if found_answer is None:  # every field of `DecideResponse`, as for a decided customer
                if unknown is None:  # validated once: the unknown customers' answers differ in the key only
                    unknown = DecideResponse(customer_key=key, channel=request.channel, status="not_found",
                                             error="", policy=PolicyRef(**served.ref()),
                                             models=[ModelRef(**m) for m in models]).model_dump()  # fmt: skip
                found_answer = {**unknown, "customer_key": key, "error": f"unknown customer {key!r}"}
            results.append(found_answer)
        allocation: list[dict[str, Any]] = []
        if batch is not None and not batch.allocation.empty:
            for row in batch.allocation.to_dict("records"):
                capacity = row.get("capacity")
                allocation.append({
                    "action": str(row["action"]), "channel": str(row["channel"]),
                    "group": None if row.get("group") is None or pd.isna(row.get("group")) else str(row["group"]),
                    "count": int(row["count"]),
                    "capacity": None if capacity is None or pd.isna(capacity) else int(capacity),
                })  # fmt: skip
        if held_out:
            allocation.append({"action": policy.fallback, "channel": request.channel, "group": "global holdout",
                               "count": len(held_out), "capacity": None})  # fmt: skip
        return {
            "results": results, "allocation": allocation,
            "value": _finite(batch.value) if batch else 0.0,
            "unconstrained_value": _finite(batch.unconstrained_value) if batch else 0.0,
            "value_given_up": _finite(batch.value_given_up) if batch else 0.0,
            "policy": served.ref(),
        }  # fmt: skip

    def outcome(self, request: OutcomeRequest) -> dict[str, Any]:
        """Record an outcome (an `OutcomeResponse` document); 404, 409 or 422 naming the field otherwise."""
        return self.log.record_outcome(request.decision_id, request.event, request.customer_key, request.reason)

    def close(self) -> None:
        """Close this thread's log connection."""
        self.log.close()
