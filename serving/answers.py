"""The endpoints' logic, without the web layer: consent first, then one vectorised scoring pass per call."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from serving.champions import ServedModel
from serving.errors import ServingError
from serving.runtime import Runtime
from serving.schemas import (
    ModelRef,
    ProductScore,
    PropensityRequest,
    PropensityResponse,
    Recommendation,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
)
from serving.scoring import score_matrix, score_records
from serving.snapshot import Snapshot


def _ref(model: ServedModel) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, alias="champion")


def check_batch(runtime: Runtime, size: int) -> None:
    """Refuse a batch over the policy's size."""
    if size > runtime.policy.max_batch:
        raise ServingError(413, "customers", f"{size} customers in one call; at most {runtime.policy.max_batch}")


@dataclass(frozen=True)
class Deadline:
    """When a call's answers stop being wanted: its timeout (a `time.monotonic()` instant) or its caller leaving."""

    at: float
    gone: threading.Event | None = None  # set by the gate when the client disconnects

    def check(self) -> None:
        """Refuse to serve answers nobody will read; called before anything is logged or counted.

        A batch whose caller was answered 504, or hung up, is neither logged as served nor
        counted against the frequency caps.
        """
        if self.gone is not None and self.gone.is_set():
            raise ServingError(499, "request", "the caller went away before the answer; nothing was served")
        if time.monotonic() > self.at:
            raise ServingError(504, "customers", "the batch took longer than the service's timeout; nothing was served")


def in_time(deadline: Deadline | None) -> None:
    """`Deadline.check`, when the call has a deadline."""
    if deadline is not None:
        deadline.check()


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    # The model's own preparation step (FramePreparer) turns numbers and categories into what it was fitted on.
    return pd.DataFrame(rows, columns=columns)


def churn_answers(
    runtime: Runtime,
    requests: Sequence[ScoreRequest],
    caller: str,
    batch: bool = False,
    deadline: Deadline | None = None,
) -> list[dict[str, Any]]:
    """Churn scores with decisions and reasons, as `ScoreResponse` documents; suppressed customers are never scored.

    Consent and the online store are read once for the whole call, and the customers who may
    be scored go through one vectorised scoring pass. A batch of stored customers takes their
    inputs from the model's in-memory snapshot of the online store when it is current
    (`Runtime.snapshot_for`), else from the store. The answers are plain JSON-ready dicts
    with every field of `ScoreResponse` (a batch of a thousand is serialised directly: building
    and validating four thousand response objects cost more than the scoring). In a `batch` (even of
    one) an unknown customer is answered `not_found` in place; alone, it is an HTTP 404.
    """
    model = runtime.champions.served("churn")
    purpose = runtime.policy.purposes.churn
    ref = _ref(model).model_dump()
    many = len(requests) > 1
    for i, request in enumerate(requests):  # what the bodies say is checked before anyone is answered
        if request.features:
            runtime.check_features(model, request.features, f"customers[{i}]" if batch else "body")
    answers: list[dict[str, Any] | None] = [None] * len(requests)
    consents = runtime.consent.check_many([r.customer_key for r in requests], purpose)
    for i, (request, (reason, _)) in enumerate(zip(requests, consents, strict=True)):
        if reason is not None:
            answers[i] = _churn_answer(request.customer_key, "suppressed", purpose, ref, suppressed_reason=reason)
            runtime.audit(caller, "/churn/score", model, request.customer_key, {}, True, False)
    stored_only = many and all(r.customer_key and r.features is None for r in requests)
    snapshot = runtime.snapshot_for(model) if stored_only else None
    if snapshot is not None:
        scored = _from_snapshot(runtime, model, snapshot, requests, consents, answers, ref, purpose)
    else:
        scored = _from_store(runtime, model, requests, consents, answers, ref, purpose, batch)
    if scored is None:
        return [a for a in answers if a is not None]
    at, rows, masked_rows, ready, cutoffs, scores, reasons = scored
    threshold = model.threshold
    keys, logged = [], []
    for i, score, row, masked, top in zip(at, scores.tolist(), rows, masked_rows, reasons, strict=True):
        decision = None if threshold is None else score >= threshold
        why = [] if masked else [
            {"feature": f, "contribution": c, "value": _reason_value(row.get(f))} for f, c in top
        ]  # fmt: skip
        key = requests[i].customer_key
        # `_churn_answer`, inline: every field of `ScoreResponse`, in its order
        answers[i] = {"customer_key": key, "status": "scored", "purpose": purpose, "suppressed_reason": None,
                      "error": None, "score": score, "decision": decision, "threshold": threshold, "model": ref,
                      "reasons": why}  # fmt: skip
        keys.append(key)
        logged.append({"score": score, "decision": decision})
    in_time(deadline)
    runtime.audit_scored(caller, "/churn/score", model, keys, logged, masked_rows, rows, ready, cutoffs)
    return [a for a in answers if a is not None]


