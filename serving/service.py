"""The BentoML service: churn and propensity scores, recommendations, and what is served.

`bentoml serve serving.service:Custintel` (or `custintel serve`). Models load when a
worker starts (never at import) and a background thread picks up promotions. All the
logic lives in `serving.answers` and the parts `serving.runtime` composes; this module only maps HTTP to it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import bentoml
import orjson
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from custintel.settings import Settings
from serving import answers, openapi
from serving.errors import ServingError, quiet_refusals
from serving.keys import parse_api_keys
from serving.middleware import Gatekeeper, answer_directly
from serving.policy import load_serving_policy
from serving.runtime import Runtime
from serving.schemas import (
    BatchPropensityRequest,
    BatchPropensityResponse,
    BatchRecommendRequest,
    BatchRecommendResponse,
    BatchScoreRequest,
    BatchScoreResponse,
    DecideBatchRequest,
    DecideBatchResponse,
    DecideRequest,
    DecideResponse,
    ModelsResponse,
    OutcomeRequest,
    OutcomeResponse,
    PolicyRef,
    PropensityRequest,
    PropensityResponse,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    ServedModelInfo,
    SnapshotInfo,
)

T = TypeVar("T")
log = logging.getLogger("custintel.serving")
GC_GEN0 = 20_000  # allocations between young-generation collections (CPython's default: 700)
DIRECT_PATHS = ("/churn/score", "/decide", "/decide/batch")  # answered by the gate itself once it checked them
TRACED_NOT = ("/churn/score", "/propensity/score", "/recommend", "/decide", "/outcomes")
extra = FastAPI(docs_url=None, openapi_url=None, redoc_url=None)


def _caller(ctx: bentoml.Context) -> str:
    return str(ctx.request.scope.get("state", {}).get("caller", "unknown"))


def _answer(call: Callable[[], T], ctx: bentoml.Context) -> T | JSONResponse:
    try:
        return call()
    except ServingError as exc:
        ctx.response.status_code = exc.status  # with a Context in the signature, BentoML answers with its status
        return JSONResponse(exc.body(), status_code=exc.status)


def _direct(call: Callable[[], dict[str, Any]]) -> tuple[int, bytes]:
    """A gate-answered route's (status, JSON): the answer, a refusal naming the field, or 500 said as one."""
    try:
        return 200, orjson.dumps(call())
    except ServingError as exc:
        return exc.status, orjson.dumps(exc.body())
    except Exception as exc:  # noqa: BLE001 - the gate has no handler behind it: say it, keep the traceback in the log
        log.exception("answering in the gate failed")
        body = {"error": {"field": "server", "reason": f"internal error: {type(exc).__name__}"}}
        return 500, orjson.dumps(body)


def _timeout() -> float:
    """The serving policy's `timeout_seconds`; read when BentoML imports us (its traffic timeout)."""
    try:
        return load_serving_policy(Settings().serving_policy).timeout_seconds
    except ValueError:
        return 30.0  # a bad policy is refused again, with the field named, when a worker starts


def _deadline(runtime: Runtime, ctx: bentoml.Context) -> answers.Deadline:
    """When a batch's answers stop being wanted.

    The timeout from the request's arrival at the gate, less a margin, or as soon as the caller
    hangs up (the gate watches the connection).
    """
    state = ctx.request.scope.get("state", {})
    timeout = runtime.policy.timeout_seconds
    at = float(state.get("arrived", time.monotonic())) + max(timeout - 1.0, timeout * 0.9)
    return answers.Deadline(at, state.get("gone"))


def _workers() -> int:
    """Worker processes, from CUSTINTEL_SERVING_WORKERS (`custintel serve --workers`); read when BentoML imports us."""
    try:
        return Settings().serving_workers
    except ValueError:
        return 1  # a bad value is refused by `custintel serve` and again when a worker builds its Settings


