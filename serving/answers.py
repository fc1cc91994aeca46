"""The endpoints' logic, without the web layer: consent first, then one vectorised scoring pass per call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from serving.runtime import Runtime, ServedModel, ServingError, finite, score_records
from serving.schemas import (
    ModelRef,
    ProductScore,
    PropensityRequest,
    PropensityResponse,
    Reason,
    Recommendation,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
)


def _ref(model: ServedModel) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, alias="champion")


def check_batch(runtime: Runtime, size: int) -> None:
    """Refuse a batch over the policy's size."""
    if size > runtime.policy.max_batch:
        raise ServingError(413, "customers", f"{size} customers in one call; at most {runtime.policy.max_batch}")


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    # The model's own preparation step (FramePreparer) turns numbers and categories into what it was fitted on.
    return pd.DataFrame(rows, columns=columns)


def score_churn(runtime: Runtime, requests: Sequence[ScoreRequest], caller: str) -> list[ScoreResponse]:
    """Churn scores with decisions and reasons; suppressed customers are never scored."""
    model = runtime.served("churn")
    purpose = runtime.policy.purposes.churn
    answers: list[ScoreResponse | None] = [None] * len(requests)
    rows, at, masked_rows = [], [], []
    for i, request in enumerate(requests):
        field = f"customers[{i}]" if len(requests) > 1 else "body"
        reason, masked = runtime.check_consent(request.customer_key, purpose)
        if reason is not None:
            answers[i] = ScoreResponse(customer_key=request.customer_key, status="suppressed", purpose=purpose,
                                       suppressed_reason=reason, model=_ref(model))  # fmt: skip
            runtime.audit(caller, "/churn/score", model, request.customer_key, {}, True, False)
            continue
        try:
            values, _ = runtime.feature_row(model, request.customer_key, request.features, field)
        except ServingError as exc:
            if len(requests) == 1 or exc.status != 404:
                raise
            answers[i] = ScoreResponse(customer_key=request.customer_key, status="not_found", purpose=purpose,
                                       error=exc.reason, model=_ref(model))  # fmt: skip
            continue
        rows.append(values)
        at.append(i)
        masked_rows.append(masked)
    if rows:
        scores, reasons = score_records(
            model.model, rows, [c for c in model.columns if c != "product_id"], runtime.policy.reasons
        )
        for j, i in enumerate(at):
            score = float(scores[j])
            decision = None if model.threshold is None else bool(score >= model.threshold)
            why = [] if masked_rows[j] else [
                Reason(feature=f, contribution=c, value=finite(rows[j].get(f))) for f, c in reasons[j]
            ]  # fmt: skip
            answer = ScoreResponse(customer_key=requests[i].customer_key, status="scored", purpose=purpose,
                                   score=score, decision=decision, threshold=model.threshold, model=_ref(model),
                                   reasons=why)  # fmt: skip
            answers[i] = answer
            runtime.audit(caller, "/churn/score", model, requests[i].customer_key,
                          {"score": score, "decision": decision}, False, masked_rows[j])  # fmt: skip
    return [a for a in answers if a is not None]


def _held(stored: dict[str, Any] | None) -> set[str]:
    items = (stored or {}).get("items") or []
    return {str(i["product_id"]) for i in items if isinstance(i, dict) and i.get("holds")}


def product_catalogue(model: ServedModel) -> list[str]:
    """The products the propensity model knows (its product_id categories)."""
    pipeline = model.model
    prepare = pipeline[0] if hasattr(pipeline, "__getitem__") else None
    categories = getattr(prepare, "categories_", {}) if prepare is not None else {}
    return [str(p) for p in categories.get("product_id", [])]


def score_propensity(runtime: Runtime, requests: Sequence[PropensityRequest], caller: str) -> list[PropensityResponse]:
    """Each customer's products by purchase probability (products held are not candidates)."""
    model = runtime.served("propensity")
    purpose = runtime.policy.purposes.propensity
    catalogue = product_catalogue(model)
    answers: list[PropensityResponse] = []
    for i, request in enumerate(requests):
        field = f"customers[{i}]" if len(requests) > 1 else "body"
        reason, _ = runtime.check_consent(request.customer_key, purpose)
        if reason is not None:
            answers.append(PropensityResponse(customer_key=request.customer_key, status="suppressed", purpose=purpose,
                                              suppressed_reason=reason, model=_ref(model)))  # fmt: skip
            runtime.audit(caller, "/propensity/score", model, request.customer_key, {}, True, False)
            continue
        try:
            values, stored = runtime.feature_row(model, request.customer_key, request.features, field)
        except ServingError as exc:
            if len(requests) == 1 or exc.status != 404:
                raise
            answers.append(PropensityResponse(customer_key=request.customer_key, status="not_found", purpose=purpose,
                                              error=exc.reason, model=_ref(model)))  # fmt: skip
            continue
        products = request.product_ids or [p for p in catalogue if p not in _held(stored)]
        unknown = sorted(set(products) - set(catalogue)) if catalogue else []
        if unknown:
            raise ServingError(422, f"{field}.product_ids", f"unknown products {unknown[:5]}")
        frame = _frame([{**values, "product_id": p} for p in products], model.columns)
        scores = np.asarray(model.model.predict_proba(frame))[:, 1] if len(frame) else np.array([])
        order = np.argsort(-scores, kind="stable")[: request.top]
        ranked = [ProductScore(product_id=products[j], score=float(scores[j])) for j in order]
        answers.append(PropensityResponse(customer_key=request.customer_key, status="scored", purpose=purpose,
                                          products=ranked, model=_ref(model)))  # fmt: skip
        runtime.audit(caller, "/propensity/score", model, request.customer_key,
                      {"products": [p.model_dump() for p in ranked]}, False, False)  # fmt: skip
    return answers


def recommend(runtime: Runtime, requests: Sequence[RecommendRequest], caller: str) -> list[RecommendResponse]:
    """Top-k after the rules (held, eligibility), the caller's exclusions and the frequency cap."""
    model = runtime.served("recommendation")
    purpose = runtime.policy.purposes.recommend
    answers: list[RecommendResponse] = []
    now = time.time()
    for i, request in enumerate(requests):
        field = f"customers[{i}]" if len(requests) > 1 else "body"
        key = request.customer_key
        reason, _ = runtime.check_consent(key, purpose)
        if reason is not None:
            answers.append(RecommendResponse(customer_key=key, status="suppressed", purpose=purpose,
                                             suppressed_reason=reason, model=_ref(model)))  # fmt: skip
            runtime.audit(caller, "/recommend", model, key, {}, True, False)
            continue
        stored = runtime.customer_features(key)
        if stored is None:
            if len(requests) == 1:
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
        runtime.caps.record(key, [item for item, _, _ in kept], now)
        items = [Recommendation(product_id=item, rank=r, score=float(score), source=source)
                 for r, (item, score, source) in enumerate(kept, start=1)]  # fmt: skip
        fallback = bool(kept) and all(source == "popularity" for _, _, source in kept)
        answers.append(RecommendResponse(customer_key=key, status="scored", purpose=purpose, items=items,
                                         fallback=fallback, capped=capped[:20], model=_ref(model)))  # fmt: skip
        runtime.audit(caller, "/recommend", model, key, {"items": [x.product_id for x in items], "fallback": fallback},
                      False, False)  # fmt: skip
    return answers