# (positions answered, feature rows, masked, log-ready inputs, cutoffs or None, scores, reasons); None: nothing scored
Scored = tuple[list[int], list[dict[str, Any]], list[bool], list[Any], list[str] | None, np.ndarray,
               list[list[tuple[str, float]]]]  # fmt: skip


def _from_snapshot(runtime: Runtime, model: ServedModel, snapshot: Snapshot, requests: Sequence[ScoreRequest],
                   consents: Sequence[tuple[str | None, bool]], answers: list[dict[str, Any] | None],
                   ref: dict[str, Any], purpose: str) -> Scored | None:  # fmt: skip
    at, picked, masked_rows = [], [], []
    index = snapshot.index
    for i, (request, (reason, masked)) in enumerate(zip(requests, consents, strict=True)):
        if reason is not None:
            continue
        key = request.customer_key
        row = index.get(key) if key else None
        if row is None:
            answers[i] = _churn_answer(key, "not_found", purpose, ref, error=f"unknown customer {key!r}")
            continue
        at.append(i)
        picked.append(row)
        masked_rows.append(masked)
    if not at:
        return None
    matrix, rows, cutoffs = snapshot.rows(picked)
    with runtime.scoring_threads.lease(len(rows)) as threads:
        scores, reasons = score_matrix(
            model.model, matrix, runtime.policy.reasons, threads, runtime.policy.reasons_method
        )
    return at, rows, masked_rows, rows, cutoffs, scores, reasons  # the rows are exactly the inputs the log keeps


def _from_store(runtime: Runtime, model: ServedModel, requests: Sequence[ScoreRequest],
                consents: Sequence[tuple[str | None, bool]], answers: list[dict[str, Any] | None],
                ref: dict[str, Any], purpose: str, batch: bool) -> Scored | None:  # fmt: skip
    wanted = [r.customer_key for r, (why, _) in zip(requests, consents, strict=True) if why is None and r.customer_key]
    found = runtime.model_features(model, wanted) if wanted else None
    stored = found.rows if found is not None else {}
    texts = found.texts if found is not None else {}
    rows, at, masked_rows, ready = [], [], [], []
    from_store = 0  # rows scored exactly as stored
    for i, (request, (reason, masked)) in enumerate(zip(requests, consents, strict=True)):
        if reason is not None:
            continue
        key = request.customer_key
        values = stored.get(key) if key and request.features is None else None  # the common case, inline
        if values is not None:
            rows.append(values)
            at.append(i)
            masked_rows.append(masked)
            ready.append(texts.get(key) if key else None)
            from_store += 1
            continue
        field = f"customers[{i}]" if batch else "body"
        try:
            values, _ = runtime.feature_row(model, key, request.features, field, stored.get(key) if key else None)
        except ServingError as exc:
            if not batch or exc.status != 404:
                raise
            answers[i] = _churn_answer(key, "not_found", purpose, ref, error=exc.reason)
            continue
        rows.append(values)
        at.append(i)
        masked_rows.append(masked)
        ready.append(None)
    if not rows:
        return None
    view = found.view if found is not None else None
    numeric = model.numeric_inputs
    checked = view is not None and from_store == len(rows) and numeric is not None and numeric <= view.numeric
    with runtime.scoring_threads.lease(len(rows)) as threads:
        scores, reasons = score_records(
            model.model,
            rows,
            model.inputs,
            runtime.policy.reasons,
            numbers_checked=checked,
            threads=threads,
            method=runtime.policy.reasons_method,
        )
    return at, rows, masked_rows, ready, None, scores, reasons


_FLOAT, _INT = float, int


