"""One pure-ASGI gate in front of every endpoint: API key and its scope, method, content type, body size.

BentoML 1.4 has no authentication and no request-body limit of its own. Health and
metrics endpoints stay open; everything else needs a key (401 without one) holding the
route's scope (403 naming the scope otherwise; `serving.keys`). A POST must be JSON (a pickle
or any other content type gets 415) and no larger than the policy allows (413), whether
or not the client announced its length.

A route the service registers with `answer_directly` (the single churn score, /decide and
/decide/batch) is answered by the gate itself once its request passed those checks: the handler
parses the body with the route's own request model and answers, or declines (a body its model
refuses), and the request goes on to BentoML as any other. A handler registered `threaded` (a
campaign's hundreds of milliseconds) runs on a worker thread, so the event loop keeps answering
other requests meanwhile; the others run on the event loop (under a few milliseconds: handing
them to a thread cost more than the work, and the threads then queued for the GIL). BentoML's
own layers in front of the gate (metrics, timeout, concurrency limit) still see it; what is
skipped is its per-request routing, context and serialisation, which cost more than scoring a
customer (measured: benchmarks/bench_serving.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from serving.keys import SCOPES, ApiKey, identify, parse_api_keys, scope_for

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json")
# The method each protected route answers; any other method gets 405 with an Allow header.
ROUTES = {
    **dict.fromkeys(
        (
            "/churn/score",
            "/churn/score/batch",
            "/propensity/score",
            "/propensity/score/batch",
            "/recommend",
            "/recommend/batch",
            "/decide",
            "/decide/batch",
            "/outcomes",
        ),
        "POST",
    ),  # fmt: skip
    "/models": "GET",
}


# A route's answer from the request body and the caller's fingerprint: (status, JSON bytes), or None to decline.
DirectHandler = Callable[[bytes, str], "tuple[int, bytes] | None"]
_DIRECT: dict[str, tuple[DirectHandler, bool]] = {}  # path -> (handler, threaded), set when a worker starts
SERVER_HEADER = (b"server", b"BentoML Service/custintel")  # what BentoML's own answers carry


def answer_directly(path: str, handler: DirectHandler | None, threaded: bool = False) -> None:
    """Have the gate answer `path` itself with `handler` (None: stop), for this worker process.

    `threaded`: call the handler on a worker thread (for work long enough to hold up other requests).
    """
    if handler is None:
        _DIRECT.pop(path, None)
    else:
        _DIRECT[path] = (handler, threaded)


async def send_bytes(send: Send, status: int, payload: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a body that is already JSON."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a JSON body."""
    await send_bytes(send, status, json.dumps(body).encode(), headers)


def _error(field: str, reason: str) -> dict[str, Any]:
    return {"error": {"field": field, "reason": reason}}


class Gatekeeper:
    """API key with the route's scope on every non-health path; JSON-only, size-limited POST bodies."""

    def __init__(
        self,
        app: ASGIApp,
        api_keys: str | Sequence[str | ApiKey] | None = None,
        max_body_bytes: int | None = None,
        anonymous: bool | None = None,
    ) -> None:
        self.app = app
        if api_keys is None or max_body_bytes is None or anonymous is None:  # built in the worker: read the settings
            from custintel.settings import Settings
            from serving.policy import load_serving_policy

            settings = Settings()
            api_keys = settings.serving_api_keys if api_keys is None else api_keys
            max_body_bytes = max_body_bytes or load_serving_policy(settings.serving_policy).max_body_bytes
            anonymous = settings.serving_allow_anonymous if anonymous is None else anonymous
        # the setting's text (`key` or `key:scope+scope`, comma-separated), parsed: ApiKeysError names a bad entry
        if isinstance(api_keys, str):
            api_keys = [api_keys]
        self.keys = [k for k in api_keys if isinstance(k, ApiKey)]
        self.keys += parse_api_keys(",".join(k for k in api_keys if isinstance(k, str)))
        self.max_body = max_body_bytes
        self.anonymous = anonymous

    def _caller(self, headers: dict[bytes, bytes]) -> ApiKey | None:
        """The key the request carries when it is valid, else None."""
        token = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if not token and auth.lower().startswith(b"bearer "):
            token = auth[7:].strip()
        return identify(self.keys, token)

    async def _document(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve BentoML's OpenAPI document as rewritten by `serving.openapi.document`."""
        from serving.openapi import document

        parts: list[bytes] = []
        status = 200

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if status != 200:
            await send_json(send, status, {"error": {"field": "docs.json", "reason": "no OpenAPI document"}})
            return
        await send_json(send, 200, document(json.loads(b"".join(parts))))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then hand it on (with its body replayed) or answer 401/403/405/413/415."""
        if scope["type"] == "http" and scope["path"] == "/docs.json":
            await self._document(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        caller = self._caller(headers)
        if caller is None and not self.anonymous:
            why = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"
            await send_json(send, 401, _error("authorization", why), [(b"www-authenticate", b"Bearer")])
            return
        needed = scope_for(scope["path"])
        if caller is not None and needed not in caller.scopes:  # anonymous (local trials only) has every scope
            held = ", ".join(s for s in SCOPES if s in caller.scopes)
            why = f"this API key ({caller.fingerprint}) lacks the '{needed}' scope this route needs; it holds {held}"
            refusal = _error("scope", why)
            refusal["error"]["scope"] = needed
            await send_json(send, 403, refusal)
            return
        # who called, by fingerprint only: the inference log and every message name the key this way
        scope.setdefault("state", {})["caller"] = caller.fingerprint if caller is not None else "anonymous"
        scope["state"]["arrived"] = time.monotonic()  # a batch's deadline counts from here (serving.service)
        allowed = ROUTES.get(scope["path"])
        if allowed is not None and scope["method"] != allowed and not (allowed == "GET" and scope["method"] == "HEAD"):
            why = f"{scope['method']} is not allowed here; use {allowed}"
            await send_json(send, 405, _error("method", why), [(b"allow", allowed.encode())])
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            shown = content_type.decode(errors="replace") or "none"
            await send_json(send, 415, _error("content-type", f"{shown} is not accepted; send application/json"))
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await send_json(send, 413, _error("body", f"{int(declared)} bytes; at most {self.max_body}"))
            return
        body, more = b"", True
        while more:  # read it all (at most the limit) before the app sees it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await send_json(send, 413, _error("body", f"more than {self.max_body} bytes"))
                return
        direct = _DIRECT.get(scope["path"])
        if direct is not None:
            handler, threaded = direct
            if threaded:
                loop = asyncio.get_running_loop()
                answered = await loop.run_in_executor(None, handler, body, scope["state"]["caller"])
            else:
                answered = handler(body, scope["state"]["caller"])
            if answered is not None:
                await send_bytes(send, *answered, (SERVER_HEADER,))
                return
        replayed = False
        gone, hung_up = threading.Event(), asyncio.Event()
        scope["state"]["gone"] = gone  # read by a batch before it logs what it served

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await hung_up.wait()
            return {"type": "http.disconnect"}

        async def watch() -> None:
            # the one reader of the connection once the body is in: a client that hangs up is seen at once
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            hung_up.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.app(scope, replay, send)
        finally:
            watcher.cancel()
