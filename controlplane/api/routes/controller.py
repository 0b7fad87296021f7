"""The SLO controller: its mode, state, last actions with their reasons, and the incumbent
configuration per traffic regime (`controlplane.controller`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from controlplane.api.deps import Authorized, PlaneDep
from controlplane.api.schemas import ErrorOut

router = APIRouter(prefix="/controller", tags=["controller"])


class ModeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "advisory", "on"]
    """off; advisory (record what it would do, change nothing); on."""


@router.get("", responses={422: {"model": ErrorOut}})
def status(plane: PlaneDep, limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    """Mode, loop health, traffic regime, protective level, the neighbour being tried, the ladder's
    order, the newest `limit` actions (newest first, each with its reason, window and evidence) and
    the incumbent configuration kept per regime."""
    return plane.controller.status(limit)


@router.put(
    "/mode", responses={401: {"model": ErrorOut}, 422: {"model": ErrorOut}}, dependencies=[Authorized]
)
def set_mode(body: ModeIn, plane: PlaneDep) -> dict[str, Any]:
    """Switch the controller off, to advisory, or on. It starts again from what runs."""
    plane.controller.set_mode(body.mode)
    return plane.controller.status(5)
