"""Metrics from the store: a model's windows over a time range, and the latest summary per model
with its SLA status."""

from __future__ import annotations

from fastapi import APIRouter, Query

from controlplane.api.deps import ApiError, PlaneDep, SessionDep, known_model
from controlplane.api.schemas import ErrorOut, SummaryOut, WindowOut
from store import queries

router = APIRouter(tags=["metrics"])


ERRORS: dict[int | str, dict[str, object]] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.get("/models/{model}/windows", response_model=list[WindowOut], responses=ERRORS)
def windows(
    model: str,
    plane: PlaneDep,
    session: SessionDep,
    start: float | None = Query(None, description="Unix seconds; windows that ended at or after it."),
    end: float | None = Query(None, description="Unix seconds; windows that ended at or before it."),
    limit: int = Query(500, ge=1, le=10_000, description="At most this many, the newest."),
) -> list[WindowOut]:
    """The model's metric windows in [start, end] (default: the newest `limit`), oldest first."""
    known_model(plane, model)
    if start is not None and end is not None and end < start:
        raise ApiError(422, f"end ({end}) is before start ({start})", "query.end")
    rows = queries.windows(session, model, start=start, end=end, limit=limit)
    return [
        WindowOut(
            start=r.start,
            end=r.end,
            resolution_s=r.resolution_s,
            config_version=r.config_version_id,
            spans_reconfiguration=r.spans_reconfiguration,
            reset=r.reset,
            requests=r.requests,
            success=r.success,
            failures=r.failures or {},
            request_rate=r.request_rate,
            inference_rate=r.inference_rate,
            avg_batch=r.avg_batch,
            avg_queue_ms=r.avg_queue_ms,
            avg_compute_infer_ms=r.avg_compute_infer_ms,
            p50_ms=r.p50_ms,
            p90_ms=r.p90_ms,
            p99_ms=r.p99_ms,
            ttft_p50_ms=r.ttft_p50_ms,
            ttft_p99_ms=r.ttft_p99_ms,
            pending=r.pending,
        )
        for r in rows
    ]


@router.get("/summary", response_model=list[SummaryOut], responses={422: {"model": ErrorOut}})
def summary(
    plane: PlaneDep,
    window_s: float = Query(30.0, gt=0, le=86_400, description="Seconds to summarise, up to now."),
) -> list[SummaryOut]:
    """Per model over the last `window_s`: rates, failures, p50/p99 (TTFT for a streaming model),
    its SLA and whether it was met (null: no SLA, or no traffic to tell)."""
    knobs = plane.fleet.all_knobs()
    return [SummaryOut(**vars(s), knobs=knobs[s.model]) for s in plane.summaries(window_s).values()]
