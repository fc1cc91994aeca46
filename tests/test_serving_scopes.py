"""Scoped API keys: the setting's format, each route's scope, 403 naming it, and keys shown only by fingerprint."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from custintel.settings import Settings
from flows.cli import app as cli_app
from serving.keys import ALL_SCOPES, SCOPES, ApiKeysError, fingerprint, identify, parse_api_keys, scope_for
from serving.middleware import Gatekeeper
from serving.openapi import document

with warnings.catch_warnings():  # starlette's notice that its TestClient will want httpx2: nothing to act on here
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

SECRET = "s3cret-key-value"


def test_entries_parse_with_their_scopes_and_a_bare_key_has_them_all() -> None:
    keys = parse_api_keys(f" k1:score+recommend , k2:admin,{SECRET},,a:b:c:recommend ")
    assert [(k.secret, k.scopes) for k in keys] == [
        (b"k1", {"score", "recommend"}),
        (b"k2", {"admin"}),
        (SECRET.encode(), ALL_SCOPES),
        (b"a:b:c", {"recommend"}),  # a key holding ':' ends with its scopes
    ]
    assert keys[2].fingerprint == "key-" + hashlib.sha256(SECRET.encode()).hexdigest()[:12]
    assert Settings(serving_api_keys=f"k1:score,{SECRET}").api_keys == ["k1", SECRET]  # what `custintel demo` sends
    assert identify(keys, b"k2") is keys[1]
    assert identify(keys, b"k2:admin") is None and identify(keys, b"") is None


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        (f"ok,{SECRET}:scroe", r"entry 2 \(key-[0-9a-f]{12}\): unknown scope 'scroe'"),
        (f"{SECRET}:", r"entry 1 \(key-[0-9a-f]{12}\): no scope after ':'"),
        (f"{SECRET}:score+", r"entry 1 .*unknown scope ''"),
        ("ok, :admin", r"entry 2: no key before ':'"),
        (f"{SECRET}:score,{SECRET}:admin", r"entry 2 \(key-[0-9a-f]{12}\): the same key is listed twice"),
    ],
)
def test_a_malformed_entry_is_named_by_position_and_fingerprint_never_the_key(setting: str, why: str) -> None:
    with pytest.raises(ApiKeysError, match=why) as caught:
        parse_api_keys(setting)
    assert SECRET not in str(caught.value) and "CUSTINTEL_SERVING_API_KEYS" in str(caught.value)


def test_serve_refuses_a_malformed_setting_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTINTEL_SERVING_API_KEYS", f"{SECRET}:superuser")

    def never(*args: object) -> None:
        raise AssertionError("the service was started")

    monkeypatch.setattr("os.execvpe", never)
    result = CliRunner().invoke(cli_app, ["--home", str(tmp_path), "serve", "--no-refresh-consent"])
    assert result.exit_code == 1, result.output
    assert "entry 1" in result.output and "unknown scope 'superuser'" in result.output
    assert SECRET not in result.output and "Traceback" not in result.output


def test_every_route_maps_to_a_scope() -> None:
    assert {p: scope_for(p) for p in ("/churn/score/batch", "/propensity/score", "/recommend/batch", "/models")} == {
        "/churn/score/batch": "score",
        "/propensity/score": "score",
        "/recommend/batch": "recommend",
        "/models": "admin",
    }
    assert scope_for("/some/new/route") == "admin"  # a route nobody mapped is not open to a scoring key


def _app() -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"caller": request.scope.get("state", {}).get("caller"), "bytes": len(body)})

    routes = [Route(p, echo, methods=["POST"]) for p in ("/churn/score", "/propensity/score/batch", "/recommend")]
    routes += [Route(p, echo, methods=["GET"]) for p in ("/models", "/livez", "/docs")]
    return Starlette(routes=routes)


def test_each_endpoint_checks_its_scope_over_http() -> None:
    setting = f"scorer:score,{SECRET}:recommend,ops:admin,legacy"
    client = TestClient(Gatekeeper(_app(), setting, max_body_bytes=1000, anonymous=False))  # type: ignore[arg-type]

    def status(path: str, key: str | None, method: str = "POST") -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        answer = client.request(method, path, content=b"{}" if method == "POST" else None, headers=headers)
        return answer.status_code, answer.json()

    assert status("/churn/score", "scorer")[0] == 200
    assert status("/propensity/score/batch", "scorer")[0] == 200
    code, body = status("/recommend", "scorer")
    assert code == 403 and body["error"]["field"] == "scope" and body["error"]["scope"] == "recommend"
    assert "'recommend' scope" in body["error"]["reason"] and fingerprint("scorer") in body["error"]["reason"]
    code, body = status("/churn/score", SECRET)
    assert code == 403 and body["error"]["scope"] == "score" and SECRET not in json.dumps(body)
    code, body = status("/recommend", SECRET)
    assert code == 200 and body["caller"] == fingerprint(SECRET)  # the app and its log: the fingerprint
    assert status("/models", "scorer", "GET")[1]["error"]["scope"] == "admin"
    assert status("/docs", "scorer", "GET")[0] == 403  # a route not mapped needs admin
    assert status("/models", "ops", "GET")[0] == 200 and status("/churn/score", "ops")[0] == 403
    for path in ("/churn/score", "/recommend"):  # a key without scopes: every scope, as before scopes existed
        assert status(path, "legacy")[0] == 200
    assert status("/models", "legacy", "GET")[0] == 200
    assert status("/churn/score", None)[0] == 401 and status("/churn/score", "unknown")[0] == 401  # 401 stays
    assert status("/livez", None, "GET")[0] == 200  # open paths stay open
    anonymous = TestClient(Gatekeeper(_app(), "", max_body_bytes=1000, anonymous=True))  # type: ignore[arg-type]
    assert anonymous.get("/models").json()["caller"] == "anonymous"


def test_the_document_declares_403_and_each_operations_scope() -> None:
    spec = {"paths": {"/churn/score": {"post": {"responses": {}}}, "/recommend": {"post": {"responses": {}}},
                      "/models": {"get": {"responses": {}}}, "/livez": {"get": {"responses": {}}}}}  # fmt: skip
    out = document(spec)["paths"]
    assert out["/churn/score"]["post"]["x-scope"] == "score" and out["/recommend"]["post"]["x-scope"] == "recommend"
    assert out["/models"]["get"]["x-scope"] == "admin"
    for path, method in (("/churn/score", "post"), ("/models", "get")):
        forbidden = out[path][method]["responses"]["403"]["content"]["application/json"]["schema"]
        assert forbidden["properties"]["error"]["properties"]["scope"]["enum"] == list(SCOPES)
        assert list(SCOPES) == ["score", "recommend", "decide", "admin"]
    assert "403" not in out["/livez"]["get"].get("responses", {}) and "x-scope" not in out["/livez"]["get"]


def test_a_worker_reads_the_scopes_from_its_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUSTINTEL_HOME", str(tmp_path))
    monkeypatch.setenv("CUSTINTEL_SERVING_API_KEYS", "scorer:score,ops")
    gate = Gatekeeper(_app())  # type: ignore[arg-type]  # as BentoML builds it in a worker
    assert {k.secret: k.scopes for k in gate.keys} == {b"scorer": {"score"}, b"ops": ALL_SCOPES}
    monkeypatch.setenv("CUSTINTEL_SERVING_API_KEYS", f"{SECRET}:score+root")
    with pytest.raises(ApiKeysError, match="unknown scope 'root'"):
        Gatekeeper(_app())  # type: ignore[arg-type]
