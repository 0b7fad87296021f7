"""The FastAPI application: one router per resource under /api/v1, OpenAPI at /docs, and the
operational endpoints (/metrics, /healthz, /readyz) at the root.

Every error is JSON: `{"error": ..., "field": ...}` naming the request field that was wrong. Every
mutating endpoint and the alert webhook require the bearer token."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.api.deps import ApiError
from controlplane.api.routes import alerts, configs, fleet, metrics, ops, slas, tuning
from controlplane.plane import ControlPlane
from controlplane.telemetry import ControlPlaneMetrics
from store.configs import UnknownModel
from store.db import StoreError

API_PREFIX = "/api/v1"


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
    for router in (fleet.router, configs.router, slas.router, metrics.router, tuning.router, alerts.router):
        app.include_router(router, prefix=API_PREFIX)
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

    app.add_middleware(_RequestMetrics)
    return app


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
