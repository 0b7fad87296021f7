"""What routes share: the control plane, a store session, the bearer-token check, and the one
error type routes raise (rendered as JSON naming the field that was wrong)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session

from controlplane.api.schemas import MAX_ID
from controlplane.plane import ControlPlane


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


# Dependencies that do no I/O are `async`: FastAPI runs a plain `def` dependency on a worker thread,
# a hand-off (and, on a busy machine, a wait for the scheduler) per request.
async def get_plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


PlaneDep = Annotated[ControlPlane, Depends(get_plane)]


async def get_session(plane: PlaneDep) -> AsyncIterator[Session]:
    """The request's session: opening one does no I/O (the handler's thread queries); its commit
    at the end is short."""
    with plane.store.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
"""A row id in the path (a configuration version, a tuning run)."""

_bearer = HTTPBearer(
    auto_error=False, description="The token of SLATUNE_API_TOKEN (or <data_dir>/api-token)."
)


def bearer_ok(authorization: str | None, expected: str) -> bool:
    """Whether an Authorization header carries the bearer token, compared in constant time: the
    one check of the dependency below and of the app's guard, which runs before the body is read."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not credentials:
        return False
    return secrets.compare_digest(credentials.encode(), expected.encode())


def unauthorized() -> ApiError:
    return ApiError(
        401, "a valid bearer token is required (Authorization: Bearer <token>)", "header.Authorization"
    )


async def require_token(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The route's check, which also declares the security scheme in the OpenAPI schema (the
    app's guard has already refused a mutating request without the token, before its body)."""
    if not bearer_ok(request.headers.get("authorization"), request.app.state.token):
        raise unauthorized()


Authorized = Depends(require_token)


def known_model(plane: ControlPlane, model: str) -> str:
    if model not in plane.fleet.spec.model_names:
        raise ApiError(
            404,
            f"unknown model {model!r} (fleet has: {', '.join(plane.fleet.spec.model_names)})",
            "path.model",
        )
    return model
