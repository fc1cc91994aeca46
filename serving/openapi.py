"""The service's OpenAPI document, made to tell the truth about what the service answers.

BentoML 1.4 generates `/docs.json` from the pydantic models but declares only 400, 404
and 500, with bodies the service does not send, writes nullable fields as JSON Schema
`anyOf [..., {"type": "null"}]` (not OpenAPI 3.0) or drops the null branch, and adds a
non-standard `root_input` key. `document` rewrites the generated document: nullable as
OpenAPI 3.0 says, every error status with the body the service really sends, and the API
key as a security scheme, with the scope each operation needs (`x-scope`, `serving.keys`).
The gate middleware applies it to every `/docs.json` answer.

Requests are declared as strictly as the service reads them, from the models it serves now
(`publish`): a body needs a `customer_key` or every model input in `features` (each a number
or a text, by the model, or null), optional fields are left out rather than null, products are
the propensity model's, and a batch holds at most the policy's `max_batch` customers. So a
request the document allows is answered (or 404 for a customer who does not exist), and one it
refuses is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from serving.keys import SCOPES, scope_for

ERROR_BODY = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["field", "reason"],
            "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
        }
    },
}
FORBIDDEN_BODY = {  # 403: the error names the scope the key lacks
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["field", "reason", "scope"],
            "properties": {
                "field": {"type": "string"},
                "reason": {"type": "string"},
                "scope": {"type": "string", "enum": list(SCOPES)},
            },
        }
    },
}
VALIDATION_BODY = {  # BentoML's answer to a request that fails the pydantic model
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "array", "items": {"type": "object"}}},
}
ERRORS = {
    "400": ("the body is not valid JSON or fails the request model (detail[].loc names the field)", VALIDATION_BODY),
    "401": ("no valid API key", ERROR_BODY),
    "403": ("the API key lacks this route's scope (error.scope names it)", FORBIDDEN_BODY),
    "404": ("unknown customer (or, for /outcomes, unknown decision id)", ERROR_BODY),
    "409": ("/outcomes: the event is already recorded for this decision, or out of order", ERROR_BODY),
    "413": ("the body or the batch is too large", ERROR_BODY),
    "405": ("the route answers another method (the Allow header names it)", ERROR_BODY),
    "415": ("not application/json", ERROR_BODY),
    "422": ("a value the model cannot use (unknown feature or product)", ERROR_BODY),
    "503": ("no champion promoted yet for this family", ERROR_BODY),
    "504": ("the answer took longer than the service's timeout", {"type": "object"}),
}
SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
PROTECTED = ("/churn", "/propensity", "/recommend", "/models", "/decide", "/outcomes")
REQUESTS = {  # request schemas (BentoML names them both ways) and the family whose model reads them
    "ScoreRequest": "churn",
    "ScoreRequestIODescriptor": "churn",
    "PropensityRequest": "propensity",
    "PropensityRequestIODescriptor": "propensity",
}
BATCHES = ("BatchScoreRequestIODescriptor", "BatchPropensityRequestIODescriptor", "BatchRecommendRequestIODescriptor")
DECIDE_BATCHES = ("DecideBatchRequest", "DecideBatchRequestIODescriptor")  # customer_keys bounded by max_batch
ANY_VALUE = {"anyOf": [{"type": "number"}, {"type": "string"}], "nullable": True}
_served: Callable[[], dict[str, Any]] | None = None


def publish(describe: Callable[[], dict[str, Any]]) -> None:
    """Set where `document` reads what is served now (when a worker starts).

    `describe()` gives `{"max_batch", "absent_inputs", "families": {family: {"inputs": {name:
    "number" | "string"}, "products": [...] | None}}}`.
    """
    global _served
    _served = describe


def _request(node: dict[str, Any], family: dict[str, Any] | None, absent_inputs: int) -> dict[str, Any]:
    """A score or propensity request as the service reads it (see the module's docstring)."""
    props = dict(node.get("properties", {}))
    key = {k: v for k, v in props.get("customer_key", {}).items() if k not in ("nullable", "default", "anyOf")}
    props["customer_key"] = {**key, "type": "string"}
    features: dict[str, Any] = {"type": "object", "description": props.get("features", {}).get("description", "")}
    whole: dict[str, Any] = {"minProperties": 1}
    if family is not None:
        inputs = family["inputs"]
        features["properties"] = {n: {"type": t, "nullable": True} for n, t in inputs.items()}
        features["additionalProperties"] = False
        if absent_inputs == 0:
            whole = {"required": sorted(inputs)}
        if family.get("products") is not None and "product_ids" in props:
            ids = {k: v for k, v in props["product_ids"].items() if k not in ("nullable", "default")}
            props["product_ids"] = {**ids, "items": {"type": "string", "enum": list(family["products"])}}
    else:
        features["additionalProperties"] = ANY_VALUE
    props["features"] = features
    if "product_ids" in props:
        props["product_ids"] = {k: v for k, v in props["product_ids"].items() if k not in ("nullable", "default")}
    out = {k: v for k, v in node.items() if k not in ("required", "anyOf", "properties")}
    out["properties"] = props
    out["anyOf"] = [{"required": ["customer_key"]}, {"required": ["features"], "properties": {"features": whole}}]
    return out


def _strict(node: Any, served: dict[str, Any], components: frozenset[str] = frozenset()) -> Any:
    """Every request schema in the document rewritten by `_request`; batches bounded by `max_batch`.

    BentoML inlines each endpoint's own model as `<Model>IODescriptor`, dropping the null branch of
    optional fields on the way (a features-only answer's `customer_key` is null); such a schema
    becomes a reference to the model's component, which keeps it.
    """
    if isinstance(node, list):
        return [_strict(x, served, components) for x in node]
    if not isinstance(node, dict):
        return node
    title = node.get("title")
    if isinstance(title, str) and title.endswith("IODescriptor") and title.removesuffix("IODescriptor") in components:
        return {"$ref": f"#/components/schemas/{title.removesuffix('IODescriptor')}"}
    node = {k: _strict(v, served, components) for k, v in node.items()}
    if title in REQUESTS and "properties" in node:
        family = served.get("families", {}).get(REQUESTS[title])
        node = _request(node, family, int(served.get("absent_inputs", 0)))
    elif title == "RecommendRequest" or title == "RecommendRequestIODescriptor":
        props = node.get("properties", {})
        if "exclude" in props:
            props["exclude"] = {k: v for k, v in props["exclude"].items() if k not in ("nullable", "default")}
    elif title in DECIDE_BATCHES and served.get("max_batch"):
        keys = node.get("properties", {}).get("customer_keys")
        if isinstance(keys, dict):
            keys["maxItems"] = int(served["max_batch"])
            keys["uniqueItems"] = True
    elif title in BATCHES and served.get("max_batch"):
        customers = node.get("properties", {}).get("customers")
        if isinstance(customers, dict):
            customers["maxItems"] = int(served["max_batch"])
    return node


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 nullability: `anyOf` null branches and null defaults become `nullable: true`."""
    if isinstance(node, list):
        return [_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items() if k != "root_input"}
    options = node.get("anyOf")
    if isinstance(options, list) and any(o == {"type": "null"} for o in options):
        rest = [o for o in options if o != {"type": "null"}]
        node.pop("anyOf")
        node = {**node, **rest[0]} if len(rest) == 1 else {**node, "anyOf": rest}
        node["nullable"] = True
    if "default" in node and node["default"] is None:
        node["nullable"] = True
    return node


def document(spec: dict[str, Any]) -> dict[str, Any]:
    """The generated document with nullability, the real error responses and the API key declared."""
    out = _nullable(copy.deepcopy(spec))
    components = frozenset(out.get("components", {}).get("schemas", {}))
    out = _strict(out, _served() if _served is not None else {}, components)
    out.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY)
    for path, operations in out.get("paths", {}).items():
        if not path.startswith(PROTECTED):
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation["x-scope"] = scope_for(path)  # the key's scope this route needs (else 403)
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True  # a POST without a JSON body is refused (415)
            responses = operation.setdefault("responses", {})
            wanted = ["401", "403", "405"] if path == "/models" else list(ERRORS)
            for status in wanted:
                description, body = ERRORS[status]
                responses[status] = {"description": description, "content": {"application/json": {"schema": body}}}
    return out
