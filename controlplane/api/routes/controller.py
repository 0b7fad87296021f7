"""The SLO controller: its mode, state, last actions with their reasons, and the incumbent
configuration per traffic regime (`controlplane.controller`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from controlplane.api.deps import Authorized, PlaneDep
from controlplane.api.schemas import ErrorOut

router = APIRouter(prefix="/controller", tags=["controller"])
ERRORS: dict[int | str, dict[str, object]] = {422: {"model": ErrorOut}}


class ModeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "advisory", "on"]
    """off; advisory (record what it would do, change nothing); on."""


class ActionOut(BaseModel):
    at: float
    mode: str
    kind: str
    """protect, panic, release, floor, regime, explore, abandon, adopt, reject."""
    model: str | None
    """The latency-critical model the action was about, if any."""
    rung: str | None
    regime: str | None
    reason: str
    applied: bool
    refused: str | None
    changes: dict[str, Any]
    """The knobs asked for, by model."""
    window: list[float | None]
    """The window [start, end] (Unix seconds) the decision read."""
    before_ratio: float | None
    """The worst latency-critical SLA figure over its target when it acted..."""
    after_ratio: float | None
    """...and a few seconds later."""


class IncumbentOut(BaseModel):
    goodput: float
    knobs: dict[str, Any]


class ControllerOut(BaseModel):
    mode: Literal["off", "advisory", "on"]
    loop: str
    """The loop's health: ok, failing (why) or stuck."""
    regime: str | None
    level: int
    """Protective rungs applied on top of the incumbent."""
    exploring: str | None
    """The neighbour being tried, if any."""
    incumbent: dict[str, Any] | None
    ladder: list[str]
    """The protective rungs in the order they are taken (history orders them)."""
    last_actions: list[ActionOut]
    incumbents: dict[str, IncumbentOut]
    """The best configuration known safe per traffic regime."""


@router.get("", response_model=ControllerOut, responses=ERRORS)
def status(plane: PlaneDep, limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    """Mode, loop health, traffic regime, protective level, the neighbour being tried, the ladder's
    order, the newest `limit` actions (newest first, each with its reason, window and evidence) and
    the incumbent configuration kept per regime."""
    return plane.controller.status(limit)


@router.put(
    "/mode",
    response_model=ControllerOut,
    responses={**ERRORS, 400: {"model": ErrorOut}, 401: {"model": ErrorOut}},
    dependencies=[Authorized],
)
def set_mode(body: ModeIn, plane: PlaneDep) -> dict[str, Any]:
    """Switch the controller off, to advisory (it journals what it would do), or on. It starts
    again from what runs."""
    plane.controller.set_mode(body.mode)
    return plane.controller.status(5)
