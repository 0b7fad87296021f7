"""Co-location rules: pairs of models that cannot share a device, learned live by the SLO controller
(or told by a person). `slatune plan` keeps such pairs on different devices."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api.deps import ApiError, Authorized, IdPath, SessionDep
from controlplane.api.schemas import ErrorOut
from domain.spec import NAME_PATTERN
from store import packing
from store.models import ColocationRule

router = APIRouter(prefix="/colocation-rules", tags=["packing"])
ERRORS: dict[int | str, dict[str, object]] = {422: {"model": ErrorOut}}


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_a: str = Field(pattern=NAME_PATTERN, max_length=128)
    model_b: str = Field(pattern=NAME_PATTERN, max_length=128)
    summary: str = Field(min_length=1, max_length=2000)
    """Why they cannot share: what was measured, where."""


class RuleOut(BaseModel):
    id: int
    model_a: str
    model_b: str
    source: str
    """controller (measured live), tuner, person."""
    summary: str
    evidence: dict[str, Any]
    created_at: float
    updated_at: float


def _out(row: ColocationRule) -> RuleOut:
    return RuleOut(
        id=row.id, model_a=row.model_a, model_b=row.model_b, source=row.source, summary=row.summary,
        evidence=row.evidence, created_at=row.created_at, updated_at=row.updated_at,
    )  # fmt: skip


@router.get("", response_model=list[RuleOut])
def rules(session: SessionDep) -> list[RuleOut]:
    """Every pair kept apart, with its evidence."""
    return [_out(r) for r in packing.rules(session)]


@router.post(
    "",
    response_model=RuleOut,
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, 400: {"model": ErrorOut}, 401: {"model": ErrorOut}},
    dependencies=[Authorized],
)
def add_rule(body: RuleIn, session: SessionDep) -> RuleOut:
    """Keep two models apart from now on (a person's rule; it replaces a learned one for the pair)."""
    if body.model_a == body.model_b:
        raise ApiError(422, "a model cannot be kept apart from itself", "model_b")
    row = packing.record_cannot_share(
        session, body.model_a, body.model_b, source="person", summary=body.summary, evidence={},
        now=time.time(),
    )  # fmt: skip
    return _out(row)


@router.delete(
    "/{rule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**ERRORS, 401: {"model": ErrorOut}, 404: {"model": ErrorOut}},
    dependencies=[Authorized],
)
def forget_rule(rule_id: IdPath, session: SessionDep) -> None:
    """Let the pair share a device again."""
    if not packing.forget(session, rule_id):
        raise ApiError(404, f"no co-location rule {rule_id}", "rule_id")