def _reason_value(value: Any) -> float | str | None:
    # `feature_value`, with its common cases (a finite float, an integer) first
    kind = type(value)
    if kind is _FLOAT and value - value == 0.0:
        return value
    if kind is _INT:
        return _FLOAT(value)
    return feature_value(value)


def _churn_answer(
    customer_key: str | None,
    status: str,
    purpose: str,
    model: dict[str, Any],
    suppressed_reason: str | None = None,
    error: str | None = None,
    score: float | None = None,
    decision: bool | None = None,
    threshold: float | None = None,
    reasons: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One `ScoreResponse` document: every field, in the model's order (as pydantic would write it)."""
    return {"customer_key": customer_key, "status": status, "purpose": purpose,
            "suppressed_reason": suppressed_reason, "error": error, "score": score, "decision": decision,
            "threshold": threshold, "model": model, "reasons": reasons or []}  # fmt: skip


def score_churn(
    runtime: Runtime, requests: Sequence[ScoreRequest], caller: str, batch: bool = False
) -> list[ScoreResponse]:
    """`churn_answers` as validated response models."""
    return [ScoreResponse.model_validate(a) for a in churn_answers(runtime, requests, caller, batch)]


def feature_value(value: Any) -> float | str | None:
    """A feature's value as a reason shows it (`Reason.value`): a number as a float, NaN and infinities as None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float | np.integer | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    return str(value)


def _held(stored: dict[str, Any] | None) -> set[str]:
    items = (stored or {}).get("items") or []
    return {str(i["product_id"]) for i in items if isinstance(i, dict) and i.get("holds")}


def product_catalogue(model: ServedModel) -> list[str]:
    """The products the propensity model knows (its product_id categories)."""
    pipeline = model.model
    prepare = pipeline[0] if hasattr(pipeline, "__getitem__") else None
    categories = getattr(prepare, "categories_", {}) if prepare is not None else {}
    return [str(p) for p in categories.get("product_id", [])]


def score_propensity(
    runtime: Runtime,
    requests: Sequence[PropensityRequest],
    caller: str,
    batch: bool = False,
    deadline: Deadline | None = None,
) -> list[PropensityResponse]:
    """Each customer's products by purchase probability (products held are not candidates).

    Every (customer, product) pair of the call is scored in one pass of the model (a batch of a
    thousand customers is one frame, not a thousand). In a `batch` (even of one) an unknown
    customer is answered `not_found` in place; alone, it is an HTTP 404.
    """
    model = runtime.champions.served("propensity")
    purpose = runtime.policy.purposes.propensity
    catalogue = product_catalogue(model)
    answers: list[PropensityResponse | None] = [None] * len(requests)
    pending: list[tuple[int, dict[str, Any], list[str]]] = []  # (position, inputs, candidate products)
    for i, request in enumerate(requests):  # what the bodies say is checked before anyone is answered
        field = f"customers[{i}]" if batch else "body"
        if request.features:
            runtime.check_features(model, request.features, field)
        unknown = sorted(set(request.product_ids or []) - set(catalogue)) if catalogue else []
        if unknown:
            raise ServingError(422, f"{field}.product_ids", f"unknown products {unknown[:5]}")
    for i, request in enumerate(requests):
        field = f"customers[{i}]" if batch else "body"
        reason, _ = runtime.consent.check(request.customer_key, purpose)
        if reason is not None:
            answers[i] = PropensityResponse(customer_key=request.customer_key, status="suppressed", purpose=purpose,
                                            suppressed_reason=reason, model=_ref(model))  # fmt: skip
            runtime.audit(caller, "/propensity/score", model, request.customer_key, {}, True, False)
            continue
        try:
            values, stored = runtime.feature_row(model, request.customer_key, request.features, field)
        except ServingError as exc:
            if not batch or exc.status != 404:
                raise
            answers[i] = PropensityResponse(customer_key=request.customer_key, status="not_found", purpose=purpose,
                                            error=exc.reason, model=_ref(model))  # fmt: skip
            continue
        products = request.product_ids or [p for p in catalogue if p not in _held(stored)]
        unknown = sorted(set(products) - set(catalogue)) if catalogue else []
        if unknown:
            raise ServingError(422, f"{field}.product_ids", f"unknown products {unknown[:5]}")
        pending.append((i, values, products))
    rows = [{**values, "product_id": p} for _, values, products in pending for p in products]
    scores = np.asarray(model.model.predict_proba(_frame(rows, model.columns)))[:, 1] if rows else np.array([])
    start, served = 0, []
    for i, values, products in pending:
        mine = scores[start : start + len(products)]
        start += len(products)
        order = np.argsort(-mine, kind="stable")[: requests[i].top]
        ranked = [ProductScore(product_id=products[j], score=float(mine[j])) for j in order]
        key = requests[i].customer_key
        answers[i] = PropensityResponse(customer_key=key, status="scored", purpose=purpose, products=ranked,
                                        model=_ref(model))  # fmt: skip
        served.append((key, {"products": [p.model_dump() for p in ranked]}, values))
    in_time(deadline)
    for key, answer, values in served:
        runtime.audit(caller, "/propensity/score", model, key, answer, False, False, values)
    return [a for a in answers if a is not None]


def recommend(
    runtime: Runtime,
    requests: Sequence[RecommendRequest],
    caller: str,
    batch: bool = False,
    deadline: Deadline | None = None,
) -> list[RecommendResponse]:
    """Top-k after the rules (held, eligibility), the caller's exclusions and the frequency cap.

    In a `batch` (even of one) an unknown customer is answered `not_found` in place; alone, it is an HTTP 404.
    """
    model = runtime.champions.served("recommendation")
    purpose = runtime.policy.purposes.recommend
    answers: list[RecommendResponse] = []
    served: list[tuple[str, list[str], bool]] = []
    now = time.time()
    for i, request in enumerate(requests):
        field = f"customers[{i}]" if batch else "body"
        key = request.customer_key
        reason, _ = runtime.consent.check(key, purpose)
        if reason is not None:
            answers.append(RecommendResponse(customer_key=key, status="suppressed", purpose=purpose,
                                             suppressed_reason=reason, model=_ref(model)))  # fmt: skip
            runtime.audit(caller, "/recommend", model, key, {}, True, False)
            continue
        stored = runtime.customer_features(key)
        if stored is None:
            if not batch:
                raise ServingError(404, f"{field}.customer_key", f"unknown customer {key!r}")
            answers.append(RecommendResponse(customer_key=key, status="not_found", purpose=purpose,
                                             error=f"unknown customer {key!r}", model=_ref(model)))  # fmt: skip
            continue
        exclude = set(request.exclude) | _held(stored)
        segment = stored.get("segment")
        candidates = model.wide.recommend(key, segment if isinstance(segment, str) else None, exclude)
        counts = runtime.caps.counts(key, [c[0] for c in candidates], now)
        capped = [item for item, _, _ in candidates if counts[item] >= runtime.policy.frequency_cap.max_impressions]
        kept = [c for c in candidates if c[0] not in set(capped)][: request.k]
        items = [Recommendation(product_id=item, rank=r, score=float(score), source=source)
                 for r, (item, score, source) in enumerate(kept, start=1)]  # fmt: skip
        fallback = bool(kept) and all(source == "popularity" for _, _, source in kept)
        answers.append(RecommendResponse(customer_key=key, status="scored", purpose=purpose, items=items,
                                         fallback=fallback, capped=capped[:20], model=_ref(model)))  # fmt: skip
        served.append((key, [x.product_id for x in items], fallback))
    in_time(deadline)
    for key, shown, fallback in served:  # counted and logged only once the whole call is answered in time
        runtime.caps.record(key, shown, now)
        runtime.audit(caller, "/recommend", model, key, {"items": shown, "fallback": fallback}, False, False)
    return answers


def served_inputs(runtime: Runtime) -> dict[str, Any]:
    """What the OpenAPI document declares about requests, from the champions served now (`serving.openapi`).

    A family whose model's numeric inputs are unknown (not a preparation pipeline) is left out:
    its features stay declared as numbers or texts by name.
    """
    families: dict[str, Any] = {}
    for family, model in runtime.champions.models.items():
        numeric = model.numeric_inputs
        if family == "recommendation" or numeric is None:
            continue
        families[family] = {
            "inputs": {c: "number" if c in numeric else "string" for c in model.inputs},
            "products": product_catalogue(model) if family == "propensity" else None,
        }
    return {"max_batch": runtime.policy.max_batch, "absent_inputs": runtime.policy.absent_inputs, "families": families}