@bentoml.asgi_app(extra, path="/")
@bentoml.service(
    name="custintel",
    workers=_workers(),
    threads=8,
    traffic={"timeout": _timeout()},
    logging={"access": {"enabled": False}},
    # No trace exporter is configured, yet BentoML builds an OpenTelemetry span per request: about
    # a fifth of a scoring request's CPU (measured). Scoring paths are left out of tracing; a
    # deployment that exports traces can override this (BENTOML_CONFIG_OPTIONS).
    tracing={"excluded_urls": list(TRACED_NOT)},
)
class Custintel:
    """Scores and recommendations from the promoted champions, consent-aware."""

    def __init__(self) -> None:
        settings = Settings()
        if not settings.api_keys and not settings.serving_allow_anonymous:
            raise RuntimeError(
                "set CUSTINTEL_SERVING_API_KEYS (or CUSTINTEL_SERVING_ALLOW_ANONYMOUS=true for a local trial)"
            )
        parse_api_keys(settings.serving_api_keys)  # a malformed entry stops the worker, named (by fingerprint)
        self.runtime = Runtime(settings, load_serving_policy(settings.serving_policy))
        # imported here: the decision policy is loaded (and a bad one refused, named) when a worker starts
        from serving.decisions import Decider

        self.decider = Decider(self.runtime, fill_ahead=True)  # the store's customers scored ahead, in the background
        quiet_refusals("bentoml._internal.server.http_app")  # a refused request: one INFO line, not a traceback
        openapi.publish(lambda: answers.served_inputs(self.runtime))  # /docs.json declares what is served now
        # answered in the gate (serving.middleware), past BentoML's routing, context and serialisation
        answer_directly("/churn/score", self._churn_direct)
        answer_directly("/decide", self._decide_direct)
        answer_directly("/decide/batch", self._decide_batch_direct, threaded=True)  # a campaign: off the event loop
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @bentoml.on_startup
    def start_polling(self) -> None:
        """Ask the registry every few seconds whether a champion moved."""
        interval = self.runtime.settings.serving_poll_seconds

        def poll() -> None:
            while not self._stop.wait(interval):
                self.runtime.champions.refresh()
                self.decider.policies.refresh()

        self._poller = threading.Thread(target=poll, name="registry-poll", daemon=True)
        self._poller.start()
        self.decider.prefetch()

    @bentoml.on_startup
    def settle_memory(self) -> None:
        """Keep the loaded models and libraries out of garbage collection (they live as long as the worker).

        The collector otherwise walks those millions of long-lived objects in its oldest
        generation every so often, pausing every request for hundreds of milliseconds; and
        a request allocates a few hundred objects, so the youngest generation is collected
        less often.
        """
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0, 50, 100)

    @bentoml.on_shutdown
    def stop_polling(self) -> None:
        """Stop polling and flush the inference log."""
        for path in DIRECT_PATHS:
            answer_directly(path, None)
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5)
        self.runtime.close()
        self.decider.close()

    def __is_ready__(self) -> bool:
        return self.runtime.champions.ready

    @bentoml.api(route="/churn/score")
    async def churn_score(self, request: ScoreRequest, /, ctx: bentoml.Context) -> ScoreResponse:
        """A customer's churn probability, the decision against the recorded threshold, and the top reasons."""
        # About 0.3 ms of CPU (two indexed SQLite reads, one LightGBM call): answered on the event loop.
        # Handing it to a worker thread cost more than the work, and the threads then queued for the GIL.

        def run() -> Response:
            # the `ScoreResponse` document `churn_answers` makes, serialised as it is (as the batch route does)
            (answer,) = answers.churn_answers(self.runtime, [request], _caller(ctx))
            return Response(orjson.dumps(answer), media_type="application/json")

        answer: Response = _answer(run, ctx)
        return answer  # type: ignore[return-value]  # the bytes hold a ScoreResponse

    def _churn_direct(self, body: bytes, caller: str) -> tuple[int, bytes] | None:
        """`churn_score` for the gate: (status, JSON) from the raw body; None leaves a refused body to BentoML."""
        try:
            request = ScoreRequest.model_validate_json(body)
        except ValidationError:
            return None  # BentoML refuses it (400, the fields named), as it does every malformed body
        try:
            (answer,) = answers.churn_answers(self.runtime, [request], caller)
        except ServingError as exc:
            return exc.status, orjson.dumps(exc.body())
        return 200, orjson.dumps(answer)

    def _decide_direct(self, body: bytes, caller: str) -> tuple[int, bytes] | None:
        """`decide` for the gate: (status, JSON) from the raw body; None leaves a refused body to BentoML.

        On the event loop, as the churn score (a decision costs about a millisecond of CPU).
        """
        try:
            request = DecideRequest.model_validate_json(body)
        except ValidationError:
            return None  # BentoML refuses it (400, the fields named), as it does every malformed body
        return _direct(lambda: self.decider.decide_one(request))

    def _decide_batch_direct(self, body: bytes, caller: str) -> tuple[int, bytes] | None:
        """`decide_batch` for the gate (on a worker thread): (status, JSON); None leaves a refused body to BentoML."""
        try:
            request = DecideBatchRequest.model_validate_json(body)
        except ValidationError:
            return None

        def run() -> dict[str, Any]:
            answers.check_batch(self.runtime, len(request.customer_keys))
            return self.decider.decide_many(request)

        return _direct(run)

    @bentoml.api(route="/churn/score/batch")
    def churn_score_batch(self, request: BatchScoreRequest, /, ctx: bentoml.Context) -> BatchScoreResponse:
        """Churn scores for many customers in one call."""

        def run() -> Response:
            answers.check_batch(self.runtime, len(request.customers))
            deadline = _deadline(self.runtime, ctx)
            results = answers.churn_answers(self.runtime, request.customers, _caller(ctx), True, deadline)
            # `BatchScoreResponse` documents made by `churn_answers`, serialised as they are: validating
            # a thousand answers into response models cost more than scoring them (measured).
            return Response(orjson.dumps({"results": results}), media_type="application/json")

        answer: Response = _answer(run, ctx)
        return answer  # type: ignore[return-value]  # the declared model is what the bytes hold (and what /docs.json shows)

    @bentoml.api(route="/propensity/score")
    def propensity_score(self, request: PropensityRequest, /, ctx: bentoml.Context) -> PropensityResponse:
        """A customer's products by purchase probability."""
        return _answer(lambda: answers.score_propensity(self.runtime, [request], _caller(ctx))[0], ctx)  # type: ignore[return-value]

    @bentoml.api(route="/propensity/score/batch")
    def propensity_score_batch(
        self, request: BatchPropensityRequest, /, ctx: bentoml.Context
    ) -> BatchPropensityResponse:
        """Propensities for many customers in one call."""

        def run() -> BatchPropensityResponse:
            answers.check_batch(self.runtime, len(request.customers))
            return BatchPropensityResponse(
                results=answers.score_propensity(
                    self.runtime, request.customers, _caller(ctx), True, _deadline(self.runtime, ctx)
                )
            )

        return _answer(run, ctx)  # type: ignore[return-value]

    @bentoml.api(route="/recommend")
    def recommend(self, request: RecommendRequest, /, ctx: bentoml.Context) -> RecommendResponse:
        """Top-k products for a customer after the business rules and the frequency cap."""
        return _answer(lambda: answers.recommend(self.runtime, [request], _caller(ctx))[0], ctx)  # type: ignore[return-value]

    @bentoml.api(route="/recommend/batch")
    def recommend_batch(self, request: BatchRecommendRequest, /, ctx: bentoml.Context) -> BatchRecommendResponse:
        """Recommendations for many customers in one call."""

        def run() -> BatchRecommendResponse:
            answers.check_batch(self.runtime, len(request.customers))
            return BatchRecommendResponse(
                results=answers.recommend(
                    self.runtime, request.customers, _caller(ctx), True, _deadline(self.runtime, ctx)
                )
            )

        return _answer(run, ctx)  # type: ignore[return-value]

    @bentoml.api(route="/decide")
    def decide(self, request: DecideRequest, /, ctx: bentoml.Context) -> DecideResponse:
        """The next best action for a customer in a live interaction: action(s), reasons, agent prompt, decision id.

        Logged before it is answered (quote `decision_id` in /outcomes). Consent per purpose, the minors
        policy, contact caps and cool-downs decide eligibility; a missing champion falls back, said so.
        """

        def run() -> Response:
            return Response(orjson.dumps(self.decider.decide_one(request)), media_type="application/json")

        answer: Response = _answer(run, ctx)
        return answer  # type: ignore[return-value]  # a DecideResponse document

    @bentoml.api(route="/decide/batch")
    def decide_batch(self, request: DecideBatchRequest, /, ctx: bentoml.Context) -> DecideBatchResponse:
        """A campaign's decisions under the channel's daily capacity: allocation, value, value given up."""

        def run() -> Response:
            answers.check_batch(self.runtime, len(request.customer_keys))
            body = self.decider.decide_many(request)
            return Response(orjson.dumps(body), media_type="application/json")

        answer: Response = _answer(run, ctx)
        return answer  # type: ignore[return-value]  # a DecideBatchResponse document

    @bentoml.api(route="/outcomes")
    def outcomes(self, request: OutcomeRequest, /, ctx: bentoml.Context) -> OutcomeResponse:
        """Record what happened after a decision (or frontline feedback with a reason), in the outcomes log."""
        return _answer(lambda: OutcomeResponse(**self.decider.outcome(request)), ctx)  # type: ignore[return-value]

    @extra.get("/models", response_model=ModelsResponse)
    def models(self) -> ModelsResponse:
        """What is served: name, version, alias, card; degraded when the registry was unreachable."""
        state = self.runtime.champions.state
        served = [
            ServedModelInfo(
                family=m.family,
                name=m.name,
                version=m.version,
                alias="champion",
                loaded_at=m.loaded_at,
                threshold=m.threshold,
                card=m.card,
            )  # fmt: skip
            for m in self.runtime.champions.models.values()
        ]
        held = self.runtime.snapshots.describe() if self.runtime.snapshots is not None else []
        return ModelsResponse(
            status="degraded" if state.degraded else "ok",
            detail=state.degraded,
            models=served,
            snapshots=[SnapshotInfo(**s) for s in held],
            decision_policy=PolicyRef(**self.decider.policies.current.ref()),
            decision_policy_detail=self.decider.policies.degraded,
        )


Custintel.add_asgi_middleware(Gatekeeper)  # type: ignore[attr-defined]  # reads the keys and limits when the worker builds the app
