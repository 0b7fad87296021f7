"""SLAs: read and change a model's SLA (what the tuner keeps and the alerts watch)."""

from __future__ import annotations

from fastapi import APIRouter

from controlplane.api.deps import ApiError, Authorized, PlaneDep, SessionDep, known_model
from controlplane.api.schemas import ErrorOut, SlaIn
from controlplane.plane import slas_of
from domain.spec import Sla
from store import configs
from store.configs import model_row

router = APIRouter(prefix="/models/{model}/sla", tags=["slas"])
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 422: {"model": ErrorOut},
}  # fmt: skip


@router.get("", response_model=Sla | None, responses=ERRORS)
def get_sla(model: str, plane: PlaneDep, session: SessionDep) -> Sla | None:
    """The model's SLA, or null for a model without one (a bulk model)."""
    known_model(plane, model)
    return slas_of([model_row(session, model)])[model]


@router.put("", response_model=Sla, responses={**ERRORS, 400: {"model": ErrorOut}}, dependencies=[Authorized])
def put_sla(model: str, body: SlaIn, plane: PlaneDep, session: SessionDep) -> Sla:
    """Set the model's SLA: the metric (ttft_p99 for a streaming model, latency_p99), its
    target, the rolling window it is judged over and the objective (fraction of requests within
    target); a window or objective left out is the default, as in a spec. Tuning runs started afterwards keep it; the SLA metrics and alerts follow at once."""
    known_model(plane, model)
    sla = Sla(metric=body.metric, target_ms=body.target_ms, window_s=body.window_s, objective=body.objective)
    bad = sla.problem(plane.fleet.spec.model(model).streaming)
    if bad is not None:
        raise ApiError(422, f"{model}: {bad[1]}", f"body.{bad[0]}")
    configs.set_sla(session, model, sla)
    return sla
