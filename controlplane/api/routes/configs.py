"""Configurations: what runs and what is asked for, proposals (with a dry run), history, rollback."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from pydantic import ValidationError

from controlplane.api.deps import ApiError, Authorized, IdPath, PlaneDep, SessionDep, known_model
from controlplane.api.proposals import propose_one, version_out
from controlplane.api.schemas import ConfigOut, ErrorOut, ProposalIn, ProposalOut, RollbackIn, VersionOut
from controlplane.plane import ControlPlane
from domain.spec import Knobs
from runtime.fleet import ReconfigurationError
from store import configs

router = APIRouter(prefix="/models/{model}/config", tags=["configurations"])
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut}, 503: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut},
}  # fmt: skip
PROPOSED: dict[int | str, dict[str, object]] = {
    **ERRORS, 400: {"model": ErrorOut},
    202: {"model": ProposalOut, "description": "Recorded as desired; not applied yet (the reconciler applies it)"},
}  # fmt: skip


def _settle(plane: ControlPlane, out: ProposalOut, wait: bool, response: Response) -> ProposalOut:
    """Nudge the reconciler; with `wait`, return once it has settled the version."""
    if out.version is None:
        return out
    response.status_code = 202
    if not wait:
        plane.reconciler.nudge()
        return out
    state = plane.reconciler.converge([out.version.id], timeout_s=120)[out.version.id]
    with plane.store.session() as session:
        row = configs.version(session, out.model, out.version.id)
        assert row is not None
        version = version_out(out.model, row)
    if state == "failed":
        raise ApiError(409, f"{out.model}: version {version.id} failed: {version.error}")
    response.status_code = 200 if state == "applied" else 202
    return out.model_copy(update={"version": version})


@router.post("", response_model=ProposalOut, responses=PROPOSED, dependencies=[Authorized])
def propose(model: str, body: ProposalIn, plane: PlaneDep, response: Response) -> ProposalOut:
    """Propose new knobs for a model. A dry run shows the diff, the memory check and the
    guardrails' clips, and records nothing. Otherwise the clipped knobs become the model's desired
    configuration (202) and the reconciler applies them; `wait` returns once applied (200)."""
    known_model(plane, model)
    current = plane.fleet.knobs(model)
    patch = body.knobs.model_dump(exclude_none=True)
    if "resources" in patch:  # merged: naming one resource keeps the others; a count of 0 drops one
        patch["resources"] = {**current.resources, **patch["resources"]}
    try:
        target = Knobs.model_validate({**current.model_dump(), **patch})
    except ValidationError as exc:  # knobs that contradict each other (a preferred batch over the max)
        first = exc.errors()[0]
        # The one rule across knobs: preferred batch sizes at most the max batch size.
        where = ".".join(str(p) for p in first["loc"]) or "preferred_batch_sizes"
        raise ApiError(422, f"{model}: {first['msg']}", f"body.knobs.{where}".rstrip(".")) from None
    with plane.store.session() as session:  # committed before the reconciler is nudged
        out = propose_one(
            plane, session, model, target, reason=body.reason or "proposed through the API",
            dry_run=body.dry_run,
        )  # fmt: skip
    return _settle(plane, out, body.wait, response)


@router.post("/rollback", response_model=ProposalOut, responses=PROPOSED, dependencies=[Authorized])
def rollback(model: str, body: RollbackIn, plane: PlaneDep, response: Response) -> ProposalOut:
    """Go back to a previous version's knobs: a new desired version, through the same guardrails."""
    known_model(plane, model)
    with plane.store.session() as session:  # committed before the reconciler is nudged
        old = configs.version(session, model, body.version)
        if old is None:
            raise ApiError(404, f"{model} has no configuration version {body.version}", "body.version")
        out = propose_one(
            plane, session, model, Knobs.model_validate(old.knobs),
            reason=body.reason or f"rollback to version {old.id}", dry_run=body.dry_run,
        )  # fmt: skip
    return _settle(plane, out, body.wait, response)


@router.get("", response_model=ConfigOut, responses=ERRORS)
def current(model: str, plane: PlaneDep, session: SessionDep) -> ConfigOut:
    """What the model's Triton runs (read back now), its applied version, and the desired version
    the reconciler has not applied yet, if any."""
    known_model(plane, model)
    try:
        running = plane.fleet.observed_knobs(model)
    except ReconfigurationError as exc:
        raise ApiError(503, str(exc)) from None
    applied, desired = configs.applied(session).get(model), configs.desired(session).get(model)
    return ConfigOut(
        model=model, running=running,
        applied=version_out(model, applied) if applied else None,
        desired=version_out(model, desired) if desired else None,
    )  # fmt: skip


@router.get("/history", response_model=list[VersionOut], responses=ERRORS)
def history(
    model: str, plane: PlaneDep, session: SessionDep, limit: int = Query(50, ge=1, le=1000)
) -> list[VersionOut]:
    """The model's configuration versions, newest first, with who asked (actor), why, and what
    became of each (desired, applied, failed with the server's message, superseded)."""
    known_model(plane, model)
    return [version_out(model, v) for v in configs.history(session, model, limit)]


@router.get("/versions/{version_id}", response_model=VersionOut, responses=ERRORS)
def get_version(model: str, version_id: IdPath, plane: PlaneDep, session: SessionDep) -> VersionOut:
    known_model(plane, model)
    row = configs.version(session, model, version_id)
    if row is None:
        raise ApiError(404, f"{model} has no configuration version {version_id}", "path.version_id")
    return version_out(model, row)
