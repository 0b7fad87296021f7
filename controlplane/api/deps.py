"""What routes share: the control plane, a store session, the bearer-token check, and the one
error type routes raise (rendered as JSON naming the field that was wrong)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from controlplane.api.schemas import MAX_ID
from controlplane.plane import ControlPlane


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def get_plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


PlaneDep = Annotated[ControlPlane, Depends(get_plane)]


def get_session(plane: PlaneDep) -> Iterator[Session]:
    with plane.store.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
"""A row id in the path (a configuration version, a tuning run)."""

_bearer = HTTPBearer(
    auto_error=False, description="The token of SLATUNE_API_TOKEN (or <data_dir>/api-token)."
)


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected: str = request.app.state.token
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise ApiError(
            401, "a valid bearer token is required (Authorization: Bearer <token>)", "header.Authorization"
        )


Authorized = Depends(require_token)


def known_model(plane: ControlPlane, model: str) -> str:
    if model not in plane.fleet.spec.model_names:
        raise ApiError(
            404,
            f"unknown model {model!r} (fleet has: {', '.join(plane.fleet.spec.model_names)})",
            "path.model",
        )
    return model
