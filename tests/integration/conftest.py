"""The control plane over a real fleet and a real store, served in-process (Starlette's TestClient
drives the real FastAPI app: routing, validation, auth, handlers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from controlplane import startup
from controlplane.app import create_app
from controlplane.plane import ControlPlane
from controlplane.settings import Settings
from domain.spec import resolve_spec
from runtime.fleet import Fleet

TOKEN = "test-token-0123456789"


@dataclass
class Api:
    plane: ControlPlane
    client: TestClient
    """Sends the bearer token."""
    anonymous: TestClient
    """Sends none."""

    @property
    def fleet(self) -> Fleet:
        return self.plane.fleet


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The default fleet under a started control plane (collector, reconciler), on SQLite."""
    tmp = tmp_path_factory.mktemp("control-plane")
    settings = Settings(data_dir=tmp, api_token=TOKEN, scrape_interval_s=0.5, reconcile_poll_s=0.5)  # type: ignore[arg-type]
    with startup.running(settings, resolve_spec(None), resume=False) as system:
        app = create_app(system.plane, TOKEN)
        with (
            TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
            TestClient(app) as anon,
        ):
            yield Api(system.plane, client, anon)
