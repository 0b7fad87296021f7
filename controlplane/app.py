"""The FastAPI application: one router per resource under /api/v1, OpenAPI at /docs, and the
operational endpoints (/metrics, /healthz, /readyz) at the root.

Every error is JSON: `{"error": ..., "field": ...}` naming the request field that was wrong. Every
mutating endpoint and the alert webhook require the bearer token, checked before the body is read,
and no request body may exceed MAX_BODY_BYTES."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.api.deps import ApiError, bearer_ok, unauthorized
from controlplane.api.routes import (
    alerts,
    configs,
    controller,
    diagnosis,
    fleet,
    metrics,
    ops,
    packing,
    slas,
    slos,
    tuning,
)
from controlplane.api.schemas import ErrorOut
from controlplane.plane import ControlPlane
from controlplane.telemetry import ControlPlaneMetrics
from store.configs import UnknownModel
from store.db import StoreError

API_PREFIX = "/api/v1"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY_BYTES = 1 << 20
"""The largest request body, 1 MiB. The largest body a route takes is Alertmanager's webhook, at
most 1,000 alerts (AmWebhook); one alert as Alertmanager sends it (labels, annotations, start and
end, generatorURL, fingerprint) is about 0.6 KB, so 1,000 fit with room to spare, and the shipped
route (deploy/prometheus, group_by [alertname, model]) sends one group's few alerts at a time.
Every other body is a few hundred bytes."""


class BodyRefused(StarletteHTTPException):
    """Raised by the guard's `receive` in place of a body it refuses (no token, over the limit): an
    HTTPException, so FastAPI's body reader passes it on to the app's handler rather than calling it
    a parse error."""

    def __init__(self, status: int, message: str, field: str, headers: dict[str, str]) -> None:
        super().__init__(status, message, headers)
        self.field = field


def _unauthenticated() -> BodyRefused:
    exc = unauthorized()
    return BodyRefused(exc.status, exc.message, str(exc.field), {"WWW-Authenticate": "Bearer"})


def _too_large(limit: int) -> BodyRefused:
    message = f"the request body is over the limit of {limit} bytes ({limit / 2**20:g} MiB)"
    return BodyRefused(413, message, "body", {"Connection": "close"})  # the rest is not worth reading


def _error(status: int, message: str, field: str | None = None, detail: list[dict[str, object]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    body: dict[str, object] = {"error": message, "field": field, "detail": detail or []}
    return JSONResponse(body, status_code=status, headers=headers)


def _allowed(app: FastAPI, request: Request) -> str:
    """Every method the request's path takes (Starlette's 405 names only its first route's)."""
    methods: set[str] = set()
    for route in app.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def create_app(plane: ControlPlane, token: str) -> FastAPI:
    """The API over a started control plane; `token` is the bearer token mutations must carry."""
    if not token:
        raise ValueError("the API needs a bearer token")
    app = FastAPI(
        title="slatune",
        summary="Observability and SLA autotuning for Triton Inference Server fleets.",
        version="1",
    )
    app.state.plane = plane
    app.state.token = token
    too_large: dict[int | str, dict[str, object]] = {
        413: {"model": ErrorOut, "description": f"The request body is over {MAX_BODY_BYTES} bytes."}
    }
    routers = (
        fleet.router,
        configs.router,
        slas.router,
        slos.router,
        metrics.router,
        tuning.router,
        controller.router,
        alerts.router,
        packing.router,
        diagnosis.router,
    )
    for router in routers:
        app.include_router(router, prefix=API_PREFIX, responses=too_large)
    app.include_router(ops.router)

    @app.exception_handler(ApiError)
    def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, exc.field, headers=headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"field": ".".join(map(str, e["loc"])), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        first = detail[0] if detail else {"field": None, "message": "invalid request"}
        return _error(422, f"{first['field']}: {first['message']}", str(first["field"]), detail)

    @app.exception_handler(BodyRefused)
    def _refused(_: Request, exc: BodyRefused) -> JSONResponse:
        return _refusal(exc)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed(app, request)}
        return _error(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(UnknownModel)
    def _unknown(_: Request, exc: UnknownModel) -> JSONResponse:
        return _error(404, str(exc), "path.model")

    @app.exception_handler(StoreError)
    def _store(_: Request, exc: StoreError) -> JSONResponse:
        return _error(503, f"the store is unavailable: {exc}")

    @app.exception_handler(Exception)
    def _crash(_: Request, __: Exception) -> JSONResponse:
        return _error(500, "internal server error (see the control plane's log)")

    app.add_middleware(_Guard)
    app.add_middleware(_RequestMetrics)  # outermost: it counts the guard's refusals too
    return app


class _Guard:
    """What costs nothing is checked before anything reads the body. The body of a mutating
    request without the bearer token is never read: reading it raises the 401 (a route that takes
    no body refuses it in its `require_token`; a path or method no route takes keeps its 404 or
    405). No body may be over `limit` bytes (413): by its Content-Length before the app runs, and a
    chunked one as it streams in, stopped at the chunk that passes the limit.

    A request line past the HTTP server's own limits never reaches the app: uvicorn (httptools)
    answers a request target (path and query) over 65,535 bytes itself, with a plain-text 400."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        anonymous = scope["method"] in MUTATING and not bearer_ok(
            headers.get("authorization"), scope["app"].state.token
        )
        length = headers.get("content-length", "")
        if not anonymous and length.isdigit() and int(length) > self.limit:
            await _refusal(_too_large(self.limit))(scope, receive, send)
            return
        received, started = 0, False

        async def guarded() -> Message:
            nonlocal received
            if anonymous:
                raise _unauthenticated()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _too_large(self.limit)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded, sending)
        except BodyRefused as exc:  # the app's handler answers it; this is for a reader outside routes
            if started:
                raise
            await _refusal(exc)(scope, receive, send)


def _refusal(exc: BodyRefused) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), exc.field, headers=dict(exc.headers or {}))


def _route_label(scope: Scope) -> str:
    """The route template of a request, with the prefix its router was included under (the route
    knows only its own part: `/models/{model}` for `/api/v1/models/chat-llm`); "unmatched" for a
    path no route takes. Path parameters are single segments, so the prefix is the leading rest."""
    template = getattr(scope.get("route"), "path", None)
    if template is None:
        return "unmatched"
    template = str(template)
    segments = str(scope["path"]).rstrip("/").split("/")
    prefix = "/".join(segments[: len(segments) - template.rstrip("/").count("/")])
    return prefix + template


class _RequestMetrics:
    """Counts and times every request by route template: a plain ASGI middleware (Starlette's
    BaseHTTPMiddleware costs more than a cheap handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = _route_label(scope)
            method = scope["method"]
            metrics: ControlPlaneMetrics = scope["app"].state.plane.metrics
            metrics.http_requests.labels(method, route, str(status)).inc()
            metrics.http_seconds.labels(method, route).observe(time.perf_counter() - began)
