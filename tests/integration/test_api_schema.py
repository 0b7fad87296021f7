"""The REST API against its own OpenAPI schema: schemathesis property tests of every operation,
in-process over ASGI, on the real control plane over a real fleet (the `api` fixture), with the
bearer token for the operations that declare it.

Each operation gets its coverage cases (boundary values, missing and wrongly typed fields, no token,
methods it does not take), then generated cases, valid and invalid, derandomized (a fixed seed per
operation). Every response must be no server error (5xx); a status code, content type and body the
schema documents; an `Allow` header naming the path's methods on a 405; a 4xx for a request the
schema forbids; a 401 for a secured operation called without the token or with a wrong one.

The schema cannot name the fleet's models nor the ids that exist, so generated path parameters and
bodies often get real ones: handlers run past their 404s to the guardrails, the store and Triton.
Operations that change the fleet get fewer generated cases: a proposal with `wait` applies to the
real Triton (seconds), a tuning run starts on a thread (the fixture's `plane.stop()` ends it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, HookContext

from controlplane.api.schemas import MAX_ID
from controlplane.app import create_app
from controlplane.plane import ControlPlane
from domain.spec import resolve_spec
from tests.integration.conftest import TOKEN, Api

pytestmark = pytest.mark.integration

MODELS = resolve_spec(None).model_names  # the `api` fixture's fleet
OPENAPI: dict[str, Any] = create_app(cast(ControlPlane, None), TOKEN).openapi()
"""What the app serves at /openapi.json (a plain test below checks the live app serves the same):
loaded here because schemathesis makes the tests at collection, before the fixture starts the app."""

MUTATING = ("post", "put", "patch", "delete")
EXAMPLES = 60
"""Generated cases per operation (on top of its coverage cases), but for these, which change the
fleet (a proposal that waits is applied to the real Triton; a tuning run starts) and are not
shrunk on a failure, which would replay them many times."""
FEWER = {
    "/api/v1/models/{model}/config": 40,
    "/api/v1/models/{model}/config/rollback": 40,
    "/api/v1/tuning": 25,
}


class LiveApp:
    """An ASGI app that hands each request to the app the `api` fixture started."""

    app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return  # the fixture runs the app's lifespan
        assert self.app is not None, "the `api` fixture has not started the app"
        await self.app(scope, receive, send)


LIVE = LiveApp()

schema = schemathesis.openapi.from_dict(
    OPENAPI,
    config=schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
            "checks": {
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
                "response_headers_conformance": {"enabled": True},
                "negative_data_rejection": {"enabled": True},
                # A well-formed request may still name a model the fleet lacks, a version of
                # another model, or knobs the guardrails refuse: 404, 409 or 422, never 400 or 5xx.
                "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]},
                "missing_required_header": {"enabled": True},
                "ignored_auth": {"enabled": True},
                "unsupported_method": {"enabled": True},
                "allow_header_conformance": {"enabled": True},
            },
            "operations": [
                {
                    "include-method": "POST",
                    "include-path": path,
                    "generation": {"max-examples": n, "no-shrink": True},
                }
                for path, n in FEWER.items()
            ],
        }
    ),
)
schema.app = LIVE


KNOWN_IDS = st.integers(1, len(MODELS))
"""Ids that exist: the configuration versions recorded at start-up (one a model), the first run."""


def _id(value: object) -> bool:
    """A valid id, which may be swapped for one that exists (an invalid one stays, to be refused)."""
    return type(value) is int and 1 <= value <= MAX_ID


def _names(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


@schema.hook("flatmap_path_parameters")
def real_names_and_ids(_: HookContext, path_parameters: dict[str, Any] | None) -> Any:
    params = dict(path_parameters or {})
    choices: dict[str, st.SearchStrategy[Any]] = {}
    if isinstance(params.get("model"), str):
        choices["model"] = st.sampled_from([params["model"], *MODELS])
    for name in ("version_id", "run_id"):
        if _id(params.get(name)):
            choices[name] = st.one_of(st.just(params[name]), KNOWN_IDS)
    return st.fixed_dictionaries(choices).map(lambda drawn: {**params, **drawn})


@schema.hook("flatmap_body")
def real_body_names_and_ids(context: HookContext, body: Any) -> Any:
    if not isinstance(body, dict) or context.operation is None:
        return st.just(body)
    if context.operation.path.endswith("/rollback") and _id(body.get("version")):
        return st.one_of(st.just(body), KNOWN_IDS.map(lambda v: {**body, "version": v}))
    if context.operation.path == "/api/v1/tuning" and _names(body.get("models")):
        fleet = st.lists(st.sampled_from(MODELS), min_size=1, max_size=len(MODELS), unique=True)
        return st.one_of(st.just(body), fleet.map(lambda ms: {**body, "models": ms}))
    return st.just(body)


@pytest.fixture(scope="module", autouse=True)
def live_app(api: Api) -> Iterator[None]:
    LIVE.app = api.client.app
    yield
    LIVE.app = None


@schema.parametrize()
def test_api_conforms_to_its_schema(case: Case) -> None:
    response = case.call_and_validate()
    assert response.status_code < 500, response.text


def test_schema_is_served_and_secures_every_mutation(api: Api) -> None:
    assert api.anonymous.get("/openapi.json").json() == OPENAPI
    scheme = OPENAPI["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    mutations = []
    for path, operations in OPENAPI["paths"].items():
        for method, op in operations.items():
            if method in MUTATING:
                mutations.append(f"{method.upper()} {path}")
                assert op.get("security") == [{"HTTPBearer": []}], f"{method.upper()} {path}"
                assert "401" in op["responses"], f"{method.upper()} {path} does not document 401"
            else:
                assert "security" not in op, f"{method.upper()} {path}: reads need no token"
    assert {"POST /api/v1/models/{model}/config", "POST /api/v1/tuning", "POST /api/v1/alerts"} <= set(
        mutations
    )
