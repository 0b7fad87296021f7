"""Start-up, through the one start-up module `slatune up` uses: what a person decided through the API
survives a restart, on both stores; a spec that changes its own SLA wins over an older decision."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from controlplane import startup
from controlplane.app import create_app
from controlplane.settings import Settings
from domain.spec import FleetSpec, load_spec
from tests.integration.test_lifecycle import small_spec

pytestmark = pytest.mark.integration

TOKEN = "startup-test-token-0123456789"
SLA = "/api/v1/models/safety-guard/sla"


def sla_after_start(settings: Settings, spec: FleetSpec, put: dict[str, object] | None = None) -> object:
    """Start slatune, optionally PUT the guard's SLA, and return the SLA it reports after."""
    with (
        startup.running(settings, spec) as system,
        TestClient(create_app(system.plane, TOKEN), headers={"Authorization": f"Bearer {TOKEN}"}) as api,
    ):
        if put is not None:
            assert api.put(SLA, json=put).status_code == 200
        assert api.get(SLA).json() == system.plane.slas()["safety-guard"].model_dump()  # type: ignore[union-attr]
        return api.get(SLA).json()


def test_a_persons_sla_survives_a_restart_until_the_spec_changes_it(tmp_path: Path, store_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=store_url, api_token=TOKEN)  # type: ignore[arg-type]
    spec_path = small_spec(tmp_path)
    spec = load_spec(spec_path)
    assert spec.model("safety-guard").sla is not None
    assert spec.model("safety-guard").sla.target_ms == 20  # type: ignore[union-attr]

    # A person loosens the guard's SLA through the API; it holds across a restart of slatune.
    person = {"metric": "latency_p99", "target_ms": 35.0}
    kept = {**person, "window_s": 60.0, "objective": 0.99}  # a window and objective left out: the defaults
    assert sla_after_start(settings, spec, put=person) == kept
    assert sla_after_start(settings, spec) == kept

    # The operator then edits the spec's SLA: that newer decision wins at the next start.
    data = yaml.safe_load(spec_path.read_text())
    data["models"][0]["sla"]["target_ms"] = 15
    spec_path.write_text(yaml.safe_dump(data))
    assert sla_after_start(settings, load_spec(spec_path)) == {
        "metric": "latency_p99",
        "target_ms": 15.0,
        "window_s": 60.0,
        "objective": 0.99,
    }
