"""SLOs: how well a model kept its SLA over a span (attainment, rolling p99, error budget)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from controlplane.api.deps import PlaneDep, known_model
from controlplane.api.schemas import ErrorOut, SloOut

router = APIRouter(prefix="/models/{model}/slo", tags=["slas"])
MAX_SPAN_S = 30 * 86_400.0
"""A month: the store keeps downsampled windows, and a span that long is still one read."""


@router.get("", response_model=SloOut | None, responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}})
def get_slo(
    model: str,
    plane: PlaneDep,
    seconds: float = Query(
        3600.0, gt=0, le=MAX_SPAN_S, allow_inf_nan=False, description="Seconds to judge, up to now."
    ),
) -> SloOut | None:
    """The model's SLO over the last `seconds`: the fraction of requests within the SLA's target
    (failures are not), the fraction of time its rolling p99 (over the SLA's window) was within
    target, the error budget left and the burn rate against its objective. Null for a model
    without an SLA; the figures are null when no requests could be judged."""
    known_model(plane, model)
    status = plane.slo(model, seconds)
    return None if status is None else SloOut(model=model, **status.model_dump())
