"""Operations: the control plane's own metrics, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from controlplane.api.deps import PlaneDep
from controlplane.api.schemas import HealthOut

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(plane: PlaneDep) -> Response:
    """slatune's own metrics (reconciler, alerts, API, collection, SLA status) for Prometheus."""
    return Response(generate_latest(plane.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:  # async: nothing to wait for, no worker thread needed
    """Liveness: the process answers."""
    return HealthOut(status="ok", checks={})


@router.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def readyz(plane: PlaneDep, response: Response) -> HealthOut:
    """Readiness: the store answers; the reconciler, the collector, the SLO controller (unless it is
    off) and a running tuning run each finished a pass lately without failing; and every server's
    metrics answered their last scrape with a page slatune takes. 503 naming what is not ready otherwise (a loop is "stuck" or "failing", a server "stale"
    or "failing", each with why)."""
    checks = {}
    try:
        with plane.store.session() as session:
            session.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"unreachable: {exc}"
    checks["reconciler"] = plane.reconciler.heartbeat.status()
    if plane.tuning.active_run is not None:
        checks["tuner"] = plane.tuning.heartbeat.status()
    if plane.controller.mode != "off":
        checks["controller"] = plane.controller.heartbeat.status()
    checks["collector"] = plane.collector.heartbeat.status() if plane.collector is not None else "not running"
    stale = plane.collector.stale() if plane.collector is not None else []
    failing = plane.collector.failing() if plane.collector is not None else {}
    for s in plane.fleet.spec.servers:
        # why its last scrape failed: stale (unreachable or too slow, retried with backoff) or its
        # page refused (NaN counters, too large ...), tried again every pass
        if s.name in failing:
            checks[f"server:{s.name}"] = f"{'stale' if s.name in stale else 'failing'}: {failing[s.name]}"
        else:
            checks[f"server:{s.name}"] = "ok"
    ready = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ready else 503
    return HealthOut(status="ok" if ready else "degraded", checks=checks)
