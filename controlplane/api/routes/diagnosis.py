"""The expert's diagnosis: per model and device, what the recent windows say and what follows."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel

from controlplane.api.deps import PlaneDep
from controlplane.api.schemas import ErrorOut
from controlplane.diagnosis import DEFAULT_SECONDS, findings

router = APIRouter(tags=["diagnosis"])


class FindingOut(BaseModel):
    kind: str
    """too-few-instances, batching-window, interference, idle-device, small-device."""
    subject: str
    """The model, or the device, it is about."""
    summary: str
    action: str
    """What follows from it."""
    evidence: dict[str, float | str | None]
    severity: float
    """Larger first."""
    window: list[float]
    """The span [start, end] (Unix seconds) it was read from."""


@router.get("/diagnosis", response_model=list[FindingOut], responses={422: {"model": ErrorOut}})
def diagnosis(
    plane: PlaneDep, seconds: float = Query(DEFAULT_SECONDS, gt=0, le=86_400, allow_inf_nan=False)
) -> list[FindingOut]:
    """What an expert would say of the last `seconds`: queue against compute per model beside the
    device's utilization (too few instances, a mistuned batching window), interference between a
    latency-critical model and the bulk work beside it, idle or nearly empty devices. Most severe
    first; each finding with its evidence and the action that follows."""
    now = plane.clock()
    found = findings(plane.store, plane.fleet.spec, plane.fleet.all_knobs(), now, seconds)
    return [
        FindingOut(
            kind=f.kind,
            subject=f.subject,
            summary=f.summary,
            action=f.action,
            evidence=dict(f.evidence),
            severity=f.severity,
            window=[now - seconds, now],
        )
        for f in found
    ]
