"""Tuning: start a study (budget, window length, models in scope), stop it, resume or discard an
interrupted or stopped one, see its trials, the best configuration and its evidence."""

from __future__ import annotations

from typing import Any

import optuna
from fastapi import APIRouter, Response

from controlplane.api.deps import ApiError, Authorized, IdPath, PlaneDep, SessionDep
from controlplane.api.schemas import ErrorOut, TrialOut, TuningIn, TuningOut
from controlplane.plane import ControlPlane
from controlplane.tuning import TuningBusy
from domain.spec import Knobs
from store import tuning
from store.models import TuningRun
from tuner.live import RunNotResumable

router = APIRouter(prefix="/tuning", tags=["tuning"])
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut},
}  # fmt: skip


def _out(run: TuningRun, trials: list[TrialOut] | None = None) -> TuningOut:
    return TuningOut(
        id=run.id, study_name=run.study_name, status=run.status, started_at=run.started_at,
        ended_at=run.ended_at, budget=run.budget, window_s=run.window_s, models=run.models, best=run.best,
        trials=trials,
    )  # fmt: skip


def _trials(plane: ControlPlane, run: TuningRun) -> list[TrialOut]:
    try:
        study = optuna.load_study(study_name=run.study_name, storage=plane.optuna_storage(run.optuna_storage))
    except KeyError:
        return []  # recorded, but the study was not created yet
    out = []
    for t in study.trials:
        attrs: dict[str, Any] = t.user_attrs
        knobs = attrs.get("knobs")
        out.append(
            TrialOut(
                number=t.number,
                state=t.state.name,
                value=t.value,
                knobs={m: Knobs.model_validate(k) for m, k in knobs.items()} if knobs else None,
                score=attrs.get("score"),
                refused=attrs.get("refused"),
                cut_short=attrs.get("cut_short"),
            )
        )
    return out


def _run(session: SessionDep, run_id: int) -> TuningRun:
    run = tuning.run(session, run_id)
    if run is None:
        raise ApiError(404, f"no tuning run {run_id}", "path.run_id")
    return run


@router.post(
    "", response_model=TuningOut, status_code=202, responses={**ERRORS, 400: {"model": ErrorOut}},
    dependencies=[Authorized],
)  # fmt: skip
def start(body: TuningIn, plane: PlaneDep, session: SessionDep) -> TuningOut:
    """Start a tuning run on the live fleet (one at a time). It measures the running configuration
    first, then `budget - 1` candidates for `window_s` each after `warmup_s`, keeping every SLA as
    a constraint; the winner stays applied."""
    names = plane.fleet.spec.model_names
    for i, m in enumerate(body.models or []):
        if m not in names:
            raise ApiError(422, f"unknown model {m!r} (fleet has: {', '.join(names)})", f"body.models.{i}")
    if body.study_name and tuning.study_exists(session, body.study_name):
        raise ApiError(409, f"study {body.study_name!r} exists; pick another name", "body.study_name")
    try:
        run_id = plane.tuning.start(
            budget=body.budget, window_s=body.window_s, warmup_s=body.warmup_s,
            models=tuple(body.models) if body.models else None, study_name=body.study_name, seed=body.seed,
        )  # fmt: skip
    except TuningBusy as exc:
        raise ApiError(409, str(exc)) from None
    session.expire_all()
    return _out(_run(session, run_id))


@router.get("", response_model=list[TuningOut])
def runs(session: SessionDep) -> list[TuningOut]:
    """Every tuning run, newest first (without trials)."""
    return [_out(r) for r in tuning.runs(session)]


@router.get("/{run_id}", response_model=TuningOut, responses=ERRORS)
def run(run_id: IdPath, plane: PlaneDep, session: SessionDep) -> TuningOut:
    """A run with its trials (knobs, score, whether cut short or refused) and, once it has one,
    the best configuration with its evidence (both measurements of it)."""
    r = _run(session, run_id)
    return _out(r, _trials(plane, r))


@router.post(
    "/{run_id}/stop", response_model=TuningOut, status_code=202, responses=ERRORS, dependencies=[Authorized]
)
def stop(run_id: IdPath, plane: PlaneDep, session: SessionDep, response: Response) -> TuningOut:
    """Stop a running run: it applies the best feasible configuration measured so far and ends
    (status `stopped`)."""
    r = _run(session, run_id)
    if not plane.tuning.stop(run_id):
        hint = " (resume or discard it)" if r.status in tuning.RESUMABLE else ""
        raise ApiError(409, f"tuning run {run_id} is not running (status {r.status}){hint}", "path.run_id")
    return _out(r)


@router.post(
    "/{run_id}/resume", response_model=TuningOut, status_code=202, responses=ERRORS, dependencies=[Authorized]
)
def resume(run_id: IdPath, plane: PlaneDep, session: SessionDep) -> TuningOut:
    """Continue an interrupted or stopped run: the same study (a trial its death left running is
    failed, none told is repeated), with its budget, window, warmup and models in scope."""
    _run(session, run_id)
    try:
        plane.tuning.resume(run_id)
    except RunNotResumable as exc:
        raise ApiError(409, str(exc), "path.run_id") from None
    except TuningBusy as exc:
        raise ApiError(409, str(exc)) from None
    session.expire_all()
    return _out(_run(session, run_id))


@router.post("/{run_id}/discard", response_model=TuningOut, responses=ERRORS, dependencies=[Authorized])
def discard(run_id: IdPath, plane: PlaneDep, session: SessionDep) -> TuningOut:
    """Give up an interrupted or stopped run for good (status `discarded`); its study stays for
    the record, and the configuration it left applied stays."""
    r = _run(session, run_id)
    if not tuning.discard(session, run_id, plane.clock()):
        raise ApiError(
            409,
            f"tuning run {run_id} is {r.status}: only an interrupted or stopped run can be discarded",
            "path.run_id",
        )
    session.expire_all()
    return _out(_run(session, run_id))
