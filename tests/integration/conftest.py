"""The control plane over a real fleet and a real store, served in-process (Starlette's TestClient
drives the real FastAPI app: routing, validation, auth, handlers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.app import create_app
from controlplane.plane import ControlPlane
from controlplane.settings import Settings
from domain.spec import resolve_spec
from runtime.fleet import Fleet
from store.db import Store

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
    store = Store(settings.database_url)
    store.upgrade()
    with Fleet(resolve_spec(None), Path(tmp) / "fleet") as fleet:
        plane = ControlPlane(settings, store, fleet)
        plane.start()
        app = create_app(plane, TOKEN)
        try:
            with (
                TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
                TestClient(app) as anon,
            ):
                yield Api(plane, client, anon)
        finally:
            plane.stop()
    store.dispose()
