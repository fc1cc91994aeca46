"""The service's OpenAPI document, made to tell the truth about what the service answers.

BentoML 1.4 generates `/docs.json` from the pydantic models but declares only 400, 404
and 500, with bodies the service does not send, writes nullable fields as JSON Schema
`anyOf [..., {"type": "null"}]` (not OpenAPI 3.0) or drops the null branch, and adds a
non-standard `root_input` key. `document` rewrites the generated document: nullable as
OpenAPI 3.0 says, every error status with the body the service really sends, and the API
key as a security scheme. The gate middleware applies it to every `/docs.json` answer.
"""

from __future__ import annotations

import copy
from typing import Any

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
VALIDATION_BODY = {  # BentoML's answer to a request that fails the pydantic model
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "array", "items": {"type": "object"}}},
}
ERRORS = {
    "400": ("the body is not valid JSON or fails the request model (detail[].loc names the field)", VALIDATION_BODY),
    "401": ("no valid API key", ERROR_BODY),
    "404": ("unknown customer", ERROR_BODY),
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
PROTECTED = ("/churn", "/propensity", "/recommend", "/models")


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
    out.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY)
    for path, operations in out.get("paths", {}).items():
        if not path.startswith(PROTECTED):
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            responses = operation.setdefault("responses", {})
            wanted = ["401", "405"] if path == "/models" else list(ERRORS)
            for status in wanted:
                description, body = ERRORS[status]
                responses[status] = {"description": description, "content": {"application/json": {"schema": body}}}
    return out
