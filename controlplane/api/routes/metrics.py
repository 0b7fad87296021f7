"""Metrics from the store: a model's windows over a time range, and the latest summary per model
with its SLA status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from controlplane.api.deps import ApiError, PlaneDep, SessionDep, known_model
from controlplane.api.schemas import ErrorOut, SummaryOut, WindowOut
from store import queries

router = APIRouter(tags=["metrics"])
WINDOW_COLUMNS = {
    name: ("config_version_id" if name == "config_version" else name) for name in WindowOut.model_fields
}


ERRORS: dict[int | str, dict[str, object]] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.get("/models/{model}/windows", response_model=list[WindowOut], responses=ERRORS)
def windows(
    model: str,
    plane: PlaneDep,
    session: SessionDep,
    start: float | None = Query(
        None, allow_inf_nan=False, description="Unix seconds; windows that ended at or after it."
    ),
    end: float | None = Query(
        None, allow_inf_nan=False, description="Unix seconds; windows that ended at or before it."
    ),
    limit: int = Query(500, ge=1, le=10_000, description="At most this many, the newest."),
) -> list[dict[str, Any]]:
    """The model's metric windows in [start, end] (default: the newest `limit`), oldest first."""
    known_model(plane, model)
    if start is not None and end is not None and end < start:
        raise ApiError(422, f"end ({end}) is before start ({start})", "query.end")
    rows = queries.window_page(session, model, start=start, end=end, limit=limit, columns=WINDOW_COLUMNS)
    return [dict(r._mapping) for r in rows]  # validated as WindowOut (response_model) on the way out


@router.get("/summary", response_model=list[SummaryOut], responses={422: {"model": ErrorOut}})
def summary(
    plane: PlaneDep,
    window_s: float = Query(
        30.0, gt=0, le=86_400, allow_inf_nan=False, description="Seconds to summarise, up to now."
    ),
) -> list[SummaryOut]:
    """Per model over the last `window_s`: rates, failures, p50/p99 (TTFT for a streaming model),
    its SLA and whether it was met (null: no SLA, or no traffic to tell)."""
    knobs = plane.fleet.all_knobs()
    return [SummaryOut(**dict(s), knobs=knobs[s.model]) for s in plane.summaries(window_s).values()]
